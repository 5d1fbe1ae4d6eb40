"""The artifact cache across processes: two processes asking for one missing entry (two xdist
workers converting the embedded model into the user's cache, two flow runs indexing one
corpus) build it once, and neither reads a half-built entry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

# A process that asks the cache for entry "models/m", whose build writes a file, counts itself
# in `builds` and (when told) signals `started` and waits for `release` before finishing.
_ASK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from semoe.storage.artifacts import ArtifactCache

    root, hold = Path(sys.argv[1]), sys.argv[2] == "hold"

    def build(out):
        with open(root / "builds", "a") as f:
            f.write("built\\n")
        if hold:
            (root / "started").touch()
            while not (root / "release").exists():
                time.sleep(0.01)
        (out / "weights").write_text("complete")

    print("asking", flush=True)
    entry = ArtifactCache(root / "cache").get_or_build("models", "m", build)
    print((entry / "weights").read_text(), flush=True)
    """
)


def _ask(root: Path, hold: bool) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _ASK, str(root), "hold" if hold else "wait"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_two_processes_build_a_missing_entry_once(tmp_path):
    first = _ask(tmp_path, hold=True)
    while not (tmp_path / "started").exists():  # the first is inside its build, holding the lock
        assert first.poll() is None, first.communicate(timeout=60)
        time.sleep(0.01)
    second = _ask(tmp_path, hold=False)
    assert second.stdout.readline() == "asking\n"
    time.sleep(0.5)  # let the second reach the lock: not an assert, only what this test exercises
    (tmp_path / "release").touch()
    outputs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert outputs[0] == "asking\ncomplete\n" and outputs[1] == "complete\n"
    assert (tmp_path / "builds").read_text() == "built\n"
