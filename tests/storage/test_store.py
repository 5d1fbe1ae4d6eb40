"""The DuckDB results store: keyed idempotent writes, migrations, locking, read-only."""

import subprocess
import sys
import textwrap

import pytest

from semoe.storage.results import ResultStore, StoreError, StoreLockedError, migrate
from semoe.storage.schema import MIGRATIONS


def _pred(run_id, ex, method="m", em=1.0):
    return {
        "run_id": run_id,
        "dataset": "d",
        "example_id": ex,
        "method": method,
        "question": "q?",
        "golds": ["a"],
        "prediction": "a",
        "em": em,
        "f1": em,
        "retrieval_count": 1,
        "latency_s": 0.5,
    }


def _ret(run_id, ex, rank, pid, method="m"):
    return {
        "run_id": run_id,
        "dataset": "d",
        "example_id": ex,
        "method": method,
        "step": 0,
        "rank": rank,
        "query": "q?",
        "passage_id": pid,
        "title": pid,
        "score": 1.0 / rank,
    }


def test_rewrites_are_idempotent_and_replace_retrievals(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    assert store.start_run("r1", "t", "h", "v", "{}") == "new"
    store.write_predictions(
        {
            "predictions": [_pred("r1", "e1"), _pred("r1", "e2", em=0.0)],
            "retrievals": [_ret("r1", "e1", 1, "p1"), _ret("r1", "e1", 2, "p2")],
        }
    )
    store.write_predictions({"predictions": [_pred("r1", "e1", em=0.0)], "retrievals": [_ret("r1", "e1", 1, "p9")]})
    assert store.query("select count(*) n from predictions")[0]["n"] == 2
    assert store.query("select em from predictions where example_id='e1'")[0]["em"] == 0.0
    assert [r["passage_id"] for r in store.query("select passage_id from retrievals order by rank")] == ["p9"]
    assert store.done_keys("r1") == {("d", "e1", "m"), ("d", "e2", "m")}


def test_metrics_leaderboard_and_run_status(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    store.start_run("r1", "t", "h", "v", "{}")
    store.write_predictions({"predictions": [_pred("r1", "e1"), _pred("r1", "e2", em=0.0)]})
    store.compute_metrics("r1")
    store.compute_metrics("r1")
    assert store.leaderboard("r1")[0]["status"] == "running"
    store.finish_run("r1")
    board = store.leaderboard("r1")
    assert len(board) == 1 and board[0]["em"] == 0.5 and board[0]["n"] == 2 and board[0]["status"] == "finished"
    assert store.run_status("r1") == "finished"
    assert store.start_run("r1", "t", "h", "v", "{}") == "finished"


def test_failed_run_is_resumed_not_duplicated(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    store.start_run("r1", "t", "h", "v", "{}")
    store.finish_run("r1", status="failed", error="boom")
    assert store.start_run("r1", "t", "h", "v", "{}") == "failed"
    assert store.run_status("r1") == "running"
    assert store.query("select count(*) n from runs")[0]["n"] == 1


def test_migrations_are_versioned_and_reapplying_is_a_no_op(tmp_path):
    import duckdb

    ResultStore(tmp_path / "r.duckdb")
    con = duckdb.connect(str(tmp_path / "r.duckdb"))
    assert migrate(con) == MIGRATIONS[-1][0]
    assert con.execute("select count(*) from schema_version").fetchone()[0] == len(MIGRATIONS)
    con.close()


def test_read_only_store_rejects_writes_and_missing_file(tmp_path):
    with pytest.raises(StoreError, match="no results store"):
        ResultStore(tmp_path / "missing.duckdb", read_only=True)
    ResultStore(tmp_path / "r.duckdb")
    ro = ResultStore(tmp_path / "r.duckdb", read_only=True)
    import duckdb

    with pytest.raises(duckdb.Error):
        ro.query("create table x (a int)")


def test_locked_by_another_process_gives_one_clear_error(tmp_path):
    path = tmp_path / "r.duckdb"
    ResultStore(path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(path)!r})
            print("locked", flush=True)
            time.sleep(30)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match="locked by another process"):
            ResultStore(path, lock_wait_s=0.5)
    finally:
        holder.kill()
        holder.wait()
