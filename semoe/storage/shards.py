"""Parquet shards: how tasks on other processes hand rows to the single DuckDB writer.

A task on a Dask worker cannot write the store (DuckDB admits one writing process), so it
writes its rows as a shard: one directory of ``<table>.parquet`` files, built under a
temporary name and renamed into place, so a shard exists whole or not at all. The flow
process ingests shards with the store's keyed writes (ingesting a shard twice replaces
its rows, never duplicates them) and deletes them afterwards; a resumed run first
ingests what a killed run left behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

from semoe.storage.results import ResultStore
from semoe.storage.rows import as_dicts


def shard_root(store_path: str | Path, run_id: str) -> Path:
    """The run's shard directory, beside the store file (the store is what it feeds)."""
    store = Path(store_path).expanduser()
    return store.parent / f"{store.stem}-shards" / run_id


def write_shard(root: str | Path, key: str, tables: Mapping[str, Sequence[dict]]) -> Path:
    """Write ``tables`` (table name → rows) as the shard ``root/key``, atomically."""
    import polars as pl

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / key, root / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for table, rows in tables.items():
        if rows:
            pl.DataFrame(as_dicts(table, rows), infer_schema_length=None).write_parquet(tmp / f"{table}.parquet")
    shutil.rmtree(final, ignore_errors=True)  # a retried task's shard replaces the earlier one
    tmp.rename(final)
    return final


def read_shard(path: str | Path) -> dict[str, list[dict]]:
    import polars as pl

    return {f.stem: pl.read_parquet(f).to_dicts() for f in sorted(Path(path).glob("*.parquet"))}


def pending_shards(root: str | Path) -> list[Path]:
    """Complete shards not yet ingested (temporary directories of unfinished writes excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def ingest_shard(store: ResultStore, path: str | Path) -> None:
    """Load one shard into the store, then delete it (a crash in between only means the
    shard is ingested again)."""
    store.commit(read_shard(path))
    shutil.rmtree(path)


def ingest_pending(store: ResultStore, root: str | Path) -> int:
    """Ingest every complete shard under ``root``, drop leftovers of unfinished writes;
    returns the number of shards ingested."""
    shards = pending_shards(root)
    for path in shards:
        ingest_shard(store, path)
    root = Path(root)
    if root.is_dir():
        for tmp in root.glob(".*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)
    return len(shards)


def remove_root(root: str | Path) -> None:
    """Remove a run's shard directory once everything is ingested (and its parent, if empty)."""
    root = Path(root)
    for d in (root, root.parent):
        try:
            d.rmdir()
        except OSError:
            return
