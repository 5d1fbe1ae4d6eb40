"""The suite's own xdist work units (tests.support.scheduling): tests sharing a module-scoped
fixture run on one worker, which builds the fixture once, and slow and long tests collected last
start first on their workers. A pytest or pytest-xdist upgrade that breaks the grouping fails here
instead of silently building such fixtures on every worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

from tests.support.helpers import ROOT

SHARED = """
import os
import pytest

@pytest.fixture(scope="module")
def built():
    return os.environ["PYTEST_XDIST_WORKER"]

@pytest.mark.parametrize("i", range(6))
def test_shared(built, i):
    assert built == os.environ["PYTEST_XDIST_WORKER"]
"""

ALONE = """
import pytest

@pytest.mark.parametrize("i", range(6))
def test_alone(i):
    pass
"""

SLOW = """
import pytest

@pytest.mark.slow
def test_slow():
    pass
"""

LONG = SLOW.replace("slow", "long")


def test_tests_sharing_a_module_fixture_run_on_one_worker(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_collection_modifyitems, pytest_xdist_make_scheduler  # noqa: F401\n"
    )
    (tmp_path / "test_shared.py").write_text(textwrap.dedent(SHARED))
    (tmp_path / "test_alone.py").write_text(textwrap.dedent(ALONE))
    (tmp_path / "test_slow.py").write_text(textwrap.dedent(SLOW))
    (tmp_path / "test_long.py").write_text(textwrap.dedent(LONG))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: runs for long\n    long: too\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SEMOE_TEST_UNITS", None)  # this run's controller sets its own
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "-v"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ran = re.findall(r"\[(gw\d)\] .*PASSED (test_\w+\.py)::", done.stdout)
    assert len(ran) == 14, done.stdout
    assert len({worker for worker, module in ran if module == "test_shared.py"}) == 1, done.stdout
    for worker in {w for w, _ in ran}:  # on each worker, slow and long tests before the short ones
        modules = [m for w, m in ran if w == worker and m != "test_shared.py"]
        early = [i for i, m in enumerate(modules) if m in ("test_slow.py", "test_long.py")]
        assert all(i < len(early) for i in early), done.stdout
