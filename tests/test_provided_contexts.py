"""Provided contexts in `semoe run`: a dataset whose questions carry their own passages (Self-RAG
/ Open-RAG JSONL `ctxs`) is answered by retrieving methods from them, with no index, and those
contexts are part of the answer identity (both directions, as tests/test_run_identity.py does).

Runs on the weightless dummy model: identity and plumbing, not answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semoe.config import ConfigError, SemoeConfig
from semoe.data import DataContext
from semoe.data.loading import load_examples
from semoe.data.schema import DataFormatError
from semoe.evaluation.passage_sources import needs_index, provided_datasets
from semoe.evaluation.run_ids import qa_run_id
from semoe.storage.results import ResultStore

ROWS = [
    {
        "id": "q1",
        "question": "Where was Amelie Varon born?",
        "answers": ["Lyon"],
        "ctxs": [
            {"id": "c-lyon", "title": "Amelie Varon", "text": "Amelie Varon is a painter born in Lyon in 1901."},
            {"id": "c-oslo", "title": "Tor Brekke", "text": "Tor Brekke is a sailor born in Oslo in 1922."},
            {"id": "c-rome", "title": "Lucia Ferri", "text": "Lucia Ferri is an architect born in Rome."},
        ],
    },
    {
        "id": "q2",
        "question": "Where was Tor Brekke born?",
        "answers": ["Oslo"],
        "ctxs": [{"id": "c-oslo", "title": "Tor Brekke", "text": "Tor Brekke is a sailor born in Oslo in 1922."}],
    },
]


def _write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _config(tmp_path: Path, data: str, methods=("no-retrieval", "single-retrieval"), **dataset) -> SemoeConfig:
    return SemoeConfig.model_validate(
        {
            "name": "provided-contexts",
            "synthetic": {"seed": 0, "n_entities": 8, "n_questions": 2},
            "datasets": [{"name": "openrag", "label": "orag", "path": data, **dataset}],
            "model": {"spec": "dummy"},
            "generation": {"max_new_tokens": 8, "batch_size": 4, "few_shot": 0},
            "methods": list(methods),
            "retrieval": {"top_k": 2},
            "store": {"path": str(tmp_path / "results.duckdb"), "write_every": 4},
            "cache": {"root": str(tmp_path / "cache")},
            "report": {"write": False},
        }
    )


def _examples(cfg: SemoeConfig) -> dict:
    return {d.display_name: load_examples(d, DataContext.of(cfg)) for d in cfg.datasets}


def _by_key(store: ResultStore, table: str, run_id: str, order: str = "") -> dict:
    rows = store.query(f"select * from {table} where run_id = ? order by method, example_id{order}", [run_id])
    out: dict = {}
    for r in rows:
        out.setdefault((r["method"], r["example_id"]), []).append(r)
    return out


def test_a_changed_context_reanswers_retrieving_methods_only(tmp_path, prefect_api):
    from semoe.flows.pipeline import pipeline

    data = tmp_path / "orag.jsonl"
    cfg = _config(tmp_path, _write_jsonl(data, ROWS))
    first = pipeline(cfg)
    assert first["produced"] == 4 and first["reused"] == 0
    store = ResultStore(cfg.store.path)
    hits = _by_key(store, "retrievals", first["run_id"], ", rank")
    assert [h["passage_id"] for h in hits[("single-retrieval", "q1")]] == ["c-lyon", "c-oslo"]  # top-2, file order
    assert [h["passage_id"] for h in hits[("single-retrieval", "q2")]] == ["c-oslo"]
    assert not (Path(cfg.cache.root) / "indexes").exists()  # no index was built
    assert store.query("select count(*) as n from indexes")[0]["n"] == 0

    # q1's first context changes: single-retrieval re-answers q1 only; no-retrieval reuses both.
    edited = [{**ROWS[0], "ctxs": [{"id": "c-paris", "title": "Amelie Varon", "text": "She moved to Paris."}]}, ROWS[1]]
    _write_jsonl(data, edited)
    second = pipeline(cfg)
    assert second["run_id"] != first["run_id"]
    assert second["produced"] == 1 and second["reused"] == 3
    preds = {k: v[0] for k, v in _by_key(store, "predictions", second["run_id"]).items()}
    assert preds[("single-retrieval", "q1")]["answered_in"] == second["run_id"]
    for key in [("single-retrieval", "q2"), ("no-retrieval", "q1"), ("no-retrieval", "q2")]:
        assert preds[key]["answered_in"] == first["run_id"]
    hits = _by_key(store, "retrievals", second["run_id"], ", rank")
    assert [h["passage_id"] for h in hits[("single-retrieval", "q1")]] == ["c-paris"]

    # The corpus is not read: another corpus is the same run, nothing answered again.
    other_corpus = cfg.model_copy(update={"synthetic": cfg.synthetic.model_copy(update={"seed": 7})})
    third = pipeline(other_corpus)
    assert third["run_id"] == second["run_id"] and third["produced"] == 0


def test_passages_setting_chooses_the_corpus_or_the_contexts(tmp_path):
    data = _write_jsonl(tmp_path / "orag.jsonl", ROWS)
    auto = _config(tmp_path, data)
    assert provided_datasets(auto, _examples(auto)) == {"orag"}
    assert not needs_index(auto, _examples(auto))
    corpus = _config(tmp_path, data, passages="corpus")
    assert provided_datasets(corpus, _examples(corpus)) == set()
    assert needs_index(corpus, _examples(corpus))
    # The setting is part of the run identity; `auto` leaves configs written before it unchanged.
    assert "passages" not in auto.datasets[0].identity()
    assert qa_run_id(corpus, _examples(corpus), "c") != qa_run_id(auto, _examples(auto), "c")

    plain = _write_jsonl(tmp_path / "plain.jsonl", [{"question": "Q?", "answer": "A"}])
    assert provided_datasets(_config(tmp_path, plain), _examples(_config(tmp_path, plain))) == set()
    provided = _config(tmp_path, plain, passages="provided")
    with pytest.raises(DataFormatError, match=r"dataset 'orag': question '0' has no contexts"):
        provided_datasets(provided, _examples(provided))


def test_a_generated_query_on_provided_contexts_is_a_config_error(tmp_path):
    data = _write_jsonl(tmp_path / "orag.jsonl", ROWS)
    cfg = _config(tmp_path, data, methods=["single-retrieval", "dragin"])
    with pytest.raises(ConfigError, match=r"'dragin' \(dragin\) retrieves with queries it generates.*dataset 'orag'"):
        provided_datasets(cfg, _examples(cfg))
    # Retrieving with the question itself is what the contexts answer: allowed.
    direct = _config(tmp_path, data, methods=[{"name": "dragin", "params": {"query_formulation": "direct"}}])
    assert provided_datasets(direct, _examples(direct)) == {"orag"}
    # On the corpus a generated query is fine.
    corpus = _config(tmp_path, data, methods=["dragin"], passages="corpus")
    assert provided_datasets(corpus, _examples(corpus)) == set()
