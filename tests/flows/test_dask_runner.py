"""The Dask task runner: the same small pipeline on a local cluster of 2 worker processes
gives the same stored results as the default runner (workers write Parquet shards, the
flow process ingests them), and shard ingestion is idempotent. On the weightless dummy model
(answers fan out), and on a tiny random model with an expert method (experts fan out too)."""

from __future__ import annotations

import pytest

from semoe.config import SemoeConfig
from semoe.storage.results import ResultStore
from tests.support.helpers import result_tables

TABLES = ["predictions", "retrievals", "trigger_events", "metrics", "augmentations"]
METHODS = {"dummy": ["no-retrieval", "single-retrieval"], "tiny": ["no-retrieval", "single-retrieval", "prag"]}


def _config(tmp_path, model: str, spec: str, name: str, runner: dict) -> SemoeConfig:
    return SemoeConfig.model_validate(
        {
            "name": "dask-test",
            "synthetic": {"seed": 5, "n_entities": 10, "n_questions": 4},
            "model": {"spec": spec},
            "generation": {"max_new_tokens": 6, "batch_size": 4, "few_shot": 1},
            "methods": METHODS[model],
            "augment": {"max_attempts": 1, "rewrite_max_new_tokens": 8, "qa_max_new_tokens": 8, "chunk_size": 4},
            "store": {"path": str(tmp_path / name / "results.duckdb"), "write_every": 2},
            "cache": {"root": str(tmp_path / name / "cache")},
            "report": {"write": False},
            "runner": runner,
        }
    )


def _tables(store: ResultStore) -> dict[str, list[dict]]:
    return result_tables(store.path, TABLES)


@pytest.fixture(scope="module")
def local_cluster(prefect_api) -> str:
    """The scheduler address of one local cluster of 2 worker processes, started as the
    pipeline starts its own (``shared_cluster``; its subflows then run on the address too),
    shared by both models: the workers import semoe and Prefect once."""
    from semoe.flows.runners import shared_cluster

    with shared_cluster(SemoeConfig(runner={"kind": "dask", "n_workers": 2})) as cfg:
        yield cfg.runner.address


@pytest.mark.parametrize("model", ["dummy", pytest.param("tiny", marks=[pytest.mark.slow, pytest.mark.real_model])])
def test_dask_runner_matches_default_runner(model, tmp_path, local_cluster, monkeypatch, request):
    import semoe.flows.pipeline as flows
    import semoe.flows.runners as runners
    from semoe.storage import shards

    spec = "dummy" if model == "dummy" else request.getfixturevalue("tiny_lm_dir")
    n_answers, experts = 4 * len(METHODS[model]), model == "tiny"

    ingested = []

    def counting_ingest(store, path):
        ingested.append(path)
        return shards.ingest_shard(store, path)

    monkeypatch.setattr(runners, "ingest_shard", counting_ingest)
    default_cfg = _config(tmp_path, model, spec, "default", {})
    dask_cfg = _config(tmp_path, model, spec, "dask", {"kind": "dask", "address": local_cluster})
    default = flows.pipeline(default_cfg)
    assert ingested == []
    dask = flows.pipeline(dask_cfg)
    assert len([p for p in ingested if "answers-" in p]) == n_answers // 2  # methods x 4 questions, 2 per chunk
    assert any("experts-" in p for p in ingested) == experts  # build_experts fanned out too
    assert dask["run_id"] == default["run_id"] and dask["produced"] == default["produced"] == n_answers

    expected, got = _tables(ResultStore(default_cfg.store.path)), _tables(ResultStore(dask_cfg.store.path))
    assert len(expected["predictions"]) == n_answers and expected["retrievals"]
    assert bool(expected["augmentations"]) == experts
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
    counts = store.query(
        "select (select count(*) from predictions) p, (select count(*) from retrievals) r,"
        " (select count(*) from metrics) m"
    )[0]
    assert counts == {"p": 1, "r": 3, "m": 1}


def test_runner_config_selects_the_task_runner_and_leaves_the_run_identity_alone():
    from prefect_dask import DaskTaskRunner

    from semoe.config import RunnerConfig
    from semoe.flows.runners import task_runner_for

    assert task_runner_for(RunnerConfig()) is None
    remote = task_runner_for(RunnerConfig(kind="dask", address="tcp://10.0.0.5:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    assert SemoeConfig.model_validate({"runner": {"kind": "dask"}}).config_hash() == SemoeConfig().config_hash()
