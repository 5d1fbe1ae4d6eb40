"""Task runners selected by the ``runner:`` config section.

``default`` keeps Prefect's own runner (tasks called one after another in the flow
process). ``dask`` runs the expert-training and answer-chunk tasks on a Dask cluster: the
one at ``runner.address`` (its workers need ``PREFECT_API_URL`` of the server the flow
reports to), or a local cluster of ``runner.n_workers`` processes that the pipeline starts
once and shares between its subflows, each with its share of the cores as torch threads.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from semoe.config import ConfigError, RunnerConfig, SemoeConfig
from semoe.storage.results import ResultStore
from semoe.storage.shards import ingest_pending, ingest_shard, remove_root, shard_root
from semoe.tasks.threads import local_worker_env


def _require_dask() -> None:
    if importlib.util.find_spec("prefect_dask") is None:
        raise ConfigError("runner.kind 'dask' needs prefect-dask: pip install 'semoe[dask]'")


def task_runner_for(runner: RunnerConfig):
    """The Prefect task runner for ``runner``, or None for Prefect's default."""
    if runner.kind == "default":
        return None
    _require_dask()
    from prefect_dask import DaskTaskRunner

    if runner.address:
        return DaskTaskRunner(address=runner.address)
    return DaskTaskRunner(cluster_kwargs=_local_cluster_kwargs(runner))


def _local_cluster_kwargs(runner: RunnerConfig) -> dict:
    """Worker processes get ``PREFECT_API_URL`` and their share of the cores as torch threads
    (``semoe.tasks.threads.local_worker_threads``; Dask's own default is one)."""

    return {
        "n_workers": runner.n_workers,
        "threads_per_worker": runner.threads_per_worker,
        "processes": True,
        "dashboard_address": None,
        "env": {"PREFECT_API_URL": _prefect_api_url(), **local_worker_env(runner)},
    }


def _prefect_api_url() -> str:
    """The Prefect API this process reports to, also in ephemeral mode (its temporary
    server): the workers must share it, or each starts a temporary server of its own and
    their task runs never show up with the flow run."""
    from prefect.client.orchestration import get_client

    return str(get_client(sync_client=True).api_url)


def with_runner(flow_obj, config: SemoeConfig):
    """``flow_obj`` with the task runner of ``config.runner``."""
    runner = task_runner_for(config.runner)
    return flow_obj if runner is None else flow_obj.with_options(task_runner=runner)


@contextmanager
def shared_cluster(config: SemoeConfig) -> Iterator[SemoeConfig]:
    """Start the local Dask cluster once for a pipeline's subflows (each would otherwise
    start its own); yields the config pointing at it. A no-op for other runners."""
    if config.runner.kind != "dask" or config.runner.address:
        yield config
        return
    _require_dask()
    from distributed import LocalCluster

    with LocalCluster(**_local_cluster_kwargs(config.runner)) as cluster:
        runner = config.runner.model_copy(update={"address": cluster.scheduler_address})
        yield config.model_copy(update={"runner": runner})


class Runner:
    """The seam between a flow and where its tasks run: ``run(task, calls)`` runs
    ``task(*call)`` for each call and commits each call's tables to the store, in order, as
    they come; the flow never sees shards. Local: in this process, one call after another.
    Dask: all calls at once on the workers, which leave Parquet shards (DuckDB admits one
    writing process) that this process, the single writer, ingests; a resumed run first
    ingests the shards a killed one left (``resume``)."""

    def __init__(self, store: ResultStore, shard_dir: Path):
        self.store = store
        self.shard_dir = shard_dir

    def resume(self) -> int:
        """Commit what tasks of a killed attempt finished but never handed over; their number."""
        return 0

    def run(self, task, calls: list[tuple]) -> Iterator[int]:
        """Commit the tables of each call in order, yielding its index once committed."""
        for i, call in enumerate(calls):
            self.store.commit(task(*call))
            yield i


class DaskRunner(Runner):
    def resume(self) -> int:
        return ingest_pending(self.store, self.shard_dir)

    def run(self, task, calls: list[tuple]) -> Iterator[int]:
        futures = [task.submit(*call, shard_root=str(self.shard_dir)) for call in calls]
        for i, future in enumerate(futures):
            ingest_shard(self.store, future.result())
            yield i


@contextmanager
def runner_for(kind: str, store: ResultStore, key: str) -> Iterator[Runner]:
    """The runner of ``runner.kind`` ``kind`` for one job (``key``: its shards' directory
    name); the shard directory is removed once the job ends without an error."""
    shard_dir = shard_root(store.path, key)
    yield (Runner if kind == "default" else DaskRunner)(store, shard_dir)
    remove_root(shard_dir)
