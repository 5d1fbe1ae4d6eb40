"""Progress of a flow's committed work: a Prefect progress artifact per commit and a
:class:`semoe.progress.RateMeter` line (done/total, rate, ETA) in the run log at most every
``LOG_EVERY_S`` seconds (``SEMOE_PROGRESS_EVERY_S`` in the environment; 0: every commit)
and at the end; each commit is also a safe point for Ctrl-C."""

from __future__ import annotations

import os
import time
from typing import Callable

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from semoe.progress import RateMeter
from semoe.tasks import interrupts


class Progress:
    LOG_EVERY_S = float(os.environ.get("SEMOE_PROGRESS_EVERY_S", "30"))

    def __init__(self, description: str, sizes: list[int], unit: str, clock: Callable[[], float] = time.monotonic):
        """``sizes``: the units (answers, passages, cells) of each planned call, in order."""
        self.description, self.sizes = description, sizes
        # "run 3f9c: 16/100 answers (0.53 answers/s, ETA 0:02:38)", counting committed units
        self.meter = RateMeter(description, sum(sizes), unit, self._log, every_s=self.LOG_EVERY_S, clock=clock)
        self.artifact = None

    @staticmethod
    def _log(line: str) -> None:
        get_run_logger().info(line)

    def advance(self, index: int) -> None:
        """Call ``index`` was committed."""
        if self.artifact is None:
            self.artifact = create_progress_artifact(0.0, key="semoe-progress", description=self.description)
        self.meter.advance(self.sizes[index])
        update_progress_artifact(self.artifact, 100.0 * self.meter.done / max(self.meter.total, 1))
        interrupts.check()
