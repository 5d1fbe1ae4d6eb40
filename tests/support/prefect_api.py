"""One temporary Prefect API for a whole xdist session (tests/README.md, "What is set up once").

The controller (the process without ``PYTEST_XDIST_WORKER``) owns the server: ``SharedApi``
waits in a thread until a worker first asks for it (a request file in the folder named by
``API_ENV``), starts Prefect's temporary server (``SubprocessASGIServer``; its SQLite database
lies in the controller's ``PREFECT_HOME``, a temp dir of the session) and writes its URL there,
or why it did not start. A worker's ``prefect_api`` fixture waits for that URL and points its
Prefect settings at it (``use_api``). A session without flow tests starts no server; the
controller stops it after its workers have ended (``pytest_unconfigure``), also when the session
failed or was interrupted. Only the settings of a worker name the URL, never its environment:
a subprocess that should start its own server (``flows/test_interrupts.py``) still does.
"""

from __future__ import annotations

import functools
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator
from unittest import mock

from semoe.storage.atomic import write_atomic

API_ENV = "SEMOE_TEST_PREFECT_API"  # the folder: set by the controller, inherited by its workers
# Prefect work that no test reads, switched off for the session's processes (conftest.py) and
# the servers they start: flows' log lines sent to the API, and the server's event services
# (automations, the event store, task runs recorded from events; flow runs, artifacts,
# blocks and concurrency limits are plain API calls). Measured on three dummy-model pipelines
# (44 task runs): the log lines ~0.7 s of a flow process's CPU per 20 task runs and ~4 s of
# the server's in all, the event services ~7 s of the server's. Only
# `flows/test_interrupts.py`'s `semoe run` subprocesses keep Prefect's defaults: their own
# server, and its failures, are what they test.
QUIET_SETTINGS = {
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED": "false",
    "PREFECT_SERVER_EVENTS_STREAM_OUT_ENABLED": "false",
}
START_TIMEOUT_S = 120  # a loaded machine: Prefect's own default (20 s) is too short
_REQUEST, _URL, _ERROR = "request", "url", "error"


def start_prefect_server(folder: Path) -> tuple[str, Callable[[], None]]:
    """Prefect's temporary API server, started from a thread that blocks SIGINT as `semoe run`
    does (Ctrl-C stops the session, whose unconfigure then stops the server, instead of killing
    it under the workers): its URL and how to stop it. Its output goes to ``folder/server.log``:
    the request errors it logs (a GPU limit created twice: "already exists") are no failure,
    and a server inside a worker wrote them into that worker's captured output, not the terminal."""
    import prefect.server.api.server as prefect_server

    from semoe.flows.api import _start_without_sigint

    server = prefect_server.SubprocessASGIServer()
    with (folder / "server.log").open("ab") as log:
        # Prefect's Popen only (its module's `subprocess`), not the process's: no other child is redirected.
        popen = functools.partial(subprocess.Popen, stdout=log, stderr=subprocess.STDOUT)
        with mock.patch.object(prefect_server, "subprocess", SimpleNamespace(Popen=popen)):
            _start_without_sigint(server, START_TIMEOUT_S)
    return server.api_url, server.stop


class SharedApi:
    """On the controller: serves the session's Prefect API from the first request until
    ``close`` (``start``: ``start_prefect_server`` or a stand-in)."""

    def __init__(self, folder: Path, start: Callable[[Path], tuple[str, Callable[[], None]]] = start_prefect_server):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._start = start
        self._stop: Callable[[], None] | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="semoe-tests-prefect-api", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not (self.folder / _REQUEST).exists():
            if self._closing.wait(0.2):
                return
        try:
            url, self._stop = self._start(self.folder)
        except Exception as e:  # noqa: BLE001 (told to the workers, which fail their tests with it)
            write_atomic(self.folder / _ERROR, str(e) or type(e).__name__)
            return
        write_atomic(self.folder / _URL, url)

    def close(self) -> None:
        """Stop the server (a start in progress first finishes, at most ``START_TIMEOUT_S``)."""
        self._closing.set()
        self._thread.join()
        if self._stop is not None:
            self._stop()


def shared_api_url(folder: Path) -> str:
    """On a worker: ask the controller for the session's API and wait for its URL. Raises
    ``RuntimeError`` when the server did not start."""
    (folder / _REQUEST).touch()
    deadline = time.monotonic() + START_TIMEOUT_S + 30  # a guard against a hang only
    while time.monotonic() < deadline:
        if (folder / _URL).exists():
            return (folder / _URL).read_text(encoding="utf-8")
        if (folder / _ERROR).exists():
            raise RuntimeError(f"the session's Prefect API did not start: {(folder / _ERROR).read_text()}")
        time.sleep(0.1)
    raise RuntimeError(f"no Prefect API from the pytest controller within {START_TIMEOUT_S + 30} s ({folder})")


@contextmanager
def use_api(url: str) -> Iterator[None]:
    """This process's flows, clients and Prefect's background workers use the API at ``url``;
    the last logs and events are sent on exit, while the server still runs. As
    ``prefect_test_harness`` does, the process-global settings change too: the log and event
    workers' threads do not see a context variable set here."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from semoe.flows.api import _drain_prefect_workers

    with temporary_settings(updates={PREFECT_API_URL: url}), _temporary_global_settings_context(get_settings_context()):
        yield
        _drain_prefect_workers()
