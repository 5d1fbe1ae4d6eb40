"""The life of a run, shared by the QA and routing flows: one process per run id, the
``runs`` row registered (or resumed), then marked finished, or failed with the error."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from semoe.config import SemoeConfig
from semoe.evaluation.run_ids import register_run
from semoe.storage.locks import run_lock
from semoe.storage.results import ResultStore


@contextmanager
def run_lifecycle(
    store: ResultStore, run_id: str, config: SemoeConfig, config_hash: str, code_kinds: Sequence[str]
) -> Iterator[str]:
    """Hold the run's lock and its ``runs`` row for the block; yields the run's previous
    status ("new", "running", "failed", "finished"). The CLI may hold the lock already."""
    with run_lock(store.path, run_id):
        previous = register_run(store, run_id, config, config_hash, code_kinds)
        try:
            yield previous
        except BaseException as e:
            store.finish_run(run_id, status="failed", error=f"{type(e).__name__}: {e}")
            raise
        store.finish_run(run_id)
