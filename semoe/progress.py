"""Progress of a long stage: done/total, rate and ETA as one log line at a bounded frequency.

Every long stage (indexing by bytes of the file, augmentation, expert training, answering,
routing cells, small MoE LM training) reports through :class:`RateMeter`, so each prints the
same kind of line, e.g. ``run 3f9c: 16/100 answers (0.53 answers/s, ETA 0:02:38)``. The
clock is injected so that rate and ETA are testable without waiting; byte sizes are
formatted by tqdm (``tqdm.format_sizeof``), whose bars the stages show on a terminal.
"""

from __future__ import annotations

import time
from typing import Callable


def format_eta(seconds: float) -> str:
    """``h:mm:ss``, or ``unknown`` for NaN (no rate yet)."""
    if seconds != seconds:
        return "unknown"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class RateMeter:
    """Counts ``unit`` s done out of ``total`` and emits a line through ``emit`` when ``every_s``
    seconds of ``clock`` have passed since the last one (or the start), and once when the stage
    completes (``done >= total``). Rate is units per second since the meter started; ETA is
    the remaining units at that rate. ``unit="B"`` formats counts and rate as byte sizes."""

    def __init__(
        self,
        label: str,
        total: float | None,
        unit: str,
        emit: Callable[[str], None],
        *,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.unit, self.emit, self.every_s, self.clock = (
            label,
            total,
            unit,
            emit,
            every_s,
            clock,
        )
        self.done = 0.0
        self.started = self._last = clock()
        self._completed = False

    def rate(self, now: float) -> float:
        """Units per second since the start (0 before any time has passed)."""
        elapsed = now - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float) -> float:
        """Seconds left at the current rate; NaN while the rate is unknown or without a total."""
        if self.total is None:
            return float("nan")
        left = max(self.total - self.done, 0.0)
        if not left:
            return 0.0
        rate = self.rate(now)
        return left / rate if rate else float("nan")

    def _amount(self, n: float) -> str:
        if self.unit == "B":
            from tqdm import tqdm

            return tqdm.format_sizeof(n, "B", 1024)
        return f"{n:,.0f}"

    def line(self, now: float, what: str | None = None) -> str:
        """``label: what (rate, ETA h:mm:ss)``; ``what`` defaults to ``done/total unit``."""
        if what is None:
            total = "" if self.total is None else f"/{self._amount(self.total)}"
            what = f"{self._amount(self.done)}{total}" + ("" if self.unit == "B" else f" {self.unit}")
        rate = self.rate(now)
        per_s = f"{self._amount(rate)}/s" if self.unit == "B" else f"{rate:.3g} {self.unit}/s"
        return f"{self.label}: {what} ({per_s}, ETA {format_eta(self.eta(now))})"

    def update(self, done: float, what: str | None = None) -> str | None:
        """``done`` units so far; the line emitted, or None when it was held back."""
        self.done = done
        now = self.clock()
        complete = self.total is not None and done >= self.total
        if complete and self._completed:
            return None
        if not complete and now - self._last < self.every_s:
            return None
        self._last, self._completed = now, complete
        text = self.line(now, what)
        self.emit(text)
        return text

    def advance(self, n: float = 1, what: str | None = None) -> str | None:
        """``n`` more units done (see :meth:`update`)."""
        return self.update(self.done + n, what)
