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

from semoe.storage.atomic import write_atomic

UNITS_ENV = "SEMOE_TEST_UNITS"  # the file: {node id: unit}, written by the workers


EARLY_MARKERS = ("slow", "long")  # tests that run for tens of seconds: their units start first


def order_and_record_units(items, path: Path) -> None:
    """On a worker: put the units holding a test marked with one of ``EARLY_MARKERS`` first
    (stably, in place: the worker runs its items by their index in this order, and the
    controller schedules units in it), and
    write each item's unit to ``path`` (its module when it uses a module-, class- or
    package-scoped fixture, else its own node id). Every worker collects the same items: each
    writes the same file, replaced whole."""
    units = {item.nodeid: item.nodeid.split("::")[0] if uses_module_fixture(item) else item.nodeid for item in items}
    early = {units[item.nodeid] for item in items if any(item.get_closest_marker(m) for m in EARLY_MARKERS)}
    items.sort(key=lambda item: units[item.nodeid] not in early)
    write_atomic(path, json.dumps(units))


def uses_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info else ()
    return any(d.scope in ("module", "class", "package") for fixturedefs in defs for d in fixturedefs)


class UnitScheduling(LoadScopeScheduling):
    """xdist's scope scheduling over the units of ``order_and_record_units``: a unit goes whole
    to one worker; units of more tests first (xdist's order), then in collection order, where
    units with a slow or long test come first, so that no long test starts at the end of the run."""

    def __init__(self, config, log=None):
        super().__init__(config, log)
        self._units: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._units is None:  # first called once every worker has collected (and written the file)
            self._units = json.loads(Path(os.environ[UNITS_ENV]).read_text(encoding="utf-8"))
        return self._units.get(nodeid, nodeid)
