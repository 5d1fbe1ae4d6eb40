"""Atomic writes (``semoe.storage.atomic``): the target holds the whole new content or what it
held before, never part of a write; the temporary file goes away on failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from semoe.storage.atomic import atomic_path, write_atomic


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_atomic_writes_bytes_and_text_and_replaces_the_target(tmp_path):
    target = tmp_path / "report.md"
    assert write_atomic(target, b"\x00first") == target
    assert target.read_bytes() == b"\x00first"
    write_atomic(target, "second: τ, ΔW")  # text as UTF-8
    assert target.read_bytes() == "second: τ, ΔW".encode()
    assert _listing(tmp_path) == ["report.md"]  # no temporary file left


def test_written_file_has_the_permissions_open_would_give(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    write_atomic(tmp_path / "atomic", b"x")
    assert (tmp_path / "atomic").stat().st_mode == plain.stat().st_mode


def test_a_writer_failing_mid_write_leaves_the_previous_target_and_no_temporary_file(tmp_path):
    target = tmp_path / "heatmap.png"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="disk gone"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("disk gone")
    assert target.read_bytes() == b"previous"
    assert _listing(tmp_path) == ["heatmap.png"]

    fresh = tmp_path / "fresh.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(fresh) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not fresh.exists() and _listing(tmp_path) == ["heatmap.png"]


def test_a_failed_rename_or_fsync_leaves_the_target_intact(tmp_path, monkeypatch):
    occupied = tmp_path / "manifest.json"
    occupied.mkdir()
    (occupied / "keep").write_text("inside")
    with pytest.raises(OSError):  # os.replace cannot put a file over a non-empty directory
        write_atomic(occupied, "{}")
    assert (occupied / "keep").read_text() == "inside"
    assert _listing(tmp_path) == ["manifest.json"]

    target = tmp_path / "report.html"
    target.write_text("old")

    def failing_fsync(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="fsync failed"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert _listing(tmp_path) == ["manifest.json", "report.html"]


def test_a_writer_that_wrote_nothing_is_an_error_and_changes_nothing(tmp_path):
    target = tmp_path / "t.parquet"
    target.write_text("old")
    with pytest.raises(FileNotFoundError):
        with atomic_path(target):
            pass
    assert target.read_text() == "old" and _listing(tmp_path) == ["t.parquet"]


def test_each_write_has_its_own_hidden_temporary_name_beside_the_target(tmp_path):
    target = tmp_path / "a.txt"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        assert first.parent == second.parent == tmp_path
        assert first.name.startswith(".a.txt.") and first.name.endswith(".tmp")
        first.write_text("one")
        second.write_text("two")
    assert target.read_text() == "one"  # the outer block renamed last; both writes whole
    assert _listing(tmp_path) == ["a.txt"]


def test_a_process_killed_mid_write_never_leaves_a_partial_target(tmp_path):
    """SIGKILL between writing and renaming: the target keeps its previous content (the
    hidden temporary file stays behind, as the module says)."""
    target = tmp_path / "report.md"
    target.write_text("previous report")
    script = textwrap.dedent(
        f"""
        import os, signal
        from semoe.storage.atomic import atomic_path

        with atomic_path({str(target)!r}) as tmp:
            with open(tmp, "w") as f:
                f.write("half of the new rep")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert target.read_text() == "previous report"
    (left,) = [n for n in _listing(tmp_path) if n != "report.md"]
    assert left.startswith(".report.md.") and left.endswith(".tmp")
