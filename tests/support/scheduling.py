"""Work units of the xdist workers (tests/README.md): the tests of one module that share a
module-scoped fixture run on one worker, so the fixture is built once; every other test is a
unit of its own. Longest units start first.

pytest-xdist's own ``--dist loadgroup`` reads an ``xdist_group`` mark from a suffix it appends
to each node id on the worker; since pytest 9.2 node ids are structured and the suffix is lost,
so every test was scheduled alone (pytest-dev/pytest-xdist#1386). Here each worker writes the
units it collected to a file the controller's scheduler reads (``UNITS_ENV``): no node id is
changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

UNITS_ENV = "SEMOE_TEST_UNITS"  # the file: {node id: [unit, slow]}, written by the workers


def record_units(items, path: Path) -> None:
    """Write each item's unit (its module when it uses a module-, class- or package-scoped
    fixture, else its own node id) and whether it is marked ``slow`` to ``path``. Every worker
    collects the same items, so writing the same file twice is harmless; it is replaced whole."""
    units = {
        item.nodeid: [item.nodeid.split("::")[0] if uses_module_fixture(item) else item.nodeid, is_slow(item)]
        for item in items
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(units), encoding="utf-8")
    os.replace(tmp, path)


def uses_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info else ()
    return any(d.scope in ("module", "class", "package") for fixturedefs in defs for d in fixturedefs)


def is_slow(item) -> bool:
    return item.get_closest_marker("slow") is not None


class UnitScheduling(LoadScopeScheduling):
    """xdist's scope scheduling over the units of ``record_units``: a unit goes whole to one
    worker, units of more tests first (xdist's order), and among equal sizes those holding a
    ``slow`` test first, so that no long test starts at the end of the run."""

    def __init__(self, config, log=None):
        super().__init__(config, log)
        self._units: dict[str, list] | None = None

    def _recorded(self) -> dict[str, list]:
        if self._units is None:
            self._units = json.loads(Path(os.environ[UNITS_ENV]).read_text(encoding="utf-8"))
        return self._units

    def add_node_collection(self, node, collection) -> None:
        # Slow units first, stably (every node's collection is ordered alike, so they still compare equal).
        slow = {unit for unit, is_slow_test in self._recorded().values() if is_slow_test}
        super().add_node_collection(node, sorted(collection, key=lambda nodeid: self._split_scope(nodeid) not in slow))

    def _split_scope(self, nodeid: str) -> str:
        return self._recorded().get(nodeid, [nodeid])[0]
