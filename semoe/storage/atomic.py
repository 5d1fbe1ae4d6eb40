"""Atomic file writes: a reader, or a run killed mid-write, finds the file at its path whole
(the new content or the previous one) or absent, never half written.

The content goes to a temporary file beside the target (same directory, so same filesystem),
is fsynced, then renamed over the target with ``os.replace``, which POSIX and Windows make
atomic; the directory is fsynced after it so the rename survives a crash. On any error the
temporary file is removed and the target is left as it was. Each write has its own temporary
name (pid and random suffix), so two writers of one file never write into each other's.

Index builds that swap a whole directory are another operation (``retrieval/backends``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` for a writer that writes files itself
    (``savefig``, DuckDB ``COPY``): once the block returns, the file the writer left there is
    fsynced and renamed to ``path``. If the block raises (or the writer left no file), the
    temporary file is removed, ``path`` is untouched and the error propagates.

    The temporary name is hidden: ``.<name>.<pid>.<hex>.tmp``; a process killed before the
    rename leaves it behind, never a partial ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically (``atomic_path``); returns the
    path. The file gets the usual permissions (0o666 less the umask), as ``open`` would give.
    OSError (e.g. a missing or read-only directory) with ``path`` left as it was."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(payload)
    return Path(path)


def _fsync_directory(directory: Path) -> None:
    """Persist a rename in ``directory``. Best effort: some platforms and filesystems cannot
    open or fsync a directory (Windows, some network mounts); the file itself is complete."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
