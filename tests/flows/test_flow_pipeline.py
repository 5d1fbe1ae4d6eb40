"""The whole Prefect pipeline on a tiny synthetic corpus: rows land in DuckDB, a rerun adds
nothing, a killed run resumes, a failing run is never marked finished (the weightless dummy
model: plumbing only); expert methods build their experts in the flow (a tiny random model)."""

from __future__ import annotations

import pytest

from semoe.config import SemoeConfig
from semoe.storage.results import ResultStore

PREDICTION_ROWS = (
    "select * exclude (created_at, latency_s, latency_retrieve_s, latency_generate_s) from predictions order by all"
)


def _config(tmp_path, spec: str, methods: list[str]) -> SemoeConfig:
    return SemoeConfig.model_validate(
        {
            "name": "flow-test",
            "synthetic": {"seed": 3, "n_entities": 12, "n_questions": 6},
            "datasets": [{"name": "synthetic"}],
            "model": {"spec": spec},
            "generation": {"max_new_tokens": 8, "batch_size": 4, "few_shot": 1},
            "methods": methods,
            "augment": {"max_attempts": 1, "rewrite_max_new_tokens": 8, "qa_max_new_tokens": 8},
            "store": {"path": str(tmp_path / "results.duckdb"), "write_every": 4},
            "cache": {"root": str(tmp_path / "cache")},
            "report": {"write": False},
        }
    )


@pytest.fixture
def tiny_config(tmp_path) -> SemoeConfig:
    return _config(tmp_path, "dummy", ["no-retrieval", "single-retrieval"])


def test_pipeline_stores_rows_reruns_idempotently_and_resumes(tiny_config, tmp_path, prefect_api):
    from semoe.flows.pipeline import pipeline

    first = pipeline(tiny_config)
    store = ResultStore(tiny_config.store.path)
    run_id = first["run_id"]
    assert first["produced"] == 12
    counts = store.query(
        "select method, count(*) n, count(distinct example_id) u from predictions group by 1 order by 1"
    )
    assert counts == [{"method": m, "n": 6, "u": 6} for m in ("no-retrieval", "single-retrieval")]
    answered = store.query("select count(*) n from predictions where prediction <> '' and generated_tokens = 5")
    assert answered == [{"n": 12}]  # every question answered ("The answer is W.": 5 dummy tokens)
    rets = store.query(
        "select method, count(*) n, max(rank) k, count(distinct example_id) e from retrievals group by 1"
    )
    assert rets == [{"method": "single-retrieval", "n": 18, "k": 3, "e": 6}]
    assert store.query("select status, n_predictions from runs")[0] == {"status": "finished", "n_predictions": 12}
    assert {r["method"] for r in first["leaderboard"]} == {"no-retrieval", "single-retrieval"}
    assert store.query("select count(*) n from indexes")[0]["n"] == 1
    assert first["report"] == [] and not (tmp_path / "reports").exists()  # report.write: false
    before = store.query(PREDICTION_ROWS)

    index_row = store.query("select * from indexes")
    second = pipeline(tiny_config)
    assert store.query("select * from indexes") == index_row  # reused, not rebuilt or re-recorded
    assert second["run_id"] == run_id and second["produced"] == 0
    assert store.query("select count(*) n from predictions")[0]["n"] == 12

    # Simulate a run killed after its first committed chunk: rows partly gone, status running.
    with store.connect() as con:
        con.execute(
            "delete from predictions where method = 'single-retrieval' and example_id in "
            "(select example_id from predictions where method = 'single-retrieval' order by example_id limit 4)"
        )
        con.execute("update runs set status = 'running'")
    third = pipeline(tiny_config)
    assert third["produced"] == 4
    assert store.query(PREDICTION_ROWS) == before
    assert store.query("select count(*) n from retrievals")[0]["n"] == 18
    assert store.query("select status, n_predictions from runs")[0] == {"status": "finished", "n_predictions": 12}


@pytest.mark.slow
def test_pipeline_builds_experts_before_answering_with_them(tmp_path, tiny_lm_dir, prefect_api):
    from semoe.flows.pipeline import pipeline

    cfg = _config(tmp_path, tiny_lm_dir, ["prag"])
    result = pipeline(cfg)
    store = ResultStore(cfg.store.path)
    assert result["produced"] == 6
    assert store.query("select count(*) n, count(distinct example_id) u from predictions") == [{"n": 6, "u": 6}]
    assert store.query("select count(*) n, max(rank) k from retrievals") == [{"n": 18, "k": 3}]
    # build_experts augmented every retrieved passage (the tiny model's output is garbage: failed, with a reason)
    augs = store.query(
        "select count(*) n, count(*) filter (where status = 'failed' and reason is not null) f from augmentations"
    )[0]
    assert augs["n"] > 0 and augs["f"] == augs["n"]
    assert store.query("select status, n_predictions from runs")[0] == {"status": "finished", "n_predictions": 6}


def test_failing_run_is_marked_failed_not_finished(tiny_config, prefect_api, monkeypatch):
    from semoe.flows.pipeline import evaluate

    def broken(cfg, item, retriever=None):
        raise RuntimeError(f"method {item.method} broke")

    monkeypatch.setattr("semoe.tasks.answering.answer_chunk", broken)
    cfg = SemoeConfig.model_validate({**tiny_config.model_dump(), "methods": ["no-retrieval"]})
    with pytest.raises(RuntimeError, match="no-retrieval broke"):
        evaluate(cfg)
    rows = ResultStore(cfg.store.path).query("select status, error from runs")
    assert rows[0]["status"] == "failed" and "no-retrieval broke" in rows[0]["error"]


def test_bad_dataset_fails_before_a_run_is_registered(tiny_config, tmp_path, prefect_api):
    from semoe.data.schema import DataFormatError
    from semoe.flows.pipeline import evaluate

    data = tiny_config.model_dump()
    data["datasets"].append({"name": "custom", "path": str(tmp_path / "missing.json")})
    cfg = SemoeConfig.model_validate(data)
    with pytest.raises(DataFormatError, match="missing.json"):
        evaluate(cfg)
    assert ResultStore(cfg.store.path).query("select count(*) n from runs") == [{"n": 0}]


@pytest.mark.slow
def test_one_config_sweeps_method_params_as_labelled_rows(tmp_path, tiny_lm_dir, prefect_api):
    """Two DRAGIN thresholds and two LoRA ranks in one config: four labelled rows, each
    method run with its own settings (threshold 0 always retrieves, a huge one never does;
    each rank trains its own experts)."""
    from semoe.flows.pipeline import pipeline
    from tests.support.helpers import seed_augmentations

    cfg = SemoeConfig.model_validate(
        {
            "name": "sweep-test",
            "synthetic": {"seed": 3, "n_entities": 10, "n_questions": 3},
            "model": {"spec": tiny_lm_dir},
            "generation": {"max_new_tokens": 6, "batch_size": 4, "few_shot": 0},
            "retrieval": {"top_k": 1},
            "trigger": {"max_retrievals": 1},
            "experts": {"measure_loss": False},
            "augment": {"n_qa": 1},
            "methods": [
                {"name": "dragin", "label": "dragin-t0", "params": {"hallucination_threshold": 0.0}},
                {"name": "dragin", "label": "dragin-t1e9", "params": {"hallucination_threshold": 1e9}},
                {"name": "prag", "label": "prag-r2", "params": {"experts": {"rank": 2}}},
                {"name": "prag", "label": "prag-r4", "params": {"experts": {"rank": 4}}},
            ],
            "store": {"path": str(tmp_path / "results.duckdb")},
            "cache": {"root": str(tmp_path / "cache")},
            "report": {"write": False},
        }
    )
    seed_augmentations(cfg)
    result = pipeline(cfg)
    store = ResultStore(cfg.store.path)
    board = {r["method"]: r for r in result["leaderboard"]}
    assert set(board) == {"dragin-t0", "dragin-t1e9", "prag-r2", "prag-r4"} and all(r["n"] == 3 for r in board.values())
    assert board["dragin-t0"]["retrievals_per_question"] == 1.0
    assert board["dragin-t1e9"]["retrievals_per_question"] == 0.0
    ranks = store.query("select rank, count(*) n from experts group by 1 order by 1")
    assert [r["rank"] for r in ranks] == [2, 4] and ranks[0]["n"] == ranks[1]["n"] > 0
    keys = store.query("select method, count(distinct answer_key) k from predictions group by 1 order by 1")
    assert all(r["k"] == 3 for r in keys)
