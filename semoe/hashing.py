"""Short content hashes of JSON-serialisable objects (identities, index and cache keys)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(obj: Any, n: int = 16) -> str:
    """Short sha256 hex of a JSON-serialisable object (keys sorted, so order never matters)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]
