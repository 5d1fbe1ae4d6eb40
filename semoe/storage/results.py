"""The DuckDB results store.

DuckDB allows one writing process per file, so the store opens a short-lived
connection per operation (retrying briefly while another process holds the lock)
instead of holding the file for a whole run; tasks return rows and the flow process
is the single writer. Every write is keyed (INSERT OR REPLACE on the primary key) and
happens in one transaction per batch, so reruns never duplicate rows and a killed
run resumes from its last committed batch.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

from semoe.storage.connections import close_connection, open_connection
from semoe.storage.errors import StoreError, StoreLockedError
from semoe.storage.rows import RunRow, as_dicts
from semoe.storage.schema import MIGRATIONS

LOCK_WAIT_S = 15.0
# Tables whose rows belong to one (run, dataset, example, method) prediction.
PER_EXAMPLE_TABLES = ("retrievals", "trigger_events")
PREDICTION_KEY = ("run_id", "dataset", "example_id", "method")
ROUTING_CELL_KEY = ("run_id", "model", "policy_key", "mode")


def utcnow() -> datetime:
    """Naive UTC timestamp (DuckDB TIMESTAMP columns are zone-less)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _is_lock_error(err: Exception) -> bool:
    msg = str(err).lower()
    return "lock" in msg and ("conflicting" in msg or "could not set" in msg)


# OS failures of a write, as DuckDB words them (it reports the OS message, e.g. "Could not
# write file ".../x.duckdb.wal": No space left on device").
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG)


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def write_failure(path: Path, err: Exception) -> StoreError | None:
    """A ``StoreError`` naming the store file and the OS failure when ``err`` (a DuckDB
    error) is one — a full disk says which filesystem and how much is free; else None."""
    import duckdb

    text = str(err).strip()
    failed = [e for e in _WRITE_ERRNOS if os.strerror(e) in text]
    if not failed and not isinstance(err, duckdb.IOException):
        return None
    what, where = ("cannot write the results store" if failed else "I/O error on the results store"), ""
    if errno.ENOSPC in failed or errno.EDQUOT in failed:
        mount = _mount_point(path.parent)
        with suppress(OSError):
            where = f" (filesystem {mount}: {shutil.disk_usage(mount).free:,} bytes free)"
    return StoreError(
        f"{what} {path}: {text.splitlines()[0]}{where}; the batch being written was "
        "not stored and the batches committed before it are kept: fix this and rerun the same command to resume"
    )


@contextmanager
def transaction(con) -> Iterator[None]:
    """BEGIN … COMMIT; on any failure roll back if the transaction is still open. A failed
    COMMIT has ended it already: that ROLLBACK's own error ("no transaction is active")
    must not replace the real failure."""
    import duckdb

    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        with suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


class ResultStore:
    def __init__(self, path: str | Path, read_only: bool = False, lock_wait_s: float | None = None):
        self.path = Path(path).expanduser()
        self.read_only = read_only
        self.lock_wait_s = LOCK_WAIT_S if lock_wait_s is None else lock_wait_s
        if read_only:
            if not self.path.is_file():
                raise StoreError(
                    f"no results store at {self.path}: name the file with `--store PATH` (a config's `store.path`),"
                    " or run `semoe run CONFIG` first"
                )
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the results directory {self.path.parent}: {e}") from None
            with self.connect() as con:
                migrate(con)

    @contextmanager
    def connect(self) -> Iterator["duckdb.DuckDBPyConnection"]:  # noqa: F821
        import duckdb

        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                con = open_connection(self.path, self.read_only)
                break
            except duckdb.Error as e:
                if _is_lock_error(e):
                    if time.monotonic() < deadline:
                        time.sleep(0.25)
                        continue
                    raise StoreLockedError(
                        f"results store {self.path} is locked by another process "
                        f"(waited {self.lock_wait_s:.0f} s): {str(e).splitlines()[0]}"
                    ) from None
                raise StoreError(f"cannot open results store {self.path}: {e}") from None
        try:
            yield con
        except BaseException as e:
            with suppress(duckdb.Error):
                close_connection(self.path, con)
            failure = write_failure(self.path, e) if isinstance(e, duckdb.Error) else None
            if failure is not None:
                raise failure from None
            raise
        try:
            close_connection(self.path, con)  # the file's last connection checkpoints it: a write too
        except duckdb.Error as e:
            raise (write_failure(self.path, e) or StoreError(f"cannot close results store {self.path}: {e}")) from None

    # --- runs -----------------------------------------------------------------
    def start_run(self, run_id: str, name: str, config_hash: str, code_version: str, config_json: str) -> str:
        """Register (or resume) a run; returns its previous status ('new' if none)."""
        with self.connect() as con:
            row = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
            if row is None:
                new = RunRow(
                    run_id=run_id,
                    name=name,
                    config_hash=config_hash,
                    code_version=code_version,
                    config_json=config_json,
                    status="running",
                    started_at=utcnow(),
                ).as_dict()
                con.execute(
                    f"INSERT INTO runs ({', '.join(new)}) VALUES ({', '.join('?' * len(new))})", list(new.values())
                )
                return "new"
            if row[0] != "finished":
                con.execute(
                    "UPDATE runs SET status = 'running', started_at = ?, finished_at = NULL, error = NULL "
                    "WHERE run_id = ?",
                    [utcnow(), run_id],
                )
            return row[0]

    def finish_run(self, run_id: str, status: str = "finished", error: str | None = None) -> None:
        with self.connect() as con:
            con.execute(
                "UPDATE runs SET status = ?, finished_at = ?, error = ?,"
                " n_predictions = (SELECT count(*) FROM predictions WHERE run_id = ?) WHERE run_id = ?",
                [status, utcnow(), error, run_id, run_id],
            )

    def run_status(self, run_id: str) -> str | None:
        with self.connect() as con:
            row = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
        return row[0] if row else None

    # --- per-example rows ------------------------------------------------------
    def done_keys(self, run_id: str) -> set[tuple[str, str, str]]:
        """(dataset, example_id, method) already stored for this run: what a resume skips."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT dataset, example_id, method FROM predictions WHERE run_id = ?", [run_id]
            ).fetchall()
        return {tuple(r) for r in rows}

    def stored_answers(self, answer_keys: Sequence[str]) -> dict[str, dict[str, list[dict]]]:
        """Answers already stored under these answer keys, in any run: answer key → rows of
        ``predictions`` (one, the latest) and of each per-example table, as stored."""
        return self._stored_results("predictions", "answer_key", PER_EXAMPLE_TABLES, PREDICTION_KEY, answer_keys)

    def stored_routing_cells(self, cell_keys: Sequence[str]) -> dict[str, dict[str, list[dict]]]:
        """Routing cells already stored under these cell keys, in any run: cell key → its
        ``routing_runs`` row (the latest) and ``routing_layer_stats`` rows, as stored."""
        return self._stored_results("routing_runs", "cell_key", ("routing_layer_stats",), ROUTING_CELL_KEY, cell_keys)

    def _stored_results(
        self, table: str, key_column: str, children: Sequence[str], join: Sequence[str], keys: Sequence[str]
    ) -> dict[str, dict[str, list[dict]]]:
        if not keys:
            return {}
        import polars as pl

        wanted = pl.DataFrame({key_column: sorted(set(keys))})  # noqa: F841 (used by SQL)
        out: dict[str, dict[str, list[dict]]] = {}
        with self.connect() as con:
            con.execute(
                f"CREATE TEMP TABLE src AS SELECT t.* FROM {table} t JOIN wanted USING ({key_column})"
                f" QUALIFY row_number() OVER (PARTITION BY {key_column} ORDER BY created_at DESC, run_id) = 1"
            )
            for row in _dicts(con.execute("SELECT * FROM src")):
                out[row[key_column]] = {table: [row], **{child: [] for child in children}}
            for child in children:
                rows = con.execute(
                    f"SELECT s.{key_column} AS _key, c.* FROM {child} c JOIN src s USING ({', '.join(join)})"
                )
                for row in _dicts(rows):
                    out[row.pop("_key")][child].append(row)
        return out

    def write_predictions(self, tables: dict[str, Sequence[dict]]) -> None:
        """Write a batch of predictions with their per-example rows in one transaction.

        ``tables`` maps "predictions" and the per-example child tables (PER_EXAMPLE_TABLES)
        to rows. Child rows of the batch's examples are replaced whole, so a rerun that
        retrieves or triggers differently leaves no stale rows behind.
        """
        predictions = tables.get("predictions") or []
        if not predictions:
            return
        import polars as pl

        unknown = set(tables) - {"predictions", *PER_EXAMPLE_TABLES}
        if unknown:
            raise StoreError(f"not per-example tables: {sorted(unknown)}")
        predictions = as_dicts("predictions", predictions)
        pred_df = pl.DataFrame(list(predictions), infer_schema_length=None)
        keys_df = pred_df.select(*PREDICTION_KEY)  # noqa: F841 (used by SQL)
        with self.connect() as con, transaction(con):
            for table in PER_EXAMPLE_TABLES:
                con.execute(
                    f"DELETE FROM {table} t USING keys_df k WHERE t.run_id = k.run_id AND t.dataset = k.dataset"
                    " AND t.example_id = k.example_id AND t.method = k.method"
                )
                rows = tables.get(table)
                if rows:
                    df = pl.DataFrame(as_dicts(table, rows), infer_schema_length=None)  # noqa: F841 (used by SQL)
                    con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM df")
            con.execute("INSERT OR REPLACE INTO predictions BY NAME SELECT * FROM pred_df")

    def commit(self, tables: dict[str, Sequence[dict]]) -> None:
        """Write a task's tables: predictions with their per-example rows (``write_predictions``),
        every other table keyed (``write_tables``)."""
        per_example = {t: tables[t] for t in ("predictions", *PER_EXAMPLE_TABLES) if t in tables}
        self.write_predictions(per_example)
        self.write_tables({t: rows for t, rows in tables.items() if t not in per_example})

    def write_rows(self, table: str, rows: Sequence[dict]) -> None:
        """Keyed insert of the rows of one table (metrics, index stats, ...)."""
        self.write_tables({table: rows})

    def write_tables(self, tables: dict[str, Sequence[dict]]) -> None:
        """Keyed insert of the rows of several tables in one transaction (all or nothing);
        rows are ``semoe.storage.rows`` rows or their ``as_dict``."""
        import polars as pl

        frames = {t: pl.DataFrame(as_dicts(t, rows), infer_schema_length=None) for t, rows in tables.items() if rows}
        if not frames:
            return
        with self.connect() as con, transaction(con):
            for table, df in frames.items():  # noqa: B007 (df used by SQL)
                con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM df")

    def compute_metrics(self, run_id: str) -> None:
        """Aggregate a run's predictions into ``metrics`` (per dataset and method) and
        ``metrics_by_type`` (per question type too; questions with a type, not NULL or ""), recomputed whole,
        idempotent. Means in SQL; beside each mean its bootstrap interval (``semoe.stats``) over
        the run's own per-question scores in example-id order, so a run that reused stored
        answers gets the intervals of the answers as re-scored against its golds."""
        rows = self.query(
            "SELECT dataset, method, question_type, em, f1, recall, recall_all FROM predictions"
            " WHERE run_id = ? ORDER BY dataset, method, example_id",
            [run_id],
        )
        overall = _intervals(run_id, rows, METRICS_KEY)  # noqa: F841 (used by SQL)
        by_type = _intervals(run_id, [r for r in rows if r["question_type"]], BY_TYPE_KEY)  # noqa: F841
        with self.connect() as con, transaction(con):
            for table, key, extra, frame in (
                ("metrics", METRICS_KEY, METRICS_ONLY, "overall"),
                ("metrics_by_type", BY_TYPE_KEY, "", "by_type"),
            ):
                keys = ", ".join(key)
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
                con.execute(
                    f"""INSERT INTO {table} BY NAME
                    SELECT a.*, i.* EXCLUDE (run_id, {keys}) FROM (
                        SELECT run_id, {keys}, {AGGREGATES}{extra}, now()::TIMESTAMP AS computed_at
                        FROM predictions WHERE run_id = ? GROUP BY run_id, {keys}
                    ) a JOIN {frame} i USING (run_id, {keys})""",
                    [run_id],
                )

    def leaderboard(self, run_id: str | None = None) -> list[dict]:
        where, params = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
        return self.query(f"SELECT * FROM leaderboard {where} ORDER BY dataset, em DESC, f1 DESC", params)

    def query(self, sql: str, params: Sequence | None = None) -> list[dict]:
        with self.connect() as con:
            cur = con.execute(sql, list(params or []))
            cols = [d[0] for d in cur.description] if cur.description else []
            return [dict(zip(cols, row)) for row in cur.fetchall()]

    def query_table(self, sql: str):
        """Run SQL and return a pyarrow Table (for the CLI's formatted output)."""
        with self.connect() as con:
            return con.sql(sql).to_arrow_table()


# Per-question score column → the metric its mean is stored as (``semoe.storage.columns``).
SCORED = {"em": "em", "f1": "f1", "recall": "recall_retrieved", "recall_all": "recall_all"}
AGGREGATES = (
    "count(*) AS n, avg(em) AS em, avg(f1) AS f1, avg(recall) AS recall_retrieved,"
    " avg(recall_all) AS recall_all, count(error) AS errors"
)
METRICS_ONLY = (
    ", avg(retrieval_count) AS retrievals_per_question, avg(latency_s) AS seconds_per_question,"
    " count(*) FILTER (WHERE truncated) AS truncated,"
    " count(*) FILTER (WHERE NOT answer_marker_found) AS answer_marker_missing"
)
METRICS_KEY = ("dataset", "method")
BY_TYPE_KEY = ("dataset", "method", "question_type")  # the inner join with the intervals keeps typed rows


def _intervals(run_id: str, rows: Sequence[dict], key: Sequence[str]):
    """A polars frame: per group of ``rows`` (per-question scores, ordered) by ``key``, the
    bootstrap interval (``<metric>_lo``, ``<metric>_hi``) of each mean in ``SCORED``."""
    import polars as pl

    from semoe.stats import bootstrap_interval

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in key), []).append(row)
    out = []
    for values, members in groups.items():
        record = {"run_id": run_id, **dict(zip(key, values))}
        for column, metric in SCORED.items():
            interval = bootstrap_interval([m[column] for m in members])
            record |= {f"{metric}_lo": interval.lo, f"{metric}_hi": interval.hi}
        out.append(record)
    bounds = {f"{m}_{end}": pl.Float64 for m in SCORED.values() for end in ("lo", "hi")}
    return pl.DataFrame(out, schema={"run_id": pl.String, **{k: pl.String for k in key}, **bounds})


def _dicts(cursor) -> list[dict]:
    cols = [d[0] for d in cursor.description]
    return [dict(zip(cols, row)) for row in cursor.fetchall()]


def json_dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def migrate(con) -> int:
    """Bring the store to the latest schema version; returns that version."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    for version, statements in MIGRATIONS:
        if version <= current:
            continue
        with transaction(con):
            for stmt in statements:
                con.execute(stmt)
            con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, utcnow()])
        current = version
    return current
