"""One process per run id at a time.

Two processes running the same run id would answer the same chunks twice and one would
mark the run finished while the other still writes. The store itself cannot prevent that
(it opens a short-lived connection per operation, so that runs with *different* ids share
it), so a run holds an exclusive ``fcntl.flock`` on ``<store>.locks/<run_id>.lock`` for
its whole length. The kernel releases the lock when the process ends, however it ends
(SIGKILL included): a stale lock file is never a problem. The file records the holder's
pid and start time, for the message a second process gives.

Locks are re-entrant within a process: the CLI takes the run's lock before it starts the
Prefect API, and the flow takes it again (a no-op) for flows started some other way.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from semoe.storage.results import StoreError

logger = logging.getLogger(__name__)
POLL_S = 0.2

_held: dict[Path, int] = {}  # lock path -> nesting depth in this process
_held_guard = threading.Lock()


class RunLockedError(StoreError):
    """Another process is running the same run id."""


def lock_path(store_path: str | Path, run_id: str) -> Path:
    """``<store>.locks/<run_id>.lock`` beside the DuckDB file."""
    store = Path(store_path).expanduser()
    return store.with_name(store.name + ".locks") / f"{run_id}.lock"


def holder(path: Path) -> str:
    """'process <pid> (since <UTC time>)' from a lock file, as far as it can be read."""
    try:
        pid, since = path.read_text().split()[:2]
    except (OSError, ValueError):
        return "another process"
    return f"process {pid} (since {since})"


@contextmanager
def run_lock(
    store_path: str | Path, run_id: str, wait_s: float = 0.0, on_wait: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """Hold the run's lock for the block; yields the lock file's path.

    Another process holding it: say so once through ``on_wait`` (default: this module's
    logger), wait up to ``wait_s`` seconds (0: not at all), then raise ``RunLockedError``
    naming the run, the holder's pid and since when it holds it. Raises ``StoreError`` when
    the lock directory cannot be created.
    """

    path = lock_path(store_path, run_id).resolve()
    with _held_guard:
        if path in _held:
            _held[path] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield path
        finally:
            with _held_guard:
                _held[path] -= 1
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StoreError(f"cannot create the run lock {path}: {e}") from None
    try:
        deadline, announced = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
                    raise RunLockedError(
                        f"run {run_id} is already running in {holder(path)}{waited}; wait for it to end, "
                        f"or stop it and rerun (lock: {path})"
                    ) from None
                if not announced:
                    (on_wait or logger.warning)(
                        f"run {run_id} is running in {holder(path)}; waiting up to {wait_s:g} s"
                    )
                    announced = True
                time.sleep(POLL_S)
        since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {since}\n".encode(), 0)
        with _held_guard:
            _held[path] = 1
        try:
            yield path
        finally:
            with _held_guard:
                del _held[path]
    finally:
        os.close(fd)  # releases the flock
