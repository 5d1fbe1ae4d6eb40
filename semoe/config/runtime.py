"""Operational sections: where results and artifacts live, where tasks run, GPU limits,
whether a run writes its report. None of them decides a result (``semoe.identity`` leaves them out)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from semoe.config.base import Section

WORKER_ENV = "SEMOE_WORKER_NAME"


class StoreConfig(Section):
    path: str = "results/semoe.duckdb"
    write_every: int = Field(16, ge=1, description="examples per committed write batch (resume granularity)")


class ReportConfig(Section):
    """The end-of-run report of ``semoe run`` (markdown, HTML, PNG plots and the Prefect summary
    artifact). Operational: the stored results and their views are the same either way, and
    ``semoe report RUN_ID`` writes the report of any stored run later."""

    write: bool = Field(True, description="write the report when a run ends; false: the leaderboard artifact only")


class CacheConfig(Section):
    root: str = Field("~/.cache/semoe", description="artifact cache: indexes, converted models, ...")


class RunnerConfig(Section):
    """Where expert training and evaluation shards run. ``default``: tasks one after another
    in the flow process. ``dask``: a Dask cluster (``address``, or a local one of
    ``n_workers`` processes); workers write Parquet shards that the flow process ingests,
    since DuckDB admits one writing process."""

    kind: Literal["default", "dask"] = "default"
    address: str | None = Field(None, description="scheduler of a running Dask cluster, e.g. tcp://host:8786")
    n_workers: int = Field(2, ge=1, description="worker processes of the local cluster (when no address)")
    threads_per_worker: int = Field(1, ge=1, description="tasks a Dask worker runs at once")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads of each process that runs models (the flow process, each Dask worker); "
        "None: OMP_NUM_THREADS when set, else all cores; a local Dask cluster's workers: cores ÷ "
        "(n_workers × threads_per_worker). Operational: results do not depend on it",
    )
    malloc: Literal["reuse", "system"] = Field(
        "reuse",
        description="glibc malloc of each process that runs models: reuse keeps freed memory for the next "
        "batch (no page fault per 4 KiB of every activation; CPU inference about a tenth faster, up to 1 GiB of free "
        "memory kept); system leaves glibc's defaults. Operational: results do not depend on it",
    )


class GpuConfig(Section):
    """Per-GPU concurrency limits (operational: not part of the run identity)."""

    limit: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: a limit when the model runs on CUDA; on: also on CPU (tests); off: none"
    )
    slots: int = Field(1, ge=1, description="model tasks one GPU runs at once (the limit's size when created)")
    worker: str | None = Field(
        None, description=f"worker name in limit names; default env {WORKER_ENV}, else the hostname"
    )
