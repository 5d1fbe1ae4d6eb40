"""Analysis access to the results store: its views as polars frames, and a Parquet export of
every table and view, so results can leave DuckDB (notebooks, other tools, archives).

Views are defined in the store migrations (``semoe/storage/schema.py``); this module only reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from semoe.storage.atomic import atomic_path
from semoe.storage.connections import quote_literal
from semoe.storage.results import ResultStore, StoreError
from semoe.storage.schema import MIGRATIONS

LATEST_VERSION = MIGRATIONS[-1][0]


class UnknownRelationError(StoreError):
    """A table or view name the store does not have."""


def relations(store: ResultStore) -> dict[str, str]:
    """Tables and views of the store's main schema, name -> "table" or "view", sorted by name."""
    rows = store.query(
        "SELECT table_name, table_type FROM information_schema.tables"
        " WHERE table_catalog = current_database() AND table_schema = 'main' ORDER BY table_name"
    )
    return {r["table_name"]: "view" if r["table_type"] == "VIEW" else "table" for r in rows}


def schema_version(store: ResultStore) -> int:
    import duckdb

    try:
        return store.query("SELECT coalesce(max(version), 0) AS v FROM schema_version")[0]["v"]
    except duckdb.CatalogException:
        raise StoreError(f"{store.path} is not a semoe results store (it has no schema_version table)") from None


def open_current(store_path: str | Path) -> ResultStore:
    """The store read-only, at the latest schema: a store written by older code is migrated
    first (one short write), so the views readers ask for exist. A missing store is an error,
    never created."""
    store = ResultStore(store_path, read_only=True)
    if schema_version(store) < LATEST_VERSION:
        ResultStore(store_path)
    return store


def load_view(store_path: str | Path, name: str):
    """A view of the store as a polars DataFrame (JSON columns as strings)."""
    store = open_current(store_path)
    views = sorted(n for n, kind in relations(store).items() if kind == "view")
    if name not in views:
        raise UnknownRelationError(f"no view {name!r} in {store.path}; available views: {', '.join(views)}")
    with store.connect() as con:
        return con.sql(f'SELECT * FROM "{name}"').pl()


def export_parquet(store_path: str | Path, out_dir: str | Path, names: Sequence[str] | None = None) -> dict[str, Path]:
    """Write one Parquet file per table and view (or per name in ``names``) into ``out_dir``.

    The store is opened read-only. Each file is written beside its final name and renamed
    into place, so a reader never sees a half-written file. JSON columns are written as
    strings (Parquet readers otherwise see raw bytes). Returns name -> file.
    """
    import duckdb

    store = ResultStore(store_path, read_only=True)
    available = relations(store)
    chosen = list(names) if names else list(available)
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise UnknownRelationError(
            f"no table or view {', '.join(map(repr, unknown))} in {store.path}; available: {', '.join(available)}"
        )
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the export directory {out}: {e}") from None
    written: dict[str, Path] = {}
    with store.connect() as con:
        for name in chosen:
            json_cols = [
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_catalog = current_database() AND table_schema = 'main'"
                    " AND table_name = ? AND data_type = 'JSON'",
                    [name],
                ).fetchall()
            ]
            replace = ", ".join(f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in json_cols)
            select = f'SELECT * REPLACE ({replace}) FROM "{name}"' if json_cols else f'SELECT * FROM "{name}"'
            final = out / f"{name}.parquet"
            try:
                with atomic_path(final) as tmp:
                    con.execute(f"COPY ({select}) TO {quote_literal(str(tmp))} (FORMAT parquet)")
            except (duckdb.Error, OSError) as e:
                raise StoreError(f"cannot export {name} to {final}: {e}") from None
            written[name] = final
    return written
