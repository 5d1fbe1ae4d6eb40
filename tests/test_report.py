"""Reports, views, Parquet export and the polars loader, on a store filled with the rows the
evaluate flow writes (``evaluation.scoring.to_rows`` of method outputs, ``ExpertRecord`` rows) and
routing rows shaped like migration v3's ``routing_runs``."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import duckdb
import numpy as np
import pytest
import scipy.stats

from semoe.cli import main
from semoe.config import SemoeConfig
from semoe.data.schema import Example, Passage
from semoe.evaluation.scoring import expert_use, to_rows
from semoe.generation.base import MethodOutput, RetrievalStep
from semoe.reporting import (
    BH_SOFTMAX_NOTE,
    QA_NOT_CONFIGURED,
    UnknownRunError,
    build_report,
    routing_table,
    to_markdown,
    write_run_report,
)
from semoe.retrieval.base import Hit
from semoe.storage.results import ResultStore, StoreError, migrate
from semoe.storage.schema import MIGRATIONS
from semoe.storage.views import LATEST_VERSION, UnknownRelationError, export_parquet, load_view, relations

RUN_ID = "0123456789abcdef"
ROUTING_RUN_ID = "fedcba9876543210"
V4_VIEWS = ("leaderboard_latest", "accuracy_by_retrievals", "cost_by_method", "routing_by_layer")
PASSAGES = [Passage(f"p{i}", f"Title {i}", f"Passage {i} text.") for i in range(1, 5)]
EXPERT_BYTES = {"p1": 1000, "p2": 2000, "p3": 3000, "p4": 4000}
TYPES = ("bridge", "comparison", "inference")  # question i has type TYPES[i % 3]


def _examples(dataset: str) -> list[Example]:
    return [
        Example(
            f"{dataset}-q{i}",
            f"Question {i}?",
            [f"answer {i}"],
            dataset,
            type=TYPES[i % 3],
            gold_passage_ids=[f"p{i % 4 + 1}"],
        )
        for i in range(6)
    ]


def _output(method: str, i: int) -> MethodOutput:
    """What each method returns for question i: right on even questions (half right for
    dragin), retrievals by method (dragin adaptive: i % 3 steps), experts only for prag."""
    steps = {"no-retrieval": 0, "single-retrieval": 1, "prag": 1, "dragin": i % 3}[method]
    pool = 3 if method == "prag" else 4  # prag never retrieves p4: its expert is no cost of prag
    retrievals = [
        RetrievalStep(s, f"query {s}", [Hit(PASSAGES[(i + s + r) % pool], 10.0 - r, r + 1) for r in range(2)])
        for s in range(steps)
    ]
    correct = i % 2 == 0 if method != "dragin" else i % 4 == 0
    latency = {"retrieve": 0.01 * steps, "generate": 0.1 + 0.01 * i}
    if method == "prag":
        latency["experts"] = 0.05
    return MethodOutput(
        prediction=f"answer {i}" if correct else "answer",
        raw_output="...",
        retrievals=retrievals,
        generation_count=1 + steps,
        prompt_tokens=50 + 10 * steps,
        generated_tokens=5 + i,
        latency=latency,
    )


def _expert_row(cfg: SemoeConfig, passage_id: str, rank: int, nbytes: int) -> dict:
    from semoe.experts.cache import ExpertRecord

    return ExpertRecord(
        expert_key=f"{passage_id}-r{rank}",
        passage_id=passage_id,
        path=f"/cache/experts/{passage_id}-r{rank}",
        base_model=cfg.model.spec,
        rank=rank,
        alpha=cfg.experts.alpha,
        lr=cfg.experts.lr,
        epochs=cfg.experts.epochs,
        targets=list(cfg.experts.targets),
        loss_before=2.0,
        loss_after=1.0,
        seconds=0.5,
        bytes=nbytes,
        sha256="x",
    ).to_row()


def _routing_row(policy: str, setting: str, k: int | None, experts: float, ppl: float, qa_f1: float | None) -> dict:
    return {
        "run_id": ROUTING_RUN_ID,
        "model": "tiny-moe",
        "model_key": "m1",
        "policy_key": f"{policy}-{setting}",
        "policy": policy,
        "policy_label": f"{policy} {setting}",
        "setting": setting,
        "k": k,
        "policy_params": "{}",
        "mode": "patch",
        "texts": 4,
        "tokens": 400,
        "nll": 1.0,
        "perplexity": ppl,
        "eval_seconds": 1.0,
        "tokens_per_s": 400.0,
        "decode_tokens_per_s": 50.0,
        "peak_memory_bytes": 2**20,
        "memory_method": "vmhwm",
        "kv_cache_bytes": 1024,
        "experts_per_token": experts,
        "experts_std": 0.1,
        "floor_rate": 0.0,
        "ceiling_rate": 0.0,
        "qa_dataset": "synthetic",
        "qa_n": 6,
        "qa_em": qa_f1,
        "qa_f1": qa_f1,
        "qa_note": None,
        "heatmap_path": None,
        "created_at": None,
    }


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("report") / "results.duckdb")
    methods = ["no-retrieval", "single-retrieval", "prag", "dragin"]
    cfg = SemoeConfig.model_validate({"name": "report-test", "methods": methods, "store": {"path": path}})
    store = ResultStore(path)
    store.start_run(RUN_ID, cfg.name, cfg.config_hash(), "test", json.dumps(cfg.model_dump(mode="json")))
    for dataset in ("synthetic", "popqa"):
        examples = _examples(dataset)
        for method in methods:
            outputs = [_output(method, i) for i in range(6)]
            store.write_predictions(
                to_rows(RUN_ID, dataset, method, examples, outputs, experts=expert_use(cfg, method))
            )
    experts = [_expert_row(cfg, p, cfg.experts.rank, n) for p, n in EXPERT_BYTES.items()]
    experts.append(_expert_row(cfg, "p1", cfg.experts.rank + 6, 99_999))  # other hyperparameters: not this run's
    store.write_rows("experts", experts)
    store.compute_metrics(RUN_ID)
    store.finish_run(RUN_ID)
    store.start_run(ROUTING_RUN_ID, "routing-test", "c-routing", "test", json.dumps(cfg.model_dump(mode="json")))
    store.write_rows(
        "routing_runs",
        [
            _routing_row("topk", "k=1", 1, 1.0, 30.0, 0.2),
            _routing_row("topk", "k=2", 2, 2.0, 20.0, 0.3),
            _routing_row("bh", "alpha=0.05", None, 1.4, 22.0, 0.25),
        ],
    )
    store.write_rows(
        "routing_layer_stats",
        [
            {
                "run_id": ROUTING_RUN_ID,
                "model": "tiny-moe",
                "policy_key": "topk-k=2",
                "mode": "patch",
                "layer": layer,
                "module": f"layers.{layer}.mlp",
                "decoder_layer": layer,
                "num_experts": 4,
                "tokens": 400,
                "experts_mean": 2.0,
                "experts_std": 0.0,
                "floor_rate": 0.0,
                "ceiling_rate": 0.0,
                "overlap": 0.5,
                "k_histogram": [0, 0, 400],
                "expert_counts": [200, 200, 200, 200],
            }
            for layer in range(2)
        ],
    )
    store.finish_run(ROUTING_RUN_ID)
    return path


def _md_tables(markdown: str) -> list[list[dict]]:
    """The markdown's pipe tables as lists of {header: cell}."""
    tables, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows, j = [], i + 2
            while j < len(lines) and lines[j].startswith("| "):
                rows.append(dict(zip(header, (c.strip() for c in lines[j].strip("|").split("|")))))
                j += 1
            tables.append(rows)
    return tables


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG that decodes (matplotlib's reader checks every chunk)."""
    import matplotlib.image

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(io.BytesIO(data), format="png")
    return img.shape[1], img.shape[0]


def test_report_files_plots_and_numbers_match_sql(store_path, tmp_path):
    written = write_run_report(store_path, RUN_ID, out_dir=tmp_path / "out")
    assert set(written.paths) == {"md", "html", "accuracy_vs_retrievals", "cost_per_method"}
    for name in ("accuracy_vs_retrievals", "cost_per_method"):
        width, height = _png_size(written.paths[name].read_bytes())
        assert width > 200 and height > 150
    assert not list((tmp_path / "out").glob(".*tmp"))
    md = written.paths["md"].read_text()
    assert "![Accuracy vs retrievals per question](accuracy_vs_retrievals.png)" in md
    assert "Accuracy vs experts per token" not in md  # not a routing run: no empty routing section

    board, by_retrievals, by_type, paired, cost, columns = _md_tables(md)
    con = duckdb.connect(store_path, read_only=True)
    expected = con.execute(
        "SELECT dataset, method, count(*), round(avg(em), 4), round(avg(f1), 4), round(avg(retrieval_count), 3),"
        " round(avg(latency_s), 3), sum(prompt_tokens) + sum(generated_tokens) FROM predictions GROUP BY ALL"
    ).fetchall()
    steps = con.execute(
        "SELECT dataset, method, retrieval_count, count(*), round(avg(f1), 4) FROM predictions GROUP BY ALL"
    ).fetchall()
    con.close()
    assert len(board) == len(cost) == len(expected) == 8
    assert len(by_type) == 8 * len(TYPES) and len(paired) == 2 * 6  # 4 methods: 6 pairs per dataset
    assert {r["column"] for r in columns} >= {"em_lo, em_hi", "recall_all", "seconds_per_question"}
    for dataset, method, n, em, f1, retrievals, seconds, tokens in expected:
        row = next(r for r in board if (r["dataset"], r["method"]) == (dataset, method))
        assert (row["n"], float(row["EM"]), float(row["F1"])) == (str(n), em, f1)
        assert (float(row["retrievals/q"]), float(row["s/q"])) == (retrievals, seconds)
        c = next(r for r in cost if (r["dataset"], r["method"]) == (dataset, method))
        assert (float(c["s/q"]), int(c["total tokens"])) == (seconds, tokens)
    for dataset, method, k, n, f1 in steps:
        row = next(
            r for r in by_retrievals if (r["dataset"], r["method"], int(r["retrievals"])) == (dataset, method, k)
        )
        assert (row["n"], float(row["F1"])) == (str(n), f1)
    # Adapter bytes: prag alone loads experts, those of the passages it retrieved, of this run's rank.
    prag_passages = {PASSAGES[(i + r) % 3].id for i in range(6) for r in range(2)}
    assert prag_passages == {"p1", "p2", "p3"}
    for c in cost:
        want = sum(EXPERT_BYTES[p] for p in prag_passages) if c["method"] == "prag" else 0
        assert int(c["expert bytes"]) == want, c

    html = written.paths["html"].read_text()
    assert html.count("<table>") == 6 and html.count('src="data:image/png;base64,') == 2
    assert "<th>F1</th>" in html and f"<td>{board[0]['F1']}</td>" in html


def _scipy_interval(values) -> tuple[float, float]:
    ci = scipy.stats.bootstrap(
        (np.asarray(values, dtype=float),),
        np.mean,
        n_resamples=9999,
        method="percentile",
        random_state=np.random.default_rng(0),
    ).confidence_interval
    return float(ci.low), float(ci.high)


def test_leaderboard_intervals_equal_scipy_on_the_runs_per_question_scores(store_path):
    store = ResultStore(store_path, read_only=True)
    metrics = store.query("SELECT * FROM metrics WHERE run_id = ? ORDER BY dataset, method", [RUN_ID])
    assert len(metrics) == 8
    for m in metrics:
        rows = store.query(
            "SELECT em, f1, recall, recall_all FROM predictions WHERE run_id = ? AND dataset = ? AND method = ?"
            " ORDER BY example_id",
            [RUN_ID, m["dataset"], m["method"]],
        )
        for column, metric in (
            ("em", "em"),
            ("f1", "f1"),
            ("recall", "recall_retrieved"),
            ("recall_all", "recall_all"),
        ):
            values = [r[column] for r in rows if r[column] is not None]
            want = _scipy_interval(values) if len(values) >= 2 else (None, None)
            assert (m[f"{metric}_lo"], m[f"{metric}_hi"]) == want, (m["method"], metric)
    # The view shows them rounded as it rounds the means.
    view = store.query("SELECT * FROM leaderboard WHERE run_id = ? ORDER BY dataset, method", [RUN_ID])
    assert [(v["em_lo"], v["f1_hi"]) for v in view] == [(round(m["em_lo"], 4), round(m["f1_hi"], 4)) for m in metrics]


def _hand_em(method: str, i: int) -> float:
    """EM of ``_output(method, i)``, from the rule that made it."""
    return float(i % 2 == 0 if method != "dragin" else i % 4 == 0)


def test_by_type_view_equals_a_hand_computation(store_path):
    rows = ResultStore(store_path, read_only=True).query(
        "SELECT * FROM leaderboard_by_type WHERE run_id = ? AND dataset = 'popqa'", [RUN_ID]
    )
    assert len(rows) == 4 * len(TYPES)
    for r in rows:
        questions = [i for i in range(6) if TYPES[i % 3] == r["question_type"]]
        em = [_hand_em(r["method"], i) for i in questions]
        assert (r["n"], r["em"]) == (2, round(sum(em) / 2, 4)), r
        assert (r["em_lo"], r["em_hi"]) == tuple(round(x, 4) for x in _scipy_interval(em))


def test_paired_comparison_of_two_methods_equals_brute_force(store_path):
    """no-retrieval (right on even questions) against dragin (right on i % 4 == 0): the mean EM
    difference 1/6 and its exact sign-flip p-value over all 2^6 flips."""
    from itertools import product

    from semoe.reporting import paired_comparisons

    pairs = paired_comparisons(ResultStore(store_path, read_only=True), RUN_ID)
    row = next(
        r for r in pairs if r["dataset"] == "popqa" and {r["method_a"], r["method_b"]} == {"dragin", "no-retrieval"}
    )
    sign = 1 if row["method_a"] == "no-retrieval" else -1
    d = [sign * (_hand_em("no-retrieval", i) - _hand_em("dragin", i)) for i in range(6)]
    flips = [abs(sum(s * x for s, x in zip(signs, d))) for signs in product((1, -1), repeat=6)]
    p = sum(f >= abs(sum(d)) - 1e-9 for f in flips) / len(flips)
    assert (row["n"], row["em_diff"], row["em_p"]) == (6, round(sum(d) / 6, 4), round(p, 4))
    assert (row["em_diff_lo"], row["em_diff_hi"]) == tuple(round(x, 4) for x in _scipy_interval(d))


def test_routing_run_report_plots_accuracy_vs_experts(store_path, tmp_path):
    written = write_run_report(store_path, ROUTING_RUN_ID[:6], out_dir=tmp_path, formats=["md"])
    assert written.report.run_id == ROUTING_RUN_ID
    assert set(written.paths) == {"md", "accuracy_vs_experts"}
    _png_size(written.paths["accuracy_vs_experts"].read_bytes())
    md = written.paths["md"].read_text()
    (routing,) = _md_tables(md)
    assert [(r["setting"], r["experts/token"], r["perplexity"], r["QA F1"]) for r in routing] == [
        ("alpha=0.05", "1.4", "22", "0.25"),
        ("k=1", "1", "30", "0.2"),
        ("k=2", "2", "20", "0.3"),
    ]
    assert "No predictions stored" not in md and "retrievals" not in md and "Cost per method" not in md
    assert "- **routed models**: tiny-moe" in md and "methods" not in md


def _bh_row(model: str, alpha: float, p_values: str, ppl: float, qa_f1: float | None, heatmap: str | None) -> dict:
    params = {"alpha": alpha, "p_values": p_values, "min_k": 1, "max_k": None, "temperature": 1.0, "null": None}
    setting = f"alpha={alpha} {p_values}"
    return _routing_row("bh", setting, None, 1.0, ppl, qa_f1) | {
        "run_id": "routing-notes",
        "model": model,
        "policy_key": f"bh-{p_values}-{alpha}",
        "policy_label": "bh",
        "policy_params": json.dumps(params),
        "qa_note": None if qa_f1 is not None else "byte-level base LM: EM/F1 would score prompt-following",
        "heatmap_path": heatmap,
    }


def test_routing_only_report_embeds_heatmaps_and_explains_blank_cells(tmp_path):
    """A routing-only run: no QA section, the cells' heatmaps embedded, a blank QA EM/F1 cites the
    row's qa_note, BH rows with softmax p-values identical across α cite why; calibrated ones and
    a single α do not."""
    from semoe.routing.heatmaps import write_heatmap_png

    path = str(tmp_path / "results.duckdb")
    store = ResultStore(path)
    store.start_run("routing-notes", "routing-notes", "c", "test", "{}")
    heat = tmp_path / "routing-heatmaps"
    heat.mkdir()

    def heatmap(name: str) -> str:
        return str(write_heatmap_png(heat / name, [[1, 2, 3, 4], [4, 3, 2, 1]], name))

    rows = [
        _bh_row(model, alpha, p_values, ppl, qa, heatmap(f"{model}__bh-alpha-{alpha}-{p_values}__patch.png"))
        for model, qa in (("olmoe-tiny", 0.4), ("moe-lm-gru", None))
        for alpha, p_values, ppl in ((0.05, "softmax", 25.0), (0.1, "softmax", 25.0), (0.05, "calibrated", 21.0))
    ]
    rows += [  # calibrated with another α that happens to score the same; a heatmap moved away
        _bh_row("olmoe-tiny", 0.2, "calibrated", 21.0, 0.4, str(heat / "gone.png")),
    ]
    store.write_rows("routing_runs", rows)
    store.finish_run("routing-notes")

    written = write_run_report(path, "routing-notes", out_dir=tmp_path / "out")
    report = written.report
    assert [s.title for s in report.sections] == ["Accuracy vs experts per token"]
    md = written.paths["md"].read_text()
    assert "retrievals" not in md and "Cost per method" not in md and "No predictions" not in md
    heatmaps = [p for p in report.plots if p.name.startswith("heatmap-")]
    assert len(heatmaps) == 6 and "heatmap-olmoe-tiny__bh-alpha-0.05-softmax__patch" in written.paths
    assert (
        written.paths["heatmap-olmoe-tiny__bh-alpha-0.05-softmax__patch"].read_bytes()
        == (heat / "olmoe-tiny__bh-alpha-0.05-softmax__patch.png").read_bytes()
    )
    assert "![Expert heatmap: moe-lm-gru · bh (alpha=0.1 softmax) · patch mode]" in md
    assert f"Heatmap files not found (moved or deleted): {heat / 'gone.png'}" in md
    html = written.paths["html"].read_text()
    assert html.count('src="data:image/png;base64,') == 1 + 6

    (table,) = _md_tables(md)
    notes = dict(re.findall(r"^\[(\d+)\] (.+?)\s*$", md, flags=re.M))
    by_cell = {(r["model"], r["setting"].split(" [")[0]): r for r in table}
    assert len(by_cell) == len(rows)
    for (model, setting), r in by_cell.items():
        if model == "moe-lm-gru":
            mark = re.fullmatch(r"n/a \[(\d+)\]", r["QA EM"]).group(1)
            assert r["QA F1"] == r["QA EM"] and notes[mark].startswith("byte-level base LM")
        else:
            assert r["QA EM"] == "0.4"
        cited = re.search(r"\[(\d+)\]$", r["setting"])
        assert bool(cited) == setting.endswith("softmax"), r
        if cited:
            assert notes[cited.group(1)] == BH_SOFTMAX_NOTE
    assert "α ≥ 1 − 1/m" in BH_SOFTMAX_NOTE


def test_routing_table_without_qa_leaves_the_qa_columns_out():
    rows = [_routing_row("topk", "k=1", 1, 1.0, 30.0, None) | {"qa_dataset": None, "qa_n": None}]
    table = routing_table(rows)
    assert "qa_em" not in table.columns and "qa_f1" not in table.columns and not table.notes
    assert table.caption.endswith(QA_NOT_CONFIGURED)
    with_qa = routing_table(rows + [_routing_row("topk", "k=2", 2, 2.0, 20.0, 0.3)])
    assert with_qa.notes == [QA_NOT_CONFIGURED] and with_qa.rows[0]["qa_em"] == "n/a [1]"


def test_artifact_markdown_inlines_plots_and_names_the_files(store_path, tmp_path):
    written = write_run_report(store_path, RUN_ID, out_dir=tmp_path)
    text = written.artifact_markdown()
    assert text.count("](data:image/png;base64,") == 2
    assert str(written.paths["html"]) in text
    assert _md_tables(text) == _md_tables(written.paths["md"].read_text())


def test_unknown_run_and_missing_store_fail_clearly(store_path, tmp_path, capsys):
    recent = rf"recent runs: {ROUTING_RUN_ID} \(routing-test\), {RUN_ID} \(report-test\)"
    with pytest.raises(UnknownRunError, match=rf"no run 'nope' .*{recent}"):
        write_run_report(store_path, "nope", out_dir=tmp_path)
    with pytest.raises(UnknownRunError, match="ambiguous"):
        build_report(ResultStore(store_path, read_only=True), "")
    assert main(["report", "nope", "--store", store_path]) == 2
    assert "semoe: error: no run 'nope'" in capsys.readouterr().err
    missing = tmp_path / "missing.duckdb"
    assert main(["report", RUN_ID, "--store", str(missing)]) == 2
    assert f"no results store at {missing}" in capsys.readouterr().err
    assert not missing.exists()


def test_cli_report_writes_the_chosen_formats(store_path, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["report", RUN_ID[:8], "--store", store_path, "--out", str(out), "--format", "html"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_vs_retrievals.png", "cost_per_method.png", "report.html"]
    assert str(out / "report.html") in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["report", RUN_ID, "--store", store_path, "--format", "pdf"])


def test_export_round_trips_every_table_and_view(store_path, tmp_path):
    import polars as pl

    out = tmp_path / "export"
    before = Path(store_path).stat().st_mtime_ns
    assert main(["export", "--store", store_path, "--out", str(out)]) == 0
    assert Path(store_path).stat().st_mtime_ns == before  # opened read-only
    store = ResultStore(store_path, read_only=True)
    names = relations(store)
    assert {"predictions", "experts", "routing_runs", "leaderboard", "routing_by_k", *V4_VIEWS} <= set(names)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.parquet" for n in names)
    for name in names:
        frame = pl.read_parquet(out / f"{name}.parquet")
        assert frame.height == store.query(f'SELECT count(*) AS n FROM "{name}"')[0]["n"], name
    predictions = pl.read_parquet(out / "predictions.parquet")
    assert predictions.schema["extra"] == pl.String and predictions.height == 48

    only = export_parquet(store_path, tmp_path / "some", ["cost_by_method", "runs"])
    assert sorted(only) == ["cost_by_method", "runs"]
    with pytest.raises(UnknownRelationError, match="no table or view 'nope'.*available: .*predictions"):
        export_parquet(store_path, tmp_path / "bad", ["nope"])


def test_load_view_returns_the_view_and_names_the_available_ones(store_path):
    cost = load_view(store_path, "cost_by_method")
    assert cost.height == 8 and {"expert_bytes", "seconds_per_question"} <= set(cost.columns)
    latest = load_view(store_path, "leaderboard_latest")
    assert set(latest["run_id"]) == {RUN_ID}
    layers = load_view(store_path, "routing_by_layer")
    assert layers.sort("layer").select("policy_label", "setting", "layer").rows() == [
        ("topk k=2", "k=2", 0),
        ("topk k=2", "k=2", 1),
    ]
    with pytest.raises(UnknownRelationError, match="no view 'predictions'.*available views: .*cost_by_method"):
        load_view(store_path, "predictions")


def test_views_work_on_an_empty_store(tmp_path):
    store = ResultStore(tmp_path / "empty.duckdb")
    views = [n for n, kind in relations(store).items() if kind == "view"]
    assert set(V4_VIEWS) <= set(views)
    for view in views:
        assert store.query(f'SELECT count(*) AS n FROM "{view}"')[0]["n"] == 0


def test_leaderboard_latest_keeps_the_newest_finished_run_per_config(tmp_path):
    store = ResultStore(tmp_path / "runs.duckdb")
    runs = [
        ("old", "c1", "2026-01-01", "finished"),
        ("new", "c1", "2026-02-01", "finished"),
        ("crashed", "c1", None, "failed"),
        ("other", "c2", "2026-01-15", "finished"),
    ]
    for run_id, config_hash, finished, status in runs:
        store.start_run(run_id, "n", config_hash, "code", "{}")
        store.write_rows("metrics", [{"run_id": run_id, "dataset": "d", "method": "m", "n": 1, "em": 1.0, "f1": 1.0}])
        with store.connect() as con:
            con.execute("UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ?", [status, finished, run_id])
    rows = store.query("SELECT config_hash, run_id FROM leaderboard_latest ORDER BY config_hash")
    assert rows == [{"config_hash": "c1", "run_id": "new"}, {"config_hash": "c2", "run_id": "other"}]


def test_migration_v4_applies_to_an_older_store(tmp_path, monkeypatch):
    path = tmp_path / "old.duckdb"
    import semoe.storage.results as results

    monkeypatch.setattr(results, "MIGRATIONS", [m for m in MIGRATIONS if m[0] < 4])
    ResultStore(path).write_rows("metrics", [{"run_id": "r", "dataset": "d", "method": "m", "n": 3}])
    monkeypatch.undo()
    # A reader migrates an older store (one short write) so the views exist, and keeps its rows.
    assert load_view(path, "accuracy_by_retrievals").height == 0
    with duckdb.connect(str(path)) as con:
        assert migrate(con) == LATEST_VERSION >= 4
        assert con.execute("SELECT count(*) FROM metrics").fetchone()[0] == 1
        views = {v for (v,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        assert views >= set(V4_VIEWS)


def test_report_of_a_file_that_is_not_a_store(tmp_path):
    bad = tmp_path / "bad.duckdb"
    bad.write_text("not a database")
    with pytest.raises(StoreError, match="cannot open results store"):
        write_run_report(bad, RUN_ID)
    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as con:
        con.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(StoreError, match="not a semoe results store"):
        load_view(other, "cost_by_method")


def test_markdown_escapes_cells(store_path):
    report = build_report(ResultStore(store_path, read_only=True), RUN_ID)
    report.sections[0].tables[0].rows[0]["method"] = "a|b"
    assert "a\\|b" in to_markdown(report)
    assert re.search(r"^- \*\*status\*\*: finished$", to_markdown(report), re.M)


@pytest.mark.slow
def test_evaluate_flow_attaches_the_report_as_its_summary_artifact(tmp_path, tiny_lm_dir, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from semoe.flows.pipeline import evaluate

    cfg = SemoeConfig.model_validate(
        {
            "name": "report-flow",
            "synthetic": {"seed": 1, "n_entities": 8, "n_questions": 3},
            "model": {"spec": tiny_lm_dir},
            "generation": {"max_new_tokens": 2, "few_shot": 0},
            "methods": ["no-retrieval"],
            "store": {"path": str(tmp_path / "results.duckdb")},
            "cache": {"root": str(tmp_path / "cache")},
        }
    )
    state = evaluate(cfg, return_state=True)
    run_id = state.result()["run_id"]
    report_dir = tmp_path / "reports" / run_id
    assert {p.name for p in report_dir.iterdir()} == {
        "report.md",
        "report.html",
        "accuracy_vs_retrievals.png",
        "cost_per_method.png",
    }
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["semoe-summary"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    assert artifact.type == "markdown" and artifact.data.count("](data:image/png;base64,") == 2
    assert _md_tables(artifact.data) == _md_tables((report_dir / "report.md").read_text())
    assert str(report_dir / "report.html") in artifact.data and str(report_dir / "report.html") in artifact.description
