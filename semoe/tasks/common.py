"""Retry policy shared by Prefect tasks: retry transient I/O, never bad input."""

from __future__ import annotations

from semoe.config import ConfigError
from semoe.data.schema import DataFormatError
from semoe.registry import UnknownNameError
from semoe.storage.shards import write_shard

PERMANENT_ERRORS = (DataFormatError, ConfigError, UnknownNameError, FileNotFoundError, PermissionError)


def retry_on_transient_io(task, task_run, state) -> bool:
    try:
        state.result()
    except PERMANENT_ERRORS:
        return False
    except (OSError, ConnectionError, TimeoutError):
        return True
    except Exception:
        return False
    return False


def hand_back(tables: dict[str, list[dict]], shard_root: str | None, key: str) -> dict[str, list[dict]] | str:
    """A task's rows for the single store writer: the tables themselves in the flow's own
    process, or (``shard_root`` set: a worker process) the path of a Parquet shard holding them
    (``semoe.storage.shards``), which the runner reads back (``semoe.flows.runners``)."""
    if shard_root is None:
        return tables

    return str(write_shard(shard_root, key, tables))
