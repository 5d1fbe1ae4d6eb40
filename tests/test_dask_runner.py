"""The Dask task runner: the same small pipeline on a local cluster of 2 worker processes
gives the same stored results as the default runner (workers write Parquet shards, the
flow process ingests them), and shard ingestion is idempotent."""

from __future__ import annotations

import pytest

from semoe.config import SemoeConfig
from semoe.storage.results import ResultStore

from helpers import result_tables  # noqa: E402

pytestmark = pytest.mark.slow

TABLES = ["predictions", "retrievals", "trigger_events", "metrics", "augmentations"]


def _config(tmp_path, tiny_lm_dir, name: str, runner: dict) -> SemoeConfig:
    return SemoeConfig.model_validate(
        {
            "name": "dask-test",
            "synthetic": {"seed": 5, "n_entities": 10, "n_questions": 4},
            "model": {"spec": tiny_lm_dir},
            "generation": {"max_new_tokens": 4, "batch_size": 4, "few_shot": 1},
            "methods": ["no-retrieval", "single-retrieval", "prag"],
            "augment": {"max_attempts": 1, "rewrite_max_new_tokens": 8, "qa_max_new_tokens": 8, "chunk_size": 4},
            "store": {"path": str(tmp_path / name / "results.duckdb"), "write_every": 2},
            "cache": {"root": str(tmp_path / name / "cache")},
            "runner": runner,
        }
    )


def _tables(store: ResultStore) -> dict[str, list[dict]]:
    return result_tables(store.path, TABLES)


def test_dask_runner_matches_default_runner(tmp_path, tiny_lm_dir, prefect_api, monkeypatch):
    import semoe.flows.pipeline as flows
    import semoe.flows.runners as runners
    from semoe.storage import shards

    ingested = []

    def counting_ingest(store, path):
        ingested.append(path)
        return shards.ingest_shard(store, path)

    monkeypatch.setattr(runners, "ingest_shard", counting_ingest)
    default_cfg = _config(tmp_path, tiny_lm_dir, "default", {})
    dask_cfg = _config(tmp_path, tiny_lm_dir, "dask", {"kind": "dask", "n_workers": 2})
    default = flows.pipeline(default_cfg)
    assert ingested == []
    dask = flows.pipeline(dask_cfg)
    assert len([p for p in ingested if "answers-" in p]) == 6  # 3 methods x 4 questions, 2 per chunk
    assert any("experts-" in p for p in ingested)  # build_experts fanned out too
    assert dask["run_id"] == default["run_id"] and dask["produced"] == default["produced"] == 12

    expected, got = _tables(ResultStore(default_cfg.store.path)), _tables(ResultStore(dask_cfg.store.path))
    assert len(expected["predictions"]) == 12 and expected["retrievals"] and expected["augmentations"]
    assert got == expected
    assert not (tmp_path / "dask" / "results-shards").exists()  # every shard ingested and removed


def test_shard_ingest_is_idempotent(tmp_path):
    from semoe.storage.shards import ingest_pending, ingest_shard, pending_shards, read_shard, write_shard

    store = ResultStore(tmp_path / "r.duckdb")
    key = {"run_id": "r", "dataset": "d", "example_id": "e1", "method": "m"}
    tables = {
        "predictions": [{**key, "prediction": "x", "golds": ["x"], "em": 1.0}],
        "retrievals": [{**key, "step": 0, "rank": r, "passage_id": f"p{r}", "score": 1.0 / (r + 1)} for r in range(3)],
        "metrics": [{"run_id": "r", "dataset": "d", "method": "m", "n": 1, "em": 1.0}],
    }
    root = tmp_path / "shards"
    path = write_shard(root, "a", tables)
    assert read_shard(path)["retrievals"][2]["passage_id"] == "p2"
    (root / ".b.123.tmp").mkdir()  # a write that a killed worker never finished
    assert pending_shards(root) == [path]
    assert ingest_pending(store, root) == 1 and not any(root.iterdir())
    write_shard(root, "a", tables)  # the same chunk again (a retried task, a resumed run)
    ingest_shard(store, root / "a")
    counts = store.query("select (select count(*) from predictions) p, (select count(*) from retrievals) r,"
                         " (select count(*) from metrics) m")[0]
    assert counts == {"p": 1, "r": 3, "m": 1}


def test_runner_config_selects_the_task_runner_and_leaves_the_run_identity_alone():
    from prefect_dask import DaskTaskRunner

    from semoe.config import RunnerConfig
    from semoe.flows.runners import task_runner_for

    assert task_runner_for(RunnerConfig()) is None
    remote = task_runner_for(RunnerConfig(kind="dask", address="tcp://10.0.0.5:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    assert SemoeConfig.model_validate({"runner": {"kind": "dask"}}).config_hash() == SemoeConfig().config_hash()
