"""The xdist session's one Prefect API (tests.support.prefect_api): the controller starts it
when a worker first asks, once for all workers, tells them why it did not start, and stops it
at close. Here a stand-in replaces Prefect's server; the real one, and the workers' settings
pointing at it, are what every flow test of an xdist session runs on."""

from __future__ import annotations

import threading

import pytest

from tests.support.prefect_api import SharedApi, shared_api_url


class FakeServer:
    def __init__(self, fail: str | None = None):
        self.fail = fail
        self.started = self.stopped = 0

    def start(self, folder):
        assert folder.is_dir()
        if self.fail:
            raise RuntimeError(self.fail)
        self.started += 1
        return f"http://127.0.0.1:{8000 + self.started}/api", self.stop

    def stop(self):
        self.stopped += 1


def test_no_request_starts_no_server(tmp_path):
    server = FakeServer()
    SharedApi(tmp_path / "api", server.start).close()
    assert (server.started, server.stopped) == (0, 0)


def test_every_worker_gets_the_one_server_started_on_the_first_request(tmp_path):
    server = FakeServer()
    api = SharedApi(tmp_path / "api", server.start)
    urls: list[str] = []
    workers = [threading.Thread(target=lambda: urls.append(shared_api_url(tmp_path / "api"))) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert urls == ["http://127.0.0.1:8001/api"] * 2 and server.started == 1
    assert shared_api_url(tmp_path / "api") == urls[0]  # a later request: the same server
    api.close()
    assert (server.started, server.stopped) == (1, 1)


def test_a_server_that_cannot_start_fails_the_workers_with_why(tmp_path):
    server = FakeServer(fail="Timed out while attempting to connect to ephemeral Prefect API server.")
    api = SharedApi(tmp_path / "api", server.start)
    with pytest.raises(RuntimeError, match="Prefect API did not start: Timed out while attempting"):
        shared_api_url(tmp_path / "api")
    api.close()
    assert server.stopped == 0
