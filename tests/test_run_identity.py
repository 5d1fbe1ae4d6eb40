"""Result identity: a stored result is reused only when nothing that produced it changed, and
always reused otherwise (semoe.identity). Each reproduced stale-result case of the review is
a test with the right value; the code identity is tested in both directions."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest

import semoe
from semoe import identity
from semoe.config import MethodSpec, SemoeConfig, load_config
from semoe.metrics import exact_match, f1_score
from semoe.storage.results import ResultStore

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _write_json(path: Path, rows) -> str:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return str(path)


def _write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


PASSAGES = [
    {"id": "p-lyon", "title": "Amelie Varon", "text": "Amelie Varon is a painter who was born in Lyon in 1901."},
    {"id": "p-oslo", "title": "Tor Brekke", "text": "Tor Brekke is a sailor who was born in Oslo in 1922."},
    {"id": "p-rome", "title": "Lucia Ferri", "text": "Lucia Ferri is an architect who was born in Rome in 1950."},
    {"id": "p-kiev", "title": "Olek Dovzhenko", "text": "Olek Dovzhenko is a poet who was born in Kyiv in 1933."},
]
QUESTIONS = [
    {"id": "q1", "question": "Where was Amelie Varon born?", "answer": "Lyon"},
    {"id": "q2", "question": "Where was Tor Brekke born?", "answer": "Oslo"},
]


@pytest.fixture
def qa_config(tmp_path):
    def make(dataset: str, corpus: str) -> SemoeConfig:
        return SemoeConfig.model_validate(
            {
                "name": "identity-test",
                "corpus": {"format": "jsonl", "path": corpus},
                "datasets": [{"name": "custom", "label": "mini", "path": dataset}],
                "model": {"spec": "dummy"},  # reuse and re-scoring need answers, not good ones
                "generation": {"max_new_tokens": 8, "batch_size": 4, "few_shot": 0},
                "methods": ["no-retrieval", "single-retrieval"],
                "retrieval": {"top_k": 2},
                "store": {"path": str(tmp_path / "results.duckdb"), "write_every": 4},
                "cache": {"root": str(tmp_path / "cache")},
                "report": {"write": False},
            }
        )

    return make


def _predictions(store: ResultStore, run_id: str) -> dict[tuple[str, str], dict]:
    rows = store.query("select * from predictions where run_id = ?", [run_id])
    return {(r["method"], r["example_id"]): r for r in rows}


def test_changed_gold_is_rescored_and_a_removed_question_leaves_the_metrics(tmp_path, qa_config, prefect_api):
    from semoe.flows.pipeline import pipeline

    corpus = tmp_path / "corpus.jsonl"
    _write_jsonl(corpus, PASSAGES)
    with corpus.open("a", encoding="utf-8") as f:
        f.write('{"id": "broken", "text": \n')  # skipped under skip_bad_rows, and counted
    dataset = tmp_path / "mini.json"
    cfg = qa_config(_write_json(dataset, QUESTIONS), str(corpus))
    cfg = cfg.model_copy(update={"corpus": cfg.corpus.model_copy(update={"options": {"skip_bad_rows": True}})})
    first = pipeline(cfg)
    assert first["produced"] == 4
    store = ResultStore(cfg.store.path)
    assert store.query("select passages, skipped_rows from indexes") == [{"passages": 4, "skipped_rows": 1}]
    old = _predictions(store, first["run_id"])

    # The gold of q1 becomes exactly what no-retrieval answered (so its EM must turn to 1) and q2 is removed.
    answer = old[("no-retrieval", "q1")]["prediction"]
    assert answer and answer != "Lyon"
    _write_json(dataset, [{**QUESTIONS[0], "answer": answer}])
    second = pipeline(cfg)
    assert second["run_id"] != first["run_id"]
    assert second["produced"] == 0 and second["reused"] == 2  # nothing re-generated

    new = _predictions(store, second["run_id"])
    assert set(new) == {("no-retrieval", "q1"), ("single-retrieval", "q1")}
    for method in ("no-retrieval", "single-retrieval"):
        row, before = new[(method, "q1")], old[(method, "q1")]
        assert row["prediction"] == before["prediction"] and row["answered_in"] == first["run_id"]
        assert row["golds"] == [answer]
        assert row["em"] == exact_match(row["prediction"], [answer])
        assert row["f1"] == f1_score(row["prediction"], [answer])
    assert new[("no-retrieval", "q1")]["em"] == 1.0
    metrics = {m["method"]: m for m in store.query("select * from metrics where run_id = ?", [second["run_id"]])}
    assert {m: r["n"] for m, r in metrics.items()} == {"no-retrieval": 1, "single-retrieval": 1}
    assert metrics["no-retrieval"]["em"] == 1.0
    # the reused answer keeps its retrievals, re-keyed to the new run
    got = store.query("select passage_id from retrievals where run_id = ? order by rank", [second["run_id"]])
    was = store.query(
        "select passage_id from retrievals where run_id = ? and example_id = 'q1' order by rank", [first["run_id"]]
    )
    assert got == was and len(got) == 2
    # the first run is left as it was: its numbers still describe the file it read
    assert store.query("select n from metrics where run_id = ? and method = 'no-retrieval'", [first["run_id"]]) == [
        {"n": 2}
    ]
    # running the same inputs again reuses the run itself
    third = pipeline(cfg)
    assert third["run_id"] == second["run_id"] and third["produced"] == third["reused"] == 0


def test_changed_corpus_reanswers_retrieving_methods_only(tmp_path, qa_config, prefect_api):
    from semoe.flows.pipeline import pipeline

    corpus = tmp_path / "corpus.jsonl"
    cfg = qa_config(_write_json(tmp_path / "mini.json", QUESTIONS), _write_jsonl(corpus, PASSAGES))
    first = pipeline(cfg)
    # The passage that holds q1's answer is replaced by another passage with a new id.
    replaced = [
        {"id": "p-lyon-2", "title": "Amelie Varon", "text": "Amelie Varon, a painter, grew up in Lyon and Paris."},
        *PASSAGES[1:],
    ]
    _write_jsonl(corpus, replaced)
    second = pipeline(cfg)
    assert second["run_id"] != first["run_id"]
    assert second["produced"] == 2 and second["reused"] == 2  # single-retrieval re-answered, no-retrieval reused
    store = ResultStore(cfg.store.path)
    new = _predictions(store, second["run_id"])
    assert new[("no-retrieval", "q1")]["answered_in"] == first["run_id"]
    assert new[("single-retrieval", "q1")]["answered_in"] == second["run_id"]
    cited = {
        r["passage_id"] for r in store.query("select passage_id from retrievals where run_id = ?", [second["run_id"]])
    }
    assert cited <= {p["id"] for p in replaced} and "p-lyon-2" in cited
    assert "p-lyon" not in cited


def test_unrelated_sections_leave_each_job_identity_alone():
    from semoe.routing.grid import routing_run_id

    routing = load_config(CONFIGS / "routing-demo.yaml")
    base = routing_run_id(routing)
    assert routing_run_id(load_config(CONFIGS / "routing-demo.yaml", ["experts.rank=4"])) == base
    assert routing_run_id(load_config(CONFIGS / "routing-demo.yaml", ["methods=[dragin]"])) == base
    assert routing_run_id(load_config(CONFIGS / "routing-demo.yaml", ["routing.eval_texts=7"])) != base

    demo = load_config(CONFIGS / "demo.yaml")
    with_routing = SemoeConfig.model_validate({**demo.model_dump(), "routing": routing.routing.model_dump()})
    assert identity.qa_config_hash(with_routing) == identity.qa_config_hash(demo)
    examples = {"d": []}
    assert identity.qa_run_id(with_routing, examples, "c") == identity.qa_run_id(demo, examples, "c")
    # sections only some methods read: experts settings matter to prag, not to no-retrieval
    ranked = load_config(CONFIGS / "demo.yaml", ["experts.rank=4"])

    def scope(cfg, name, corpus="c", **spec):
        return identity.answer_scope(cfg, MethodSpec(name=name, **spec), corpus, cfg.datasets[0])

    assert scope(ranked, "no-retrieval") == scope(demo, "no-retrieval")
    assert scope(ranked, "prag") != scope(demo, "prag")
    # a method's own params decide its answers; its label does not
    assert scope(demo, "prag", params={"experts": {"rank": 4}}) == scope(ranked, "prag")
    assert scope(demo, "dragin", label="d2", params={"hallucination_threshold": 2}) != scope(demo, "dragin")
    assert scope(demo, "dragin", label="renamed") == scope(demo, "dragin")
    # the corpus decides retrieving methods' answers only; operational settings decide nothing
    assert scope(demo, "no-retrieval", "c1") == scope(demo, "no-retrieval", "c2")
    assert scope(demo, "single-retrieval", "c1") != scope(demo, "single-retrieval", "c2")
    moved = load_config(
        CONFIGS / "demo.yaml", ["retrieval.es_url=http://elsewhere:9200", "augment.chunk_size=3", "report.write=false"]
    )
    assert scope(moved, "prag") == scope(demo, "prag")
    assert identity.qa_run_id(moved, examples, "c") == identity.qa_run_id(demo, examples, "c")


def test_a_dataset_is_identified_by_its_content_not_its_location(tmp_path):
    from semoe.data import DataContext
    from semoe.data.loading import load_examples

    a, b = tmp_path / "a.json", tmp_path / "b" / "copy.json"
    b.parent.mkdir()
    _write_json(a, QUESTIONS)
    shutil.copy(a, b)

    def run_id(path):
        cfg = SemoeConfig.model_validate({"datasets": [{"name": "custom", "label": "mini", "path": str(path)}]})
        examples = {"mini": load_examples(cfg.datasets[0], DataContext(synthetic=cfg.synthetic))}
        return identity.qa_run_id(cfg, examples, None)

    assert run_id(a) == run_id(b)
    _write_json(b, [QUESTIONS[0], {**QUESTIONS[1], "answer": "Bergen"}])
    assert run_id(a) != run_id(b)


def _package_copy(tmp_path) -> Path:
    root = tmp_path / "semoe"
    shutil.copytree(Path(semoe.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _digests(root: Path, kinds=tuple(identity.CODE_PARTS)) -> dict[str, str]:
    return {kind: identity.source_digest(root, identity.CODE_PARTS[kind]) for kind in kinds}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_code_that_cannot_change_a_result_is_not_part_of_its_identity(tmp_path):
    root = _package_copy(tmp_path)
    before = _digests(root)
    for rel in (
        "cli.py",
        "reporting/__init__.py",
        "reporting/render.py",
        "flows/pipeline.py",
        "tasks/answering.py",
        "storage/results.py",
        "evaluation/planning.py",
        "evaluation/run_ids.py",
        "evaluation/preflight.py",
    ):
        (root / rel).write_text((root / rel).read_text(encoding="utf-8") + "\nUNUSED_CONSTANT = 1\n", encoding="utf-8")
    # comments, docstrings and layout of answer code do not count either
    _edit(root / "generation/answer.py", '"""', '"""Reworded docstring. ')
    (root / "generation/prompts.py").write_text(
        "# a new comment\n\n" + (root / "generation/prompts.py").read_text(encoding="utf-8"), encoding="utf-8"
    )
    assert _digests(root) == before


def test_code_that_can_change_a_result_is_part_of_its_identity(tmp_path):
    root = _package_copy(tmp_path)
    before = _digests(root)
    _edit(root / "generation/prompts.py", 'f"Question: {question}"', 'f"Q: {question}"')
    after = _digests(root)
    assert after["answers"] != before["answers"] and after["routing"] != before["routing"]
    assert after["scores"] == before["scores"]

    root = _package_copy(tmp_path / "b")
    _edit(root / "metrics.py", "def ", "def _helper():\n    return 0\n\n\ndef ")
    after = _digests(root)
    assert after["scores"] != before["scores"] and after["answers"] == before["answers"]  # re-score, not re-answer

    for rel, kind in (
        ("evaluation/scoring.py", "scores"),  # recall None vs 0, error rows scoring 0
        ("evaluation/passage_sources.py", "answers"),  # provided contexts vs the index
        ("evaluation/answer_chunks.py", "answers"),
        ("evaluation/passage_experts.py", "answers"),
    ):
        root = _package_copy(tmp_path / rel.replace("/", "-"))
        (root / rel).write_text((root / rel).read_text(encoding="utf-8") + "\nEDITED = 1\n", encoding="utf-8")
        after = _digests(root)
        changed = {k for k in after if after[k] != before[k]}
        assert kind in changed and (kind == "answers" or "answers" not in changed), (rel, changed)

    root = _package_copy(tmp_path / "c")
    (root / "routing" / "policies" / "extra.py").write_text("K = 3\n", encoding="utf-8")
    after = _digests(root)
    assert after["routing"] != before["routing"] and after["answers"] == before["answers"]


def test_every_passage_expert_module_is_answer_code(tmp_path):
    """The passage-expert modules (augmentation, training, insertion), however the package is
    split, decide the answers of the methods with experts: each one is in the answer code."""
    root = _package_copy(tmp_path)
    before = _digests(root, ("answers", "scores"))  # the kinds asserted: each digest parses a package
    modules = sorted((root / "experts").glob("*.py"))
    assert {"augment.py", "lockstep.py", "training_data.py", "cache.py"} <= {m.name for m in modules}
    for module in modules:
        text = module.read_text(encoding="utf-8")
        module.write_text(text + "\nEDITED = 1\n", encoding="utf-8")
        after = _digests(root, before)
        assert after["answers"] != before["answers"] and after["scores"] == before["scores"], module.name
        module.write_text(text, encoding="utf-8")


def test_source_digest_parses_each_module_text_once_and_sees_every_edit(tmp_path, monkeypatch):
    """Module trees are memoised by content: hashing the tree again, or a copy of it, parses
    nothing; an edit that keeps the file's size and mtime is still seen, and parses that file only."""
    root = _package_copy(tmp_path)
    before = _digests(root)
    parsed: list[str] = []
    parse = ast.parse
    monkeypatch.setattr(
        ast, "parse", lambda text, filename, **kw: parsed.append(filename) or parse(text, filename, **kw)
    )
    assert _digests(root) == before and _digests(_package_copy(tmp_path / "copy")) == before
    assert parsed == []

    path = root / "metrics.py"
    stat = path.stat()
    _edit(path, "s.lower()", "s.upper()")  # the same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    after = _digests(root)
    assert after["scores"] != before["scores"] and after["answers"] == before["answers"]
    assert parsed == [str(path)]


def test_library_versions_are_part_of_the_code_identity(monkeypatch):
    assert identity.environment()["torch"]
    identity.code_digest.cache_clear()
    base = identity.code_digest("answers")
    monkeypatch.setattr(identity, "environment", lambda: {"python": "3.11", "torch": "0.0.1"})
    identity.code_digest.cache_clear()
    try:
        assert identity.code_digest("answers") != base
    finally:
        identity.code_digest.cache_clear()
