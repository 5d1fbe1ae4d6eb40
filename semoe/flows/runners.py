"""Task runners selected by the ``runner:`` config section.

``default`` keeps Prefect's own runner (tasks called one after another in the flow
process). ``dask`` runs the expert-training and answer-chunk tasks on a Dask cluster: the
one at ``runner.address`` (its workers need ``PREFECT_API_URL`` of the server the flow
reports to), or a local cluster of ``runner.n_workers`` processes that the pipeline starts
once and shares between its subflows, each with its share of the cores as torch threads.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from semoe.config import ConfigError, RunnerConfig, SemoeConfig


def _require_dask() -> None:
    import importlib.util

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
    from semoe.tasks.threads import local_worker_env

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
