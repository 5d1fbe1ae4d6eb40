"""Progress lines of long stages: done/total, rate and ETA from an injected clock, at a bounded
frequency (``semoe.progress.RateMeter``), and the flows' committed-work progress built on it."""

from __future__ import annotations

import pytest

from semoe.progress import RateMeter, format_eta


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta_from_the_clock_at_a_bounded_frequency():
    clock, lines = FakeClock(), []
    meter = RateMeter("run abc", 100, "answers", lines.append, every_s=30.0, clock=clock)
    clock.now += 10
    assert meter.advance(16) is None  # 10 s since the start: held back
    clock.now += 22  # 32 s, 20 answers: 0.625 answers/s, 80 left → 128 s
    assert meter.advance(4) == "run abc: 20/100 answers (0.625 answers/s, ETA 0:02:08)"
    clock.now += 29
    assert meter.advance(40) is None  # 29 s since the last line
    clock.now += 1  # 62 s, 60 answers: 0.968 answers/s, 40 left → 41.3 s
    assert meter.advance(0) == "run abc: 60/100 answers (0.968 answers/s, ETA 0:00:41)"
    clock.now += 2  # completion is always shown, once
    assert meter.advance(40) == "run abc: 100/100 answers (1.56 answers/s, ETA 0:00:00)"
    assert meter.advance(0) is None
    assert lines == [
        "run abc: 20/100 answers (0.625 answers/s, ETA 0:02:08)",
        "run abc: 60/100 answers (0.968 answers/s, ETA 0:00:41)",
        "run abc: 100/100 answers (1.56 answers/s, ETA 0:00:00)",
    ]


def test_bytes_custom_text_and_unknown_eta():
    clock, lines = FakeClock(), []
    meter = RateMeter("tantivy index", 4 * 2**30, "B", lines.append, every_s=0.0, clock=clock)
    clock.now += 64
    line = meter.update(2**30, "1,000 passages, 25.0% of psgs.tsv")
    assert line == "tantivy index: 1,000 passages, 25.0% of psgs.tsv (16.0MB/s, ETA 0:03:12)"
    assert meter.line(clock.now) == "tantivy index: 1.00GB/4.00GB (16.0MB/s, ETA 0:03:12)"
    stalled = RateMeter("cells", 3, "cells", lines.append, every_s=0.0, clock=FakeClock())
    assert stalled.update(0) == "cells: 0/3 cells (0 cells/s, ETA unknown)"  # no time passed: no rate yet
    open_ended = RateMeter("stream", None, "passages", lines.append, every_s=0.0, clock=clock)
    clock.now += 2
    assert open_ended.update(10) == "stream: 10 passages (5 passages/s, ETA unknown)"
    assert format_eta(3725.4) == "1:02:05" and format_eta(float("nan")) == "unknown"


def test_flow_progress_logs_committed_work_with_rate_and_eta(monkeypatch):
    """The flows' Progress (answers, passage experts, routing cells): the artifact moves on every
    commit, the run log gets a RateMeter line at most every LOG_EVERY_S and at the end."""
    import semoe.flows.progress as progress

    logged, percents = [], []

    class Logger:
        def info(self, line):
            logged.append(line)

    monkeypatch.setattr(progress, "get_run_logger", Logger)
    monkeypatch.setattr(progress, "create_progress_artifact", lambda *a, **k: "artifact")
    monkeypatch.setattr(progress, "update_progress_artifact", lambda artifact, pct: percents.append(pct))
    monkeypatch.setattr(progress.interrupts, "check", lambda: None)
    clock = FakeClock()
    p = progress.Progress("routing run r1", [1, 1, 1, 1], "cells", clock=clock)
    for i, seconds in enumerate((5, 40, 5, 30)):
        clock.now += seconds
        p.advance(i)
    assert percents == [25.0, 50.0, 75.0, 100.0]
    assert logged == [
        "routing run r1: 2/4 cells (0.0444 cells/s, ETA 0:00:45)",
        "routing run r1: 4/4 cells (0.05 cells/s, ETA 0:00:00)",
    ]


@pytest.mark.parametrize("every_s", [0.0, 60.0])
def test_meter_never_repeats_the_completed_line(every_s):
    lines = []
    meter = RateMeter("x", 2, "steps", lines.append, every_s=every_s, clock=FakeClock())
    meter.update(2)
    meter.update(2)
    assert len(lines) == 1 and lines[0].startswith("x: 2/2 steps")
