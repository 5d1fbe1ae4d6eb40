"""CPU threads of the processes that run models (``runner.threads``).

torch's intra-op threads default to every core. Beside other jobs (several flow runs on one
process worker, the workers of a local Dask cluster, CI next to a benchmark) more threads
than free cores cost time instead of saving it: OpenMP threads wait on each other at every
operator (issue 13: the README demo beside other jobs took 15:00 with the default threads,
3:30 with one). The setting is operational: greedy tokens do not depend on it (the runner
section is outside every result's identity).

Resolution, per process: ``runner.threads`` when set; else ``OMP_NUM_THREADS`` when set in
the process's environment; else every core the process may use. A local Dask cluster that
semoe starts gives each worker process ``OMP_NUM_THREADS`` = its share of the cores
(``local_worker_threads``), so its workers do not fight over them. Every model-using task
applies the resolved number at its start (``use_threads``), on whichever process it runs,
and with it ``runner.malloc`` (``semoe.models.malloc``: freed memory kept for reuse).
"""

from __future__ import annotations

import os
from typing import Mapping

from semoe.config import RunnerConfig, SemoeConfig
from semoe.models.malloc import keep_freed_memory

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # read by torch's OpenMP / MKL at import


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def env_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """``OMP_NUM_THREADS`` as a positive int, None when unset or not one (OpenMP ignores it then)."""
    raw = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def process_threads(runner: RunnerConfig, cores: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Threads for a model-using process: ``runner.threads``, else ``OMP_NUM_THREADS``, else
    every core (``cores``, default ``available_cores()``)."""
    return runner.threads or env_threads(environ) or cores or available_cores()


def local_worker_threads(runner: RunnerConfig, cores: int | None = None) -> int:
    """Threads of each worker of a local Dask cluster: ``runner.threads``, else the cores
    shared out among the tasks that can run at once (n_workers × threads_per_worker), at least 1."""
    slots = runner.n_workers * runner.threads_per_worker
    return runner.threads or max(1, (cores or available_cores()) // slots)


def local_worker_env(runner: RunnerConfig, cores: int | None = None) -> dict[str, str]:
    """Environment that gives each local Dask worker process its threads from its start."""
    n = str(local_worker_threads(runner, cores))
    return {name: n for name in THREAD_ENV}


def use_threads(config: SemoeConfig) -> int:
    """Set this process's torch intra-op threads (``process_threads``) and, with
    ``runner.malloc: reuse``, keep its freed memory for reuse (``semoe.models.malloc``);
    returns the threads."""
    import torch

    if config.runner.malloc == "reuse":
        keep_freed_memory()

    n = process_threads(config.runner)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
