"""Analysis a researcher can trust: bootstrap intervals equal scipy's, the paired permutation
test equals brute force, recall is given both ways, stratified samples, column definitions, and
the CLI's hints name the store (issue 14)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sp

from semoe import stats
from semoe.cli import _store_option, main
from semoe.config import ConfigError, DatasetConfig
from semoe.data.loading import sample_by_type
from semoe.data.schema import Example, Passage
from semoe.evaluation.scoring import to_rows
from semoe.generation.base import MethodOutput, RetrievalStep
from semoe.retrieval.base import Hit
from semoe.storage.columns import COLUMNS, markdown_table
from semoe.storage.results import ResultStore, StoreError

REPO = Path(__file__).resolve().parents[1]


def _scipy_interval(values) -> tuple[float, float]:
    """The interval computed here with scipy's own call (what semoe.stats must equal)."""
    ci = sp.bootstrap(
        (np.asarray(values, dtype=float),),
        np.mean,
        n_resamples=9999,
        confidence_level=0.95,
        method="percentile",
        random_state=np.random.default_rng(0),
    ).confidence_interval
    return float(ci.low), float(ci.high)


def test_bootstrap_interval_equals_a_direct_scipy_call():
    scores = np.random.default_rng(7).integers(0, 2, 40).astype(float).tolist()
    got = stats.bootstrap_interval(scores)
    assert (got.lo, got.hi) == _scipy_interval(scores)
    assert got.lo < float(np.mean(scores)) < got.hi
    # None values (no gold passage) are left out, not counted as 0.
    assert stats.bootstrap_interval(scores + [None, None]) == got


def test_degenerate_samples_give_no_interval_or_the_point_value():
    assert stats.bootstrap_interval([]) == stats.Interval(None, None, "0 value(s): an interval needs at least 2")
    one = stats.bootstrap_interval([1.0, None])
    assert (one.lo, one.hi) == (None, None) and "at least 2" in one.reason
    same = stats.bootstrap_interval([0.5] * 5)
    assert (same.lo, same.hi) == pytest.approx((0.5, 0.5))
    d = stats.paired_difference([1.0], [0.0])
    assert (d.n, d.mean_diff, d.lo, d.p_value) == (1, 1.0, None, None) and "at least 2" in d.reason
    with pytest.raises(ValueError, match="same questions: 2 and 3"):
        stats.paired_difference([1.0, 0.0], [1.0, 0.0, 1.0])


def _exact_sign_flip_p(a, b) -> float:
    """Two-sided p of the mean difference by enumerating all 2^n sign flips of the differences."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    observed = abs(d.mean())
    flips = [abs((np.array(signs) * d).mean()) for signs in itertools.product((1.0, -1.0), repeat=len(d))]
    return sum(f >= observed - 1e-12 for f in flips) / len(flips)


@pytest.mark.parametrize(
    "a, b",
    [
        ([1, 1, 0, 1, 1, 0, 1, 1], [0, 1, 0, 0, 1, 0, 0, 1]),  # EM of two methods on 8 questions
        ([0.5, 1, 0.2, 0.9, 0.4, 0.0, 0.7, 1], [0.1, 0.8, 0.3, 0.2, 0.4, 0.1, 0.6, 0.5]),  # F1
        ([1, 0, 1, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 0, 1, 0]),  # identical
    ],
)
def test_paired_permutation_p_value_equals_brute_force_for_8_questions(a, b):
    d = stats.paired_difference(a, b)
    assert d.n == 8 and d.mean_diff == pytest.approx(np.mean(np.subtract(a, b)))
    assert d.p_value == pytest.approx(_exact_sign_flip_p(a, b), abs=1e-12)
    assert (d.lo, d.hi) == _scipy_interval(np.subtract(a, b))  # the paired bootstrap: questions resampled


def test_paired_permutation_p_value_beyond_exact_is_a_seeded_monte_carlo_estimate():
    rng = np.random.default_rng(3)
    a, b = rng.random(16), rng.random(16) * 0.8  # 2^16 flips > 9,999 resamples: random flips
    exact = _exact_sign_flip_p(a, b)
    d = stats.paired_difference(a, b)
    assert d == stats.paired_difference(a, b)  # same seed, same p
    assert abs(d.p_value - exact) < 4 * np.sqrt(exact * (1 - exact) / 9999) + 1e-4


def _store_with(tmp_path, examples, outputs) -> ResultStore:
    store = ResultStore(tmp_path / "r.duckdb")
    store.start_run("run", "t", "h", "v", "{}")
    store.write_predictions(to_rows("run", "d", "dragin", examples, outputs, experts=None))
    store.compute_metrics("run")
    return store


def test_recall_retrieved_and_recall_all_on_four_questions_two_retrieving(tmp_path):
    """The issue's case: a triggered method retrieves for 2 of 4 questions. recall_retrieved
    averages those 2 (the old `recall`), recall_all counts the other 2 as 0; a fifth question
    without gold passages is in neither."""
    passages = [Passage(f"p{i}", f"T{i}", "text") for i in range(6)]
    examples = [
        Example(f"q{i}", f"Question {i}?", ["a"], "d", gold_passage_ids=golds)
        for i, golds in enumerate([["p0"], ["p1", "p2"], ["p3"], ["p4"], []])
    ]
    hits = {0: ["p0"], 1: ["p1", "p5"], 4: ["p0"]}  # q0: 1 of 1 gold, q1: 1 of 2; q2, q3 never retrieve
    outputs = [
        MethodOutput(
            prediction="a",
            raw_output="The answer is a.",
            retrievals=[RetrievalStep(0, "q", [Hit(passages[int(p[1])], 1.0, r + 1) for r, p in enumerate(hits[i])])]
            if i in hits
            else [],
        )
        for i in range(5)
    ]
    store = _store_with(tmp_path, examples, outputs)
    (row,) = store.leaderboard("run")
    assert (row["recall_retrieved"], row["recall_all"]) == (0.75, 0.375)  # (1 + 0.5) / 2 and / 4
    per_question = store.query("SELECT example_id, recall, recall_all FROM predictions ORDER BY example_id")
    assert [(r["recall"], r["recall_all"]) for r in per_question] == [
        (1.0, 1.0),
        (0.5, 0.5),
        (None, 0.0),
        (None, 0.0),
        (None, None),
    ]
    (m,) = store.query("SELECT * FROM metrics")
    assert (m["recall_all_lo"], m["recall_all_hi"]) == _scipy_interval([1.0, 0.5, 0.0, 0.0])
    assert (m["recall_retrieved_lo"], m["recall_retrieved_hi"]) == _scipy_interval([1.0, 0.5])


def test_migration_8_renames_recall_and_keeps_its_value(tmp_path, monkeypatch):
    import semoe.storage.results as results
    from semoe.storage.schema import MIGRATIONS

    path = tmp_path / "old.duckdb"
    monkeypatch.setattr(results, "MIGRATIONS", [m for m in MIGRATIONS if m[0] < 8])
    old = ResultStore(path)
    old.start_run("r", "t", "h", "v", "{}")
    with old.connect() as con:
        con.execute(
            "INSERT INTO metrics (run_id, dataset, method, n, em, f1, recall) VALUES ('r', 'd', 'm', 4, 1, 1, 0.7)"
        )
    monkeypatch.undo()
    (row,) = ResultStore(path).leaderboard("r")
    assert (row["recall_retrieved"], row["recall_all"], row["em_lo"]) == (0.7, None, None)  # not recomputed
    assert "recall" not in row


def test_sample_per_type_is_deterministic_counts_each_type_and_refuses_too_few():
    examples = [
        Example(f"q{i}", f"Q{i}?", ["a"], "d", type=("bridge", "comparison", "inference")[i % 3]) for i in range(30)
    ]
    picked = sample_by_type(examples, {"bridge": 4, "comparison": 2}, "d")
    assert [ex.type for ex in picked].count("bridge") == 4 and [ex.type for ex in picked].count("comparison") == 2
    assert [ex.id for ex in picked] == ["q0", "q1", "q3", "q4", "q6", "q9"]  # the first of each, in file order
    with pytest.raises(
        ConfigError, match=r"'d': sample_per_type .* 'bridge': 11 asked, 10 present; 'yes-no': 1 asked, 0"
    ):
        sample_by_type(examples, {"bridge": 11, "yes-no": 1}, "d")
    with pytest.raises(ValueError, match="`sample` or `sample_per_type`, not both"):  # ConfigError when loaded
        DatasetConfig.model_validate({"name": "custom", "sample": 5, "sample_per_type": {"bridge": 2}})
    # A dataset sampled as before keeps its identity (and so its runs' ids).
    assert "sample_per_type" not in DatasetConfig(name="custom").identity()
    assert DatasetConfig(name="custom", sample_per_type={"bridge": 2}).identity()["sample_per_type"] == {"bridge": 2}


def test_sample_per_type_of_a_shuffled_file(tmp_path):
    from semoe.data import DataContext
    from semoe.data.loading import load_examples

    path = tmp_path / "qa.json"
    rows = [
        {"id": f"q{i}", "question": f"Q{i}?", "answer": "a", "type": ("bridge", "comparison")[i % 2]} for i in range(40)
    ]
    path.write_text(json.dumps(rows))
    cfg = DatasetConfig(
        name="custom", path=str(path), shuffle=True, seed=5, sample_per_type={"bridge": 3, "comparison": 2}
    )
    ctx = DataContext(synthetic=None)
    first = [ex.id for ex in load_examples(cfg, ctx)]
    assert first == [ex.id for ex in load_examples(cfg, ctx)]  # the seed decides
    assert len(first) == 5 and sum(int(q[1:]) % 2 == 0 for q in first) == 3
    other = cfg.model_copy(update={"seed": 6})
    assert [ex.id for ex in load_examples(other, ctx)] != first


def test_columns_are_defined_once_in_the_cli_and_the_readme(capsys):
    assert main(["columns"]) == 0
    out = capsys.readouterr().out
    for column in COLUMNS:
        assert column.name in out
    assert "recall@k of the gold passages" in out and "not wall time" in out
    assert markdown_table() in (REPO / "README.md").read_text()
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "`semoe columns`" in capsys.readouterr().out


def test_store_hints_and_the_missing_store_error_name_store(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _store_option("results/semoe.duckdb") == ""
    assert _store_option(tmp_path / "results" / "semoe.duckdb") == ""  # the same file
    assert _store_option("/data/my runs/x.duckdb") == " --store '/data/my runs/x.duckdb'"
    with pytest.raises(StoreError, match=r"no results store at .*: name the file with `--store PATH`"):
        ResultStore(tmp_path / "nope.duckdb", read_only=True)
    assert main(["compare", "abc"]) == 2
    assert "--store PATH" in capsys.readouterr().err


def test_semoe_run_prints_its_report_and_compare_shows_intervals_types_and_pairs(tmp_path, capsys, prefect_api):
    """`semoe run` on the dummy model with a custom store: stratified synthetic questions, the
    report written and named, every hint with --store; `semoe compare` prints the three tables."""
    store = tmp_path / "my store" / "r.duckdb"
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "analysis",
                "synthetic": {"seed": 2, "n_entities": 12, "n_questions": 30},
                "datasets": [{"name": "synthetic", "sample_per_type": {"bridge": 3, "comparison": 2}}],
                "model": {"spec": "dummy"},
                "methods": ["no-retrieval", "single-retrieval"],
                "store": {"path": str(store)},
                "cache": {"root": str(tmp_path / "cache")},
            }
        )
    )
    assert main(["run", str(config)]) == 0
    out = capsys.readouterr().out
    (run_id,) = [line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("run ")]
    report_line = next(line for line in out.splitlines() if line.startswith("report: "))
    md = Path(report_line.removeprefix("report: ").split(" and ")[0])
    assert md.name == "report.md" and md.is_file() and "## Paired comparisons" in md.read_text()
    hints = [line for line in out.splitlines() if line.strip().startswith("semoe ")]
    assert len(hints) == 2 and all(f"--store '{store}'" in h for h in hints)
    # report.write is operational: the same run, nothing answered again, the report left as it was
    md.unlink()
    assert main(["run", str(config), "--set", "report.write=false"]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id}: 0 new answers" in out and not md.exists()
    assert f"report: not written (report.write: false); semoe report {run_id} --store '{store}' writes it" in out

    assert main(["compare", run_id[:8], "--store", str(store), "--format", "json"]) == 0
    tables = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["n"]) for r in tables["leaderboard"]] == [("no-retrieval", 5), ("single-retrieval", 5)]
    assert all(r["f1_lo"] is None or r["f1_lo"] <= r["f1"] <= r["f1_hi"] for r in tables["leaderboard"])
    assert sorted((r["question_type"], r["method"], r["n"]) for r in tables["by_type"]) == [
        ("bridge", "no-retrieval", 3),
        ("bridge", "single-retrieval", 3),
        ("comparison", "no-retrieval", 2),
        ("comparison", "single-retrieval", 2),
    ]
    (pair,) = tables["paired"]
    assert (pair["method_a"], pair["method_b"], pair["n"]) == ("no-retrieval", "single-retrieval", 5)
    assert main(["compare", run_id, "--store", str(store)]) == 0
    assert "paired permutation test p-value" in capsys.readouterr().out
