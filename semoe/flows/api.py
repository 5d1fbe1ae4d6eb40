"""The Prefect API of a CLI run (``semoe run``, ``semoe route``).

Without ``PREFECT_API_URL`` Prefect starts a temporary ("ephemeral") API server as a child
process of the first client it makes. Left to Prefect, that child shares semoe's process
group: Ctrl-C in the terminal kills it too, and Prefect's client then retries the dead API
for minutes before exiting with tracebacks. So semoe starts the temporary server itself,
before the flow (Prefect's own ``SubprocessASGIServer``, registered as its default, the way
``prefect.testing.utilities.prefect_test_harness`` does):

* from a thread that blocks SIGINT: a child inherits the signal mask of the thread that
  forks it, and keeps it across ``exec``, so a Ctrl-C reaches semoe only; semoe then reports
  the end of its flow run to a live API and stops the server (SIGTERM) on the way out;
* with a startup timeout that suits a loaded machine (``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``,
  default ``STARTUP_TIMEOUT_S`` here), failing with one line (``ApiError``) instead of a traceback;
* watched: should the server exit during the run, semoe stops the run at once instead of
  retrying a dead API (``ApiServer.died``);
* without flow-run heartbeats, which only serve a server that outlives the process;
* not waited for idly: the server takes ~7 s to start (its own process, on another core);
  ``while_starting`` does the run's first work meanwhile (the CLI's: the flows' imports and
  the embedded model's one-time conversion).

With ``PREFECT_API_URL`` set (a real server, or the test harness) semoe uses it unchanged.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

STARTUP_TIMEOUT_S = 120  # Prefect's own default (20 s) is too short for a loaded worker
# After the server died, how long semoe lets the flow unwind (store the run as failed)
# before it exits regardless: Prefect would retry the dead API for minutes, and a hard exit
# is as safe for the results as SIGKILL (every commit is atomic, a rerun resumes).
UNWIND_S = 5.0
STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

logger = logging.getLogger(__name__)


class ApiError(RuntimeError):
    """The Prefect API could not be started or stopped answering."""


class ApiServer:
    """The temporary Prefect API server semoe started (``None`` fields: none started)."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.pid: int | None = None
        self.died: int | None = None  # the server's exit code, when it exited during the run
        self._stopping = threading.Event()

    def died_message(self) -> str:
        return (
            f"the temporary Prefect API server (pid {self.pid}, {self.url}) exited with code {self.died} "
            "during the run; answers committed so far are kept: rerun the same command to resume"
        )


def startup_timeout_s() -> int:
    """``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` if the user set it, else ``STARTUP_TIMEOUT_S``."""
    value = os.environ.get(STARTUP_TIMEOUT_ENV)
    if value is None:
        return STARTUP_TIMEOUT_S
    try:
        return int(value)
    except ValueError:
        raise ApiError(f"{STARTUP_TIMEOUT_ENV}={value!r} is not a whole number of seconds") from None


@contextmanager
def prefect_api(while_starting: Callable[[], None] | None = None) -> Iterator[ApiServer]:
    """The Prefect API for a CLI run: the configured one, or a temporary server semoe owns
    for the duration of the block (see the module docstring). ``while_starting()`` runs in
    this thread before the block, while a temporary server starts; should it raise, the
    server is stopped and its error raised. Raises ``ApiError`` when the temporary server
    does not start in time."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings

    api = ApiServer()
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        if while_starting is not None:
            while_starting()
        yield api  # a configured API (or Prefect's own "no API URL" error)
        return
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.server.api.server import SubprocessASGIServer

    ensure_logging_setup()  # its "Starting temporary server on URL" line, before the flows' imports set it up
    server = SubprocessASGIServer()  # Prefect's default instance: its internal clients find it too
    timeout = startup_timeout_s()
    _start_without_sigint(server, timeout, while_starting)
    api.url, api.pid = server.api_url, server.server_process.pid
    watcher = threading.Thread(target=_watch, args=(server, api), name="semoe-api-watch", daemon=True)
    watcher.start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}), without_heartbeats():
            try:
                yield api
            finally:
                if api.died is None:
                    _drain_prefect_workers()
    finally:
        api._stopping.set()
        server.stop()
        if api.died is not None:  # skip Prefect's exit hooks: they would retry the dead API
            _exit_dead(api)


def without_heartbeats():
    """Prefect settings (a context manager) for flow runs on a temporary API: no flow-run
    heartbeats. They let a server mark the runs of a dead process crashed, but a temporary
    server dies with its process; and each flow run's end waits up to 1 s for Prefect's
    heartbeat thread (it sleeps in 1 s steps): ~1 s per flow and subflow run."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def _start_without_sigint(server, timeout: int, while_starting: Callable[[], None] | None = None) -> None:
    """``server.start(timeout)`` from a thread that blocks SIGINT (the server process inherits
    the mask); the main thread stays interruptible meanwhile and runs ``while_starting()``."""
    failure: list[BaseException] = []

    def start() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            server.start(timeout=timeout)
        except BaseException as e:  # noqa: BLE001 (re-raised in the main thread)
            failure.append(e)

    thread = threading.Thread(target=start, name="semoe-api-start", daemon=True)
    thread.start()
    try:
        if while_starting is not None:
            while_starting()
        while thread.is_alive():
            thread.join(0.2)
    except BaseException:  # Ctrl-C or a failed while_starting: do not leave the server behind
        server.stop()
        raise
    if failure:
        server.stop()
        first = str(failure[0]).splitlines()[0] if str(failure[0]) else type(failure[0]).__name__
        raise ApiError(
            f"the temporary Prefect API server did not start within {timeout} s ({first[:300]}); "
            f"on a busy machine raise {STARTUP_TIMEOUT_ENV}, or point PREFECT_API_URL at a running "
            "server (`prefect server start`)"
        ) from None


def _watch(server, api: ApiServer) -> None:
    """Stop the run as soon as the server exits on its own: interrupt the main thread (the
    flow unwinds, marks its run failed), then, should unwinding hang on the dead API, exit."""
    process = server.server_process
    while not api._stopping.wait(0.5):
        code = process.poll()
        if code is None:
            continue
        if api._stopping.is_set():
            return
        api.died = code
        # Prefect's API log worker writes "--- Error logging to API ---" and the bare exception
        # text, without a newline, for every batch it cannot send; semoe reports the dead API in
        # one line of its own instead.
        logging.raiseExceptions = False

        _thread.interrupt_main()
        time.sleep(UNWIND_S)
        _exit_dead(api)


_exit_lock = threading.Lock()


def _exit_dead(api: ApiServer) -> None:
    """One ``semoe: error:`` line, exit code 2, without Prefect's exit hooks."""
    with _exit_lock:
        sys.stdout.flush()
        # on a line of its own: a partial line of Prefect's log worker may precede it
        print(f"\nsemoe: error: {api.died_message()}", file=sys.stderr, flush=True)
        os._exit(2)


def _drain_prefect_workers() -> None:
    """Send the run's last logs and events while the server still runs (Prefect's test harness does the same)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
    except Exception as e:  # noqa: BLE001 (best effort: the results are stored already)
        logger.debug("draining Prefect's workers failed: %s", e)
