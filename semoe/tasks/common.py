"""Retry policy shared by Prefect tasks: retry transient I/O, never bad input."""

from __future__ import annotations

from semoe.config import ConfigError
from semoe.data.schema import DataFormatError
from semoe.registry import UnknownNameError

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
