"""This machine's speed right now: CPU and wall seconds of a fixed single-threaded workload (a
Python loop of 3M steps and 200 float32 512x512 matrix products, best of ``--repeats``).

Run it beside a timing taken on a shared or virtual machine, whose speed can drift by tens of
percent within the hour for every process alike (tests/README.md): two timings compare only
when this workload took about the same time around both.

    python benchmarks/box_speed.py
"""

from __future__ import annotations

import argparse

from _common import add_timing_args, apply_threads, compare, load_average


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_args(ap)
    args = ap.parse_args()
    apply_threads(args.threads)
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 512, generator=g), torch.randn(512, 512, generator=g)

    def workload() -> int:
        total = 0
        for i in range(3_000_000):
            total += i * i % 7
        for _ in range(200):
            a @ b
        return total

    timings, _ = compare({"workload": workload}, args.repeats)
    t = timings["workload"]
    print(f"box speed: {t.best_cpu:.3f} s of CPU, {t.best_wall:.3f} s wall (best of {args.repeats}; {load_average()})")


if __name__ == "__main__":
    main()
