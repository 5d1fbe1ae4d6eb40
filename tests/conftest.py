"""Test isolation: Prefect state and the artifact cache live in a per-process temp dir
(Prefect's cached task results would otherwise leak between sessions, and between the xdist
workers of one session, each a process that imports this file). Each process and its
subprocesses compute with one torch thread: xdist runs one worker per core (tests/README.md)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="semoe-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect")
# Before torch is imported (it reads them once); a test that sets threads itself still does.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS"] = "false"
os.environ.pop("PREFECT_API_URL", None)
# Where the xdist workers tell the controller their work units (tests.support.scheduling): set
# by the controller, which imports this file before it starts the workers; they inherit it.
os.environ.setdefault("SEMOE_TEST_UNITS", str(_SESSION_DIR / "xdist-units.json"))

from semoe.models.malloc import keep_freed_memory  # noqa: E402

# Tests run models in this process: with the allocator semoe gives its model processes
# (runner.malloc: reuse), which also spares them a page fault per 4 KiB of every activation.
keep_freed_memory()

import pytest  # noqa: E402

from tests.support.prefect_api import API_ENV, QUIET_SETTINGS, SharedApi, shared_api_url, use_api  # noqa: E402

os.environ.update(QUIET_SETTINGS)  # before Prefect reads its settings

# Fixtures that need the embedded model's tokenizer or weights: their tests are in the real-model
# lane (fixtures built on them, such as demo_answers, count too: fixturenames is the closure).
REAL_MODEL_FIXTURES = {"tiny_lm_dir", "model_cache_root"}
# The demo questions the embedded model answers once per session (demo_answers): on the first 16
# single-retrieval's EM margin is 2.5 times what test_real_model asserts (see there).
DEMO_QUESTIONS = 16


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_model)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        from tests.support.scheduling import UNITS_ENV, order_and_record_units

        order_and_record_units(items, Path(os.environ[UNITS_ENV]))


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` (addopts): tests sharing a module-scoped fixture are one work unit."""
    if config.getvalue("dist") == "loadgroup":
        from tests.support.scheduling import UnitScheduling

        return UnitScheduling(config, log)
    return None


CAPTURE_FIXTURES = {"capsys", "capsysbinary", "capfd", "capfdbinary"}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Prefect binds its console log handler to sys.stderr when it first sets up logging. Set up
    # first inside a test's capsys, that stream is closed after the test and every later flow's
    # log line fails; set up here, before capsys starts, it binds to pytest's session capture.
    if CAPTURE_FIXTURES & set(item.fixturenames):
        from prefect.logging.configuration import ensure_logging_setup

        ensure_logging_setup()


_SHARED_API = pytest.StashKey[SharedApi]()


def pytest_configure(config):
    # The xdist controller serves one Prefect API to all its workers (tests.support.prefect_api);
    # a serial session (`-n 0`) starts its own in the fixture, as does a nested one.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    os.environ.pop(API_ENV, None)
    if getattr(config.option, "numprocesses", None):
        config.stash[_SHARED_API] = SharedApi(_SESSION_DIR / "prefect-api")
        os.environ[API_ENV] = str(_SESSION_DIR / "prefect-api")


def pytest_unconfigure(config):
    # After the workers ended (xdist tears them down at session finish), also on failure or Ctrl-C.
    api = config.stash.get(_SHARED_API, None)
    if api is not None:
        api.close()


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API for the flow tests: the controller's under xdist, else one of
    this process, shut down cleanly at session end; without flow-run heartbeats, as on the
    CLI's own temporary API (``semoe.flows.api.without_heartbeats``)."""
    from semoe.flows.api import without_heartbeats

    no_heartbeats = without_heartbeats()
    if API_ENV in os.environ:
        with use_api(shared_api_url(Path(os.environ[API_ENV]))), no_heartbeats:
            yield
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), no_heartbeats:
        yield


@pytest.fixture(scope="session")
def model_cache_root() -> str:
    """Where the converted embedded model is cached. Shared with the user's cache by
    default (converting the GGUF takes ~10 s of CPU); SEMOE_TEST_MODEL_CACHE overrides."""
    return os.environ.get("SEMOE_TEST_MODEL_CACHE", str(Path("~/.cache/semoe").expanduser()))


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> str:
    """A tiny random Llama with a real tokenizer: generation logic without real weights. Built
    once per session, shared by the xdist workers (``session_artifact``)."""
    from tests.support.helpers import make_tiny_lm, session_artifact

    return str(session_artifact(tmp_path_factory, "tiny-llama", make_tiny_lm))


@pytest.fixture(scope="session")
def demo_answers(tmp_path_factory, model_cache_root):
    """The README demo's first ``DEMO_QUESTIONS`` questions answered by the embedded SmolLM2
    with no-retrieval and single-retrieval, once per session (``tests.support.helpers.answer_demo``):
    the tests that judge these answers share one generation."""
    from tests.support.helpers import answer_demo

    return answer_demo(tmp_path_factory.mktemp("demo-index"), model_cache_root, DEMO_QUESTIONS)
