"""The artifact cache: one root for indexes, converted models and (later) augmentations
and experts, each under ``<root>/<kind>/<content key>``.

An entry counts only once its ``.complete`` marker exists; it is built in a temporary
sibling directory and renamed into place, so a killed build never looks finished, and
an exclusive file lock keeps two processes from building the same entry at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

MARKER = ".complete"


class CacheError(RuntimeError):
    pass


def content_key(*parts: object) -> str:
    """Stable hex key from JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class ArtifactCache:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create the artifact cache at {self.root}: {e}") from None

    def check_writable(self) -> None:
        """Fail now, not after an hour of work, when entries cannot be written here."""

        try:
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-check-"):
                pass
        except OSError as e:
            raise CacheError(f"the artifact cache at {self.root} is not writable: {e}") from None

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def is_complete(self, kind: str, key: str) -> bool:
        return (self.path(kind, key) / MARKER).is_file()

    def info(self, kind: str, key: str) -> dict:
        return json.loads((self.path(kind, key) / MARKER).read_text())

    @contextmanager
    def _lock(self, kind: str, key: str) -> Iterator[None]:
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{kind}-{key}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get_or_build(self, kind: str, key: str, build: Callable[[Path], dict | None]) -> Path:
        """Return the entry's directory, building it with ``build(tmp_dir)`` if absent.

        ``build`` writes into the directory it is given and may return metadata that is
        stored in the marker.
        """
        final = self.path(kind, key)
        if (final / MARKER).is_file():
            return final
        with self._lock(kind, key):
            if (final / MARKER).is_file():
                return final
            tmp = final.with_name(f".{key}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            started = time.time()
            try:
                meta = build(tmp) or {}
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            meta = {"kind": kind, "key": key, "seconds": round(time.time() - started, 3), **meta}
            (tmp / MARKER).write_text(json.dumps(meta, indent=2, default=str))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        return final
