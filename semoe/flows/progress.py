"""Progress of a flow's committed work: a Prefect progress artifact and a log line per commit
with the rate and an ETA; each commit is also a safe point for Ctrl-C."""

from __future__ import annotations

import time

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from semoe.tasks import interrupts


class Progress:
    def __init__(self, description: str, sizes: list[int], unit: str):
        """``sizes``: the units (answers, passages, cells) of each planned call, in order."""
        self.description, self.sizes, self.unit = description, sizes, unit
        self.total, self.done = sum(sizes), 0
        self.t0 = time.monotonic()
        self.artifact = None

    def advance(self, index: int) -> None:
        """Call ``index`` was committed."""
        if self.artifact is None:
            self.artifact = create_progress_artifact(0.0, key="semoe-progress", description=self.description)
        self.done += self.sizes[index]
        update_progress_artifact(self.artifact, 100.0 * self.done / max(self.total, 1))
        rate = self.done / max(time.monotonic() - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate else float("nan")
        get_run_logger().info("committed %d/%d %s (%.2f/s, ETA %.0f s)", self.done, self.total, self.unit, rate, eta)
        interrupts.check()
