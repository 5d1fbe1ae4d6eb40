"""Interrupts, dead or slow Prefect servers, full disks, concurrent runs (issue 9, part 7):
each ends in one clear line and a known exit code, and loses no committed row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from semoe.storage.locks import RunLockedError, lock_path, run_lock
from semoe.storage.results import ResultStore, StoreError
from tests.support.prefect_api import QUIET_SETTINGS

ENOSPC_TEXT = os.strerror(28)  # "No space left on device"


def _prediction(i: int, text: str = "x") -> dict:
    return {"run_id": "r1", "dataset": "d", "example_id": f"e{i}", "method": "m", "prediction": text, "em": 1.0}


def _predictions(store: ResultStore) -> list[tuple]:
    return [tuple(r.values()) for r in store.query("select example_id, prediction from predictions order by all")]


# --------------------------------------------------------------------------- the per-run lock


def _hold_lock(store: Path, run_id: str) -> subprocess.Popen:
    """Another process holding the run's lock (until killed)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from semoe.storage.locks import run_lock
            with run_lock({str(store)!r}, {run_id!r}):
                print("locked", flush=True)
                time.sleep(120)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_process_with_the_same_run_id_stops_with_the_holders_pid(tmp_path):
    store = tmp_path / "results.duckdb"
    holder = _hold_lock(store, "run-a")
    try:
        with pytest.raises(RunLockedError) as err, run_lock(store, "run-a"):
            pass
        message = str(err.value)
        assert f"run run-a is already running in process {holder.pid} (since 20" in message
        assert str(lock_path(store, "run-a").resolve()) in message
        with run_lock(store, "run-b") as path:  # another run id on the same store: not blocked
            assert path == lock_path(store, "run-b").resolve()
    finally:
        holder.kill()
        holder.wait()


def test_waiting_second_process_gets_the_lock_when_the_holder_dies(tmp_path):
    store = tmp_path / "results.duckdb"
    holder = _hold_lock(store, "run-a")
    t0 = time.monotonic()
    with pytest.raises(RunLockedError, match=r"\(waited 0\.5 s\)"), run_lock(store, "run-a", wait_s=0.5):
        pass
    assert time.monotonic() - t0 >= 0.5  # it waited before giving up (a lower bound: load cannot break it)
    subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {holder.pid}"])  # SIGKILL: the kernel drops the lock
    with run_lock(store, "run-a", wait_s=30) as path:  # raises RunLockedError if the lock never came
        assert path.read_text().split()[0] == str(os.getpid())
    holder.wait()


def test_run_lock_is_reentrant_within_a_process(tmp_path):
    store = tmp_path / "results.duckdb"
    with run_lock(store, "r"), run_lock(store, "r"):  # the CLI, then the flow
        pass
    with run_lock(store, "r"):  # released by the outer block
        pass


def test_cli_run_of_a_run_already_running_stops_with_one_line(tmp_path, capsys):
    from semoe.cli import main
    from semoe.config import load_config
    from semoe.evaluation.preflight import preflight

    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "locked",
                "synthetic": {"seed": 1, "n_entities": 8, "n_questions": 2},
                "methods": ["no-retrieval"],
                "store": {"path": str(tmp_path / "results.duckdb")},
                "cache": {"root": str(tmp_path / "cache")},
            }
        )
    )
    run_id = preflight(load_config(str(config)))
    holder = _hold_lock(tmp_path / "results.duckdb", run_id)
    try:
        assert main(["run", str(config), "--wait", "0.3"]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert err.count("semoe: error: ") == 1
    assert f"semoe: error: run {run_id} is already running in process {holder.pid} (since " in err
    assert "(waited 0.3 s)" in err and "Traceback" not in err


# --------------------------------------------------------------------------- full disk


class _FullDiskConnection:
    """A real DuckDB connection whose COMMIT fails as on a full disk: DuckDB ends the
    transaction and reports the OS error; a ROLLBACK after it fails ("no transaction is active")."""

    def __init__(self, con, path: str):
        self._con, self._path = con, path

    def execute(self, sql, *args):
        if sql.strip().upper() == "COMMIT":
            self._con.execute("ROLLBACK")
            import duckdb

            raise duckdb.TransactionException(
                f'TransactionContext Error: Failed to commit: Could not write file "{self._path}.wal": {ENOSPC_TEXT}'
            )
        # DuckDB finds Python data frames (``SELECT * FROM df``) among its caller's variables
        caller = sys._getframe(1)
        return eval(
            "con.execute(sql, *args)",
            caller.f_globals,  # noqa: S307
            {**caller.f_locals, "con": self._con, "sql": sql, "args": args},
        )

    def __getattr__(self, name):
        return getattr(self._con, name)


@pytest.fixture
def full_disk(monkeypatch):
    """From now on every commit of the store fails with ENOSPC (patched where the store opens
    its connections)."""
    import semoe.storage.results as results

    real = results.open_connection

    def switch():
        monkeypatch.setattr(
            results, "open_connection", lambda path, read_only: _FullDiskConnection(real(path, read_only), str(path))
        )

    return switch


def test_full_disk_names_the_device_and_file_not_the_rollback(tmp_path, full_disk):
    store = ResultStore(tmp_path / "results.duckdb")
    store.write_predictions({"predictions": [_prediction(1)]})
    full_disk()
    with pytest.raises(StoreError) as err:
        store.write_predictions({"predictions": [_prediction(2)], "retrievals": []})
    message = str(err.value)
    assert f"cannot write the results store {store.path}" in message
    assert f'{store.path}.wal": {ENOSPC_TEXT}' in message
    assert "bytes free" in message and "rerun the same command to resume" in message
    assert "rollback" not in message
    with pytest.raises(StoreError, match=ENOSPC_TEXT):
        store.compute_metrics("r1")
    assert _predictions(ResultStore(store.path, read_only=True)) == [("e1", "x")]  # nothing half-written


def test_other_errors_in_a_transaction_still_raise_themselves(tmp_path):
    import duckdb

    store = ResultStore(tmp_path / "results.duckdb")
    with pytest.raises(duckdb.Error, match="no_such_column"):
        store.write_predictions({"predictions": [{**_prediction(1), "no_such_column": 1}]})
    assert _predictions(store) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root and mount(8)); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "full"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_disk_gives_the_os_message_and_keeps_committed_batches(tiny_tmpfs):
    store = ResultStore(tiny_tmpfs / "results.duckdb")
    committed = []
    with pytest.raises(StoreError) as err:
        for batch in range(1000):
            rows = [_prediction(batch * 50 + i, "y" * 2000 + str(batch * 50 + i)) for i in range(50)]
            store.write_predictions({"predictions": rows})
            committed += [(r["example_id"], r["prediction"]) for r in rows]
    message = str(err.value)
    assert str(store.path) in message and ENOSPC_TEXT in message, message
    assert f"filesystem {tiny_tmpfs}: " in message and "rollback" not in message
    assert committed, "the disk was full before the first batch"
    assert _predictions(ResultStore(store.path, read_only=True)) == sorted(committed)


# --------------------------------------------------------------------------- the Prefect API


def test_startup_timeout_default_suits_a_loaded_machine(monkeypatch):
    from semoe.flows.api import STARTUP_TIMEOUT_ENV, ApiError, startup_timeout_s

    monkeypatch.delenv(STARTUP_TIMEOUT_ENV, raising=False)
    assert startup_timeout_s() == 120
    monkeypatch.setenv(STARTUP_TIMEOUT_ENV, "45")
    assert startup_timeout_s() == 45
    monkeypatch.setenv(STARTUP_TIMEOUT_ENV, "soon")
    with pytest.raises(ApiError, match="PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS='soon'"):
        startup_timeout_s()


class _SlowServer:
    """Stands in for Prefect's server: ``start`` returns once the test releases it."""

    def __init__(self) -> None:
        self.starting, self.release, self.stopped = threading.Event(), threading.Event(), False

    def start(self, timeout: int) -> None:
        self.starting.set()
        assert self.release.wait(timeout)

    def stop(self) -> None:
        self.stopped = True
        self.release.set()


def test_the_first_work_runs_while_the_server_starts():
    from semoe.flows.api import _start_without_sigint

    server, seen = _SlowServer(), []

    def while_starting() -> None:
        assert server.starting.wait(10)
        seen.append(("working", server.release.is_set()))
        server.release.set()

    _start_without_sigint(server, 10, while_starting)
    assert seen == [("working", False)]  # it ran before the server was up, and start() then returned
    assert not server.stopped


def test_failed_first_work_stops_the_starting_server_and_raises_its_error():
    from semoe.flows.api import _start_without_sigint

    server = _SlowServer()

    def while_starting() -> None:
        raise ValueError("model file missing")

    with pytest.raises(ValueError, match="model file missing"):
        _start_without_sigint(server, 10, while_starting)
    assert server.stopped


class _UpServer:
    """Stands in for Prefect's server class: up at once, its process a sleeping child."""

    api_url = "http://127.0.0.1:9/api"

    def __init__(self) -> None:
        self.server_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def start(self, timeout: int) -> None:
        pass

    def stop(self) -> None:
        self.server_process.kill()
        self.server_process.wait()


def test_flows_on_the_temporary_api_send_no_heartbeats(monkeypatch):
    from prefect.server.api import server as prefect_server
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from semoe.flows.api import prefect_api

    monkeypatch.setattr(prefect_server, "SubprocessASGIServer", _UpServer)
    # no session API (semoe starts its own), heartbeats on as by Prefect's default
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 180}, restore_defaults={PREFECT_API_URL}):
        with prefect_api() as api:
            assert PREFECT_API_URL.value() == _UpServer.api_url and api.pid is not None
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None
        assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == 180


def _semoe(args: list[str], **env) -> subprocess.Popen:
    """`semoe ARGS` in its own session (so a test can Ctrl-C its whole process group, as a
    terminal does), on a temporary Prefect API of its own, with Prefect's default settings."""
    environ = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL" and k not in QUIET_SETTINGS}
    environ.update(OMP_NUM_THREADS="1", SEMOE_PROGRESS_EVERY_S="0", **env)  # a progress line per commit
    return subprocess.Popen(
        [sys.executable, "-m", "semoe", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environ,
        start_new_session=True,
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _group_alive(pgid)


def test_api_that_cannot_start_gives_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "no-api",
                "synthetic": {"seed": 1, "n_entities": 8, "n_questions": 2},
                "model": {"spec": "dummy"},  # no embedded model to convert while the server fails
                "methods": ["no-retrieval"],
                "store": {"path": str(tmp_path / "results.duckdb")},
                "cache": {"root": str(tmp_path / "cache")},
            }
        )
    )
    proc = _semoe(["run", str(config)], PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert out.count("semoe: error: ") == 1 and "Traceback" not in out, out
    assert "semoe: error: the temporary Prefect API server did not start within 0 s" in out
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in out
    assert _wait_group_gone(proc.pid), "the server was left running"


N_QUESTIONS = 100  # one per commit: far more than can commit between the signal and the stop


def _slow_run_config(tmp_path) -> Path:
    """The dummy model answering one question per commit, enough of them to interrupt."""
    config = tmp_path / "slow.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "interrupt-test",
                "synthetic": {"seed": 7, "n_entities": 30, "n_questions": N_QUESTIONS},
                "model": {"spec": "dummy"},
                "generation": {"max_new_tokens": 6, "batch_size": 1, "few_shot": 1},
                "methods": ["no-retrieval"],
                "store": {"path": str(tmp_path / "results.duckdb"), "write_every": 1},
                "cache": {"root": str(tmp_path / "cache")},
            }
        )
    )
    return config


def _until_committed(proc: subprocess.Popen, lines: list[str]) -> int:
    """Read output until the first committed chunk; returns the API server's pid."""
    import psutil

    for line in proc.stdout:
        lines.append(line)
        if " answers (" in line and "answers/s" in line:  # "run 3f9c: 1/40 answers (2.1 answers/s, ETA …)"
            servers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "uvicorn" in c.cmdline()]
            assert len(servers) == 1, "".join(lines)
            return servers[0].pid
    pytest.fail("the run ended before its first commit:\n" + "".join(lines))


@pytest.mark.long  # its own `semoe run` and API server: ~25 s
def test_ctrl_c_ends_fast_with_exit_130_and_says_what_was_kept(tmp_path):
    proc = _semoe(["run", str(_slow_run_config(tmp_path))])
    lines: list[str] = []
    try:
        _until_committed(proc, lines)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        out, _ = proc.communicate(timeout=120)  # a hang guard, not a speed limit
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines.append(out)
    text = "".join(lines)
    assert proc.returncode == 130, text
    assert "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    store = ResultStore(tmp_path / "results.duckdb", read_only=True)
    (run,) = store.query("select run_id, status from runs")
    kept = store.query("select count(*) as n from predictions")[0]["n"]
    assert 1 <= kept < N_QUESTIONS  # it stopped at the next safe point, not at the end of the run
    assert last == (
        f"semoe: interrupted: run {run['run_id']} stopped; its {kept} committed answers are kept in "
        f"{tmp_path / 'results.duckdb'}: rerun the same command to resume"
    )
    assert run["status"] == "failed"
    assert _wait_group_gone(proc.pid), "the Prefect server outlived semoe"


@pytest.mark.long  # its own `semoe run` and API server: ~25 s
def test_dead_api_fails_fast_with_one_line(tmp_path):
    proc = _semoe(["run", str(_slow_run_config(tmp_path))])
    lines: list[str] = []
    try:
        server = _until_committed(proc, lines)
        os.kill(server, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)  # a hang guard, not a speed limit
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(lines) + out
    assert proc.returncode == 2, text
    assert text.count("semoe: error: ") == 1, text
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"semoe: error: the temporary Prefect API server (pid {server}, "), last
    assert "exited with code -9 during the run" in last and "rerun the same command to resume" in last
    kept = ResultStore(tmp_path / "results.duckdb", read_only=True).query("select count(*) as n from predictions")
    assert 1 <= kept[0]["n"] < N_QUESTIONS  # the death was noticed at once, not at the end of the run


@pytest.fixture()
def default_sigint():
    """Python's own Ctrl-C handler for the test: whatever ran earlier in this process (an xdist
    worker, a library starting subprocesses) may have left SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_inside_a_flow_run_is_raised_only_at_safe_points(monkeypatch, default_sigint):
    """A Ctrl-C during Prefect's bookkeeping is held to the next safe point (a commit, the
    start of a task body, or the fallback delay); inside a task body, or a second one, at once."""
    from semoe.tasks import interrupts

    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread

    monkeypatch.setattr(interrupts, "FALLBACK_S", 60.0)
    with interrupts.deferred_interrupts():
        ctrl_c()  # in "bookkeeping": recorded, not raised
        assert interrupts.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    body_ran = []

    @interrupts.interruptible
    def body():
        body_ran.append(1)
        ctrl_c()
        body_ran.append(2)

    with interrupts.deferred_interrupts():
        assert not interrupts.requested()  # each block starts clean
        with pytest.raises(KeyboardInterrupt):
            body()  # inside a task body: raised at once
        assert body_ran == [1]
        with pytest.raises(KeyboardInterrupt):
            body()  # recorded before the body: raised as it starts
        assert body_ran == [1]
    with interrupts.deferred_interrupts():
        ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()  # a second Ctrl-C is never held

    monkeypatch.setattr(interrupts, "FALLBACK_S", 0.2)
    with interrupts.deferred_interrupts(), pytest.raises(KeyboardInterrupt):
        ctrl_c()
        time.sleep(5)  # no safe point comes: the fallback raises
    with pytest.raises(KeyboardInterrupt):
        ctrl_c()  # outside a flow run nothing is held
    interrupts.check()  # and nothing recorded in a past block is raised
    assert interrupts.interruptible(lambda: "ran")() == "ran"
