"""Timing shared by every benchmark: process CPU time beside wall time, a warm-up of every
variant, interleaved repeats, and ratios of both clocks against a baseline.

On a machine shared with other work, wall time moves with everyone else's load; the CPU
time of this process (``time.process_time``: all its threads) hardly does, so the CPU-time
ratio is the one to trust and the wall-clock one says how loaded the machine was. Variants
run once per round, rounds interleaved, so a change of load hits all of them alike; each
variant keeps its best (smallest) wall and CPU time over the rounds.

Scripts in this folder import it as ``from _common import ...`` (Python puts the script's
folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass
class Timing:
    """Samples of one variant, seconds per run (or per whatever unit the caller divides by)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def best_wall(self) -> float:
        return min(self.wall)

    @property
    def best_cpu(self) -> float:
        return min(self.cpu)

    def scaled(self, factor: float) -> "Timing":
        """Every sample times ``factor`` (e.g. 1 / questions for seconds per question)."""
        return Timing([w * factor for w in self.wall], [c * factor for c in self.cpu])


class Clock:
    """Context manager that adds the wall and CPU seconds of each block to its totals."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> "Clock":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds) of one call."""
    with Clock() as clock:
        result = fn()
    return result, clock.wall, clock.cpu


def compare(
    variants: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmups: Mapping[str, Callable[[], Any]] | None = None,
    on_round: Callable[[int, dict[str, Timing]], None] | None = None,
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Warm up every variant (``warmups[name]`` when given, else one untimed run of it), then
    run all variants once per round for ``repeats`` rounds. Returns each variant's timings and
    its result from the last round (to check that the variants agree)."""
    for name, fn in variants.items():
        (warmups or {}).get(name, fn)()
    timings = {name: Timing() for name in variants}
    results: dict[str, Any] = {}
    for r in range(repeats):
        for name, fn in variants.items():
            results[name], wall, cpu = timed(fn)
            timings[name].wall.append(wall)
            timings[name].cpu.append(cpu)
        if on_round is not None:
            on_round(r, timings)
    return timings, results


def add_timing_args(ap: argparse.ArgumentParser, repeats: int = 3, threads: int | None = 1) -> None:
    ap.add_argument(
        "--repeats",
        type=int,
        default=repeats,
        help="timed rounds after the warm-up; each variant keeps its best wall and CPU time",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=threads,
        help="torch intra-op threads (1: steadiest on a shared machine; 0: torch's choice)",
    )


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None/0: leave torch's choice); returns the number in use."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def print_table(
    regime: str,
    timings: Mapping[str, Timing],
    baseline: str,
    *,
    unit: str = "s",
    speedup: bool = False,
    extra: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """One table: best wall and CPU time per variant and their ratios to ``baseline``.

    ``speedup``: ratios are baseline / variant (× faster), else variant / baseline (× the
    baseline's cost). ``extra``: more columns, column name -> variant -> text.
    """
    extra = extra or {}
    base = timings[baseline]
    sense = "speed-up over" if speedup else "time relative to"
    print(
        f"\n[{regime}] best of {len(base.wall)} rounds; ratios = {sense} '{baseline}' (trust 'x cpu'; {load_average()})"
    )
    width = max(28, *(len(n) + 2 for n in timings))
    head = f"{'variant':<{width}}{'wall ' + unit:>12}{'cpu ' + unit:>12}{'x wall':>8}{'x cpu':>8}"
    print(head + "".join(f"{c:>{max(len(c) + 2, 10)}}" for c in extra))
    for name, t in timings.items():
        xw = base.best_wall / t.best_wall if speedup else t.best_wall / base.best_wall
        xc = base.best_cpu / t.best_cpu if speedup else t.best_cpu / base.best_cpu
        row = f"{name:<{width}}{t.best_wall:>12.4f}{t.best_cpu:>12.4f}{xw:>8.2f}{xc:>8.2f}"
        print(row + "".join(f"{col.get(name, '-'):>{max(len(c) + 2, 10)}}" for c, col in extra.items()))


def ratio(timings: Mapping[str, Timing], num: str, den: str) -> str:
    """'wall a/b = x, cpu a/b = y' for one pair of variants (best times)."""
    a, b = timings[num], timings[den]
    return f"{num} / {den}: wall {a.best_wall / b.best_wall:.2f}x, cpu {a.best_cpu / b.best_cpu:.2f}x"
