"""The store's connections: files attached to one DuckDB instance per process
(``semoe.storage.connections``) behave as ``duckdb.connect`` connections did: the file's lock
is held while a connection is open and released after the last one, unqualified names and
``current_database()`` are the file's, one mode per file at a time."""

import os
import subprocess
import sys
import textwrap

import pytest

from semoe.storage.results import ResultStore, StoreError
from semoe.storage.views import relations

_OPEN_ELSEWHERE = textwrap.dedent("""
    import duckdb, sys
    try:
        duckdb.connect(sys.argv[1]).close()
    except duckdb.Error as e:
        print(str(e).splitlines()[0])
    else:
        print("opened")
""")


def _open_in_another_process(path) -> str:
    return subprocess.run(
        [sys.executable, "-c", _OPEN_ELSEWHERE, str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_file_is_locked_while_a_connection_is_open_and_checkpointed_after_the_last(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    with store.connect() as first:
        first.execute("CREATE TABLE t (a INTEGER)")
        with store.connect() as second:  # the same attachment: sees the first's table
            second.execute("INSERT INTO t VALUES (1), (2)")
        assert first.execute("SELECT sum(a) FROM t").fetchone() == (3,)
        assert "lock" in _open_in_another_process(store.path).lower()
    assert _open_in_another_process(store.path) == "opened"
    assert not (tmp_path / "r.duckdb.wal").exists()  # the last close checkpointed the file
    assert ResultStore(store.path, read_only=True).query("SELECT count(*) AS n FROM t") == [{"n": 2}]


def test_files_with_the_same_stem_stay_apart(tmp_path):
    a, b = (ResultStore(tmp_path / d / "semoe.duckdb") for d in ("a", "b"))
    with a.connect() as con_a, b.connect() as con_b:
        con_b.execute("CREATE TABLE only_in_b (x INTEGER)")
        assert con_a.execute("SELECT current_database()").fetchone() == ("semoe",)
        assert con_b.execute("SELECT current_database()").fetchone() != ("semoe",)
        assert "only_in_b" not in relations(a) and "only_in_b" in relations(b)
        assert relations(a) == {k: v for k, v in relations(b).items() if k != "only_in_b"}
    with a.connect() as con_a:  # b's file is detached: a is again the only one
        assert con_a.execute("SELECT current_database()").fetchone() == ("semoe",)


def test_one_mode_per_file_at_a_time_in_a_process(tmp_path):
    writer = ResultStore(tmp_path / "r.duckdb")
    reader = ResultStore(writer.path, read_only=True)
    with writer.connect():
        with pytest.raises(StoreError, match="open for writing in this process"):
            reader.query("SELECT 1")
    with reader.connect():
        with pytest.raises(StoreError, match="open read-only in this process"):
            writer.query("SELECT 1")
    assert reader.query("SELECT count(*) AS n FROM runs") == [{"n": 0}]
    writer.start_run("r1", "n", "h", "v", "{}")  # after both closed, either mode opens


def test_a_connection_of_the_callers_own_is_joined_not_refused(tmp_path):
    """A caller (a notebook) holding its own ``duckdb.connect`` to the store: the store's
    operations share that instance, as they did when every connection was a ``duckdb.connect``."""
    import duckdb

    store = ResultStore(tmp_path / "r.duckdb")
    own = duckdb.connect(str(store.path))
    try:
        store.start_run("r1", "n", "h", "v", "{}")
        assert own.execute("SELECT run_id FROM runs").fetchall() == [("r1",)]
        assert store.run_status("r1") == "running"
    finally:
        own.close()
    with store.connect() as con:  # attached again once the caller's connection is gone
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (1,)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_does_not_write_through_the_parents_instance(tmp_path):
    """The parent's instance, copied into a forked child with the parent's file attached, must
    not serve the child: the child would write the file the parent holds."""
    parent = ResultStore(tmp_path / "parent.duckdb")
    with parent.connect():
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with pytest.raises(StoreError, match="cannot open results store|locked by another process"):
                    ResultStore(parent.path, lock_wait_s=0).start_run("c", "n", "h", "v", "{}")
                ResultStore(tmp_path / "child.duckdb").start_run("c", "n", "h", "v", "{}")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent.run_status("c") is None
    assert ResultStore(tmp_path / "child.duckdb", read_only=True).run_status("c") == "running"
