"""``runner.threads``: torch CPU threads of every process that runs models (issue 13). The
setting is resolved per process, a local Dask cluster's workers get their share of the cores,
every model-using task applies it where it runs, and no result depends on it."""

from __future__ import annotations

import pytest

from semoe.config import ConfigError, RunnerConfig, SemoeConfig, config_from_dict
from semoe.tasks.threads import env_threads, local_worker_env, local_worker_threads, process_threads


@pytest.fixture
def restore_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_process_threads_setting_then_env_then_all_cores():
    assert process_threads(RunnerConfig(threads=3), cores=16, environ={"OMP_NUM_THREADS": "2"}) == 3
    assert process_threads(RunnerConfig(), cores=16, environ={"OMP_NUM_THREADS": "2"}) == 2
    assert process_threads(RunnerConfig(), cores=16, environ={}) == 16
    for junk in ("", "0", "-1", "two", "2,1"):  # OpenMP ignores these too
        assert env_threads({"OMP_NUM_THREADS": junk}) is None
        assert process_threads(RunnerConfig(), cores=8, environ={"OMP_NUM_THREADS": junk}) == 8


@pytest.mark.parametrize(
    "runner, cores, expected",
    [
        ({"kind": "dask", "n_workers": 4}, 16, 4),
        ({"kind": "dask", "n_workers": 2, "threads_per_worker": 2}, 16, 4),  # tasks at once share the cores
        ({"kind": "dask", "n_workers": 3}, 16, 5),
        ({"kind": "dask", "n_workers": 4}, 2, 1),  # never 0
        ({"kind": "dask", "n_workers": 4, "threads": 6}, 16, 6),  # the setting wins
    ],
)
def test_local_dask_workers_share_the_cores(runner, cores, expected):
    cfg = RunnerConfig.model_validate(runner)
    assert local_worker_threads(cfg, cores) == expected
    assert local_worker_env(cfg, cores) == {"OMP_NUM_THREADS": str(expected), "MKL_NUM_THREADS": str(expected)}


def test_threads_must_be_positive():
    with pytest.raises(ConfigError, match="runner.threads"):
        config_from_dict({"runner": {"threads": 0}})


@pytest.mark.parametrize("runner", [{"threads": 1}, {"malloc": "system"}])
def test_threads_and_malloc_leave_every_result_identity_alone(runner):
    from semoe import identity

    base, tuned = SemoeConfig(), SemoeConfig(runner=runner)
    assert tuned.config_hash() == base.config_hash()
    assert identity.qa_config_hash(tuned) == identity.qa_config_hash(base)
    for method in base.methods:
        scopes = [identity.answer_scope(c, method, "corpus", c.datasets[0]) for c in (tuned, base)]
        assert scopes[0] == scopes[1]


def test_model_processes_keep_freed_memory_unless_told_not_to(monkeypatch, restore_threads):
    import semoe.tasks.threads as threads

    calls: list[bool] = []
    monkeypatch.setattr(threads, "keep_freed_memory", lambda: calls.append(True) or True)
    threads.use_threads(SemoeConfig(runner={"threads": 1, "malloc": "system"}))
    assert calls == []
    threads.use_threads(SemoeConfig(runner={"threads": 1}))
    assert calls == [True]


def _model_tasks(monkeypatch, seen: list[int]):
    """Each model-using task with the work it wraps replaced by a probe that records the torch
    threads of the thread the task body runs on."""
    import torch

    import semoe.tasks.answering as answering_tasks
    import semoe.tasks.experts as expert_tasks
    import semoe.tasks.routing as routing_tasks
    from semoe.generation.methods.parametric import ExpertParams
    from semoe.tasks.answering import answer_chunk_task
    from semoe.tasks.experts import build_experts_task
    from semoe.tasks.routing import evaluate_routing_cell_task, prepare_routing_model_task

    class Provider:
        trained = 0

        def ensure(self, passages):
            seen.append(torch.get_num_threads())

        def drain_rows(self):
            return {}

    def answer(config, item, retriever=None):
        seen.append(torch.get_num_threads())
        return [], {}

    def loaded(config, index):
        seen.append(torch.get_num_threads())
        from types import SimpleNamespace

        return SimpleNamespace(key="k", curve=[])

    def cell(config, run_id, c, heatmap_dir):
        seen.append(torch.get_num_threads())
        return {"routing_runs": []}

    monkeypatch.setattr(expert_tasks, "load_lm", lambda config: None)
    monkeypatch.setattr(expert_tasks, "expert_provider", lambda config, lm, params: Provider())
    monkeypatch.setattr(answering_tasks, "answer_chunk", answer)
    monkeypatch.setattr(answering_tasks, "to_rows", lambda *a, **k: {})
    monkeypatch.setattr(routing_tasks, "routing_model", loaded)
    monkeypatch.setattr(routing_tasks, "evaluate_cell", cell)
    return {
        "answer-chunk": lambda cfg: answer_chunk_task(cfg, "run", "ds", "no-retrieval", [], [], None, "q0"),
        "build-experts": lambda cfg: build_experts_task(cfg, ExpertParams(), [], "p0"),
        "routing-model": lambda cfg: prepare_routing_model_task(cfg, 0, "m"),
        "routing-cell": lambda cfg: evaluate_routing_cell_task(cfg, "run", 0, None, "patch", "/tmp", "c", "k"),
    }


@pytest.mark.parametrize("task", ["answer-chunk", "build-experts", "routing-model", "routing-cell"])
def test_every_model_task_runs_with_the_configured_threads(task, prefect_api, monkeypatch, restore_threads):
    import torch

    seen: list[int] = []
    run = _model_tasks(monkeypatch, seen)[task]
    for n in (2, 1, 3):  # also more than the test machine's cores: torch takes any number
        run(SemoeConfig(model={"device": "cpu"}, runner={"threads": n}))
    assert seen == [2, 1, 3]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    run(SemoeConfig(model={"device": "cpu"}))  # unset: the environment's
    assert seen[-1] == 2 == torch.get_num_threads()


def _worker_threads() -> tuple[str, int]:
    """What a model-using task does first on a worker (``use_threads``), and the result."""
    import os

    import torch

    from semoe.config import SemoeConfig
    from semoe.tasks.threads import use_threads

    use_threads(SemoeConfig(runner={"kind": "dask"}))  # the setting unset, as in the test's config
    return os.environ["OMP_NUM_THREADS"], torch.get_num_threads()


@pytest.mark.slow
def test_local_dask_workers_get_their_share_of_the_cores(prefect_api, monkeypatch):
    from distributed import Client

    import semoe.tasks.threads as threads
    from semoe.flows.runners import shared_cluster

    monkeypatch.setattr(threads, "available_cores", lambda: 6)  # the flow process decides the share
    cfg = SemoeConfig(runner={"kind": "dask", "n_workers": 2})
    with shared_cluster(cfg) as running, Client(running.runner.address) as client:
        assert sorted(client.run(_worker_threads).values()) == [("3", 3), ("3", 3)]
