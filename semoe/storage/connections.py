"""Short-lived DuckDB connections to store files without a database instance each.

The results store opens a connection per operation, so that other processes can take the
file between them (DuckDB admits one writing process per file). ``duckdb.connect(path)``
builds a whole database instance every time (its catalog of built-in functions): ~30 ms of
CPU per connection, 1,200 connections in the test suite. Here each process keeps one
in-memory instance and attaches a store file to it while any connection to that file is
open: ATTACH takes the file's lock and DETACH (after a checkpoint, as closing the last
connection does) releases it, ~5 ms in all. A connection is a cursor of that instance whose
default catalog is the file (``USE``), so SQL names its tables and views unqualified as
before, and ``current_database()`` is the file's stem as with ``duckdb.connect``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

_RESERVED = {"memory", "system", "temp"}  # DuckDB's own catalogs


@dataclass
class _Attached:
    alias: str
    read_only: bool
    users: int = 0


class _Host:
    """The process's in-memory DuckDB instance and the store files attached to it."""

    def __init__(self) -> None:
        import duckdb

        self.pid = os.getpid()
        self.con = duckdb.connect(":memory:")
        self.lock = threading.Lock()
        self.files: dict[str, _Attached] = {}
        self.plain: set[int] = set()  # ids of open connections of another instance (``open``)

    def open(self, path: Path, read_only: bool):
        """A new connection to ``path`` (attached if it is not yet; a plain ``duckdb.connect``
        one if another DuckDB instance of this process has the file open). Raises
        ``duckdb.Error`` as ``duckdb.connect`` does: a lock held by another process, a file
        that is no DuckDB database, a file open here in the other mode (read-only or not)."""
        import duckdb

        key = os.path.realpath(path)
        with self.lock:
            entry = self.files.get(key)
            if entry is None:
                alias, mode = self._alias(path.stem), " (READ_ONLY)" if read_only else ""
                try:
                    self.con.execute(f"ATTACH {quote_literal(key)} AS {_identifier(alias)}{mode}")
                except duckdb.Error as e:
                    if "unique file handle conflict" not in str(e).lower():
                        raise
                    # Open in another instance of this process (a caller's own duckdb.connect):
                    # join it through duckdb's instance cache, as every connection did before.
                    plain = duckdb.connect(key, read_only=read_only)
                    self.plain.add(id(plain))
                    return plain
                entry = self.files[key] = _Attached(alias, read_only)
            elif entry.read_only != read_only:  # as duckdb.connect with another configuration
                mode = "read-only" if entry.read_only else "for writing"
                raise duckdb.ConnectionException(f"{key} is open {mode} in this process until its connections close")
            cursor = self.con.cursor()
            entry.users += 1
        try:
            cursor.execute(f"USE {_identifier(entry.alias)}")
        except BaseException:
            self.close(path, cursor)
            raise
        return cursor

    def close(self, path: Path, cursor) -> None:
        """Close ``cursor``; the last connection to ``path`` detaches it, which checkpoints it.
        A checkpoint that fails (a full disk) after the file is detached is no error, as it is
        none when the last ``duckdb.connect`` connection closes: the committed writes are in
        the write-ahead log, replayed on the next open, and the next write that cannot be
        made raises the OS's message. A ``duckdb.Error`` that leaves the file attached is
        raised."""
        import duckdb

        cursor.close()
        key = os.path.realpath(path)
        with self.lock:
            if id(cursor) in self.plain:
                self.plain.discard(id(cursor))
                return
            entry = self.files[key]
            entry.users -= 1
            if entry.users:
                return
            try:
                self.con.execute(f"DETACH {_identifier(entry.alias)}")
            except duckdb.Error:
                if self._attached(entry.alias):
                    raise
            del self.files[key]

    def _attached(self, alias: str) -> bool:
        sql = "SELECT count(*) FROM duckdb_databases() WHERE database_name = ?"
        return self.con.execute(sql, [alias]).fetchone()[0] > 0

    def _alias(self, stem: str) -> str:
        taken = _RESERVED | {e.alias for e in self.files.values()}
        alias, n = stem, 1
        while alias.lower() in taken:
            n += 1
            alias = f"{stem}_{n}"
        return alias


_host: _Host | None = None
_host_lock = threading.Lock()


def _current_host() -> _Host:
    global _host
    with _host_lock:
        if _host is None or _host.pid != os.getpid():  # a forked child builds its own
            _host = _Host()
        return _host


def open_connection(path: Path, read_only: bool):
    """A connection to the DuckDB file ``path``; give it back with ``close_connection``."""
    return _current_host().open(path, read_only)


def close_connection(path: Path, cursor) -> None:
    """Close a connection of ``open_connection``; the file's last one checkpoints it."""
    _current_host().close(path, cursor)


def quote_literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
