"""Indexing throughput of a DPR-format corpus (``psgs_w100.tsv``) through the real path:
``dpr-tsv`` reader → checked passage stream → tantivy build (``semoe.indexing.build_index``).

The file is generated once per (rows, seed) and kept in ``--dir``: ``id \\t text \\t title``
with a header, every text quoted as in DPR's file (``""`` for a quote inside), ~100 words of a
Zipf vocabulary per passage (~600 bytes a row, as psgs_w100.tsv: 13 GB / 21M rows).

Each measurement runs in a fresh subprocess, which reports its wall time, process CPU time
(all threads: tantivy indexes on its own threads) and peak RSS. Two regimes are measured:
``read`` (the checked passage stream only) and ``index`` (the full build), so the share of
time spent reading shows. ``--baseline-src DIR`` runs the same measurements on another source
tree (e.g. a worktree of the base commit) interleaved with this one, and prints the ratios.

    python benchmarks/bench_dpr_index.py --rows 200000
    python benchmarks/bench_dpr_index.py --rows 2000000 --baseline-src /path/to/base/worktree
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SRC = HERE.parents[1]


def generate(path: Path, rows: int, seed: int) -> None:
    """A DPR-format TSV of ``rows`` passages; about 5% of texts hold a quoted word."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    # shorter words are the commoner ones, as in English
    vocab = sorted({"".join(rng.choice(letters, size=rng.integers(4, 16))) for _ in range(60_000)}, key=len)[:50_000]
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    tmp = path.with_suffix(".partial")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        f.write("id\ttext\ttitle\n")
        chunk = 20_000
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            words = rng.choice(len(vocab), size=(n, 103), p=weights)
            quoted = rng.random(n) < 0.05
            lines = []
            for i in range(n):
                w = [vocab[j] for j in words[i]]
                if quoted[i]:
                    w[8] = f'""{w[8]}""'
                title = " ".join(w[:3]).title()
                text = " ".join(w[3:])
                lines.append(f'{start + i + 1}\t"{title} {text}"\t{title}\n')
            f.write("".join(lines))
    tmp.rename(path)


def worker(mode: str, path: str, limit: int | None) -> dict:
    """One measurement in this process: read the stream, or build the index."""
    import resource

    from semoe.config import SemoeConfig

    with tempfile.TemporaryDirectory(prefix="semoe-bench-dpr-") as cache:
        cfg = SemoeConfig.model_validate(
            {"corpus": {"format": "dpr-tsv", "path": path, "limit": limit}, "cache": {"root": cache}}
        )
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if mode == "read":
            from semoe.data import DataContext
            from semoe.data.loading import iter_passages

            n = sum(1 for _ in iter_passages(cfg.corpus, DataContext.of(cfg)))
        else:
            from semoe.indexing import build_index

            n = build_index(cfg).passages
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"passages": n, "wall": wall, "cpu": cpu, "rss_mb": rss_kb / 1024}


def measure(src: Path, mode: str, path: Path, limit: int | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(HERE), "--worker", mode, "--file", str(path)]
    if limit:
        cmd += ["--limit", str(limit)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where generated files are kept (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="read,index", help="read, index or read,index (default)")
    ap.add_argument("--baseline-src", type=Path, help="another source tree to measure alongside (its ratio is printed)")
    ap.add_argument("--worker", choices=["read", "index"], help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.file, args.limit)))
        return

    path = Path(args.dir) / f"dpr-bench-{args.rows}-s{args.seed}.tsv"
    if not path.exists():
        t0 = time.perf_counter()
        generate(path, args.rows, args.seed)
        print(f"generated {path} ({path.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t0:.0f} s")
    print(
        f"{path}: {args.rows:,} rows, {path.stat().st_size / 1e6:,.0f} MB; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start; {args.repeats} repeats (median shown), "
        "each in a fresh process"
    )
    sides = {"this": SRC} | ({"baseline": args.baseline_src.resolve()} if args.baseline_src else {})
    modes = [m.strip() for m in args.modes.split(",")]
    for src in sides.values():  # warm-up: imports, page cache
        measure(src, "index", path, limit=min(args.rows, 20_000))
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):
        for mode in modes:
            for side, src in sides.items():  # interleaved, so both sides see the same load
                results.setdefault((side, mode), []).append(measure(src, mode, path))

    print(
        f"\n{'side':<9} {'regime':<6} {'wall s':>8} {'cpu s':>8} {'rows/s wall':>12} {'rows/s cpu':>11} "
        f"{'cpu/wall':>8} {'peak RSS MB':>11}"
    )
    med: dict[tuple[str, str], dict] = {}
    for (side, mode), runs in results.items():
        assert all(r["passages"] == args.rows for r in runs), f"{side} {mode}: passages {[r['passages'] for r in runs]}"
        m = med[side, mode] = {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "rss_mb")}
        print(
            f"{side:<9} {mode:<6} {m['wall']:>8.1f} {m['cpu']:>8.1f} {args.rows / m['wall']:>12,.0f} "
            f"{args.rows / m['cpu']:>11,.0f} {m['cpu'] / m['wall']:>8.2f} {m['rss_mb']:>11,.0f}"
        )
    for side in sides:
        if ("read" in modes) and ("index" in modes):
            r, i = med[side, "read"], med[side, "index"]
            print(
                f"{side}: reading is {r['cpu'] / i['cpu']:.0%} of the build's CPU time, "
                f"{r['wall'] / i['wall']:.0%} of its wall time"
            )
    if "baseline" in sides:
        for mode in modes:
            b, t = med["baseline", mode], med["this", mode]
            print(
                f"{mode}: this vs baseline speed-up {b['cpu'] / t['cpu']:.2f}x by CPU time, "
                f"{b['wall'] / t['wall']:.2f}x by wall time; peak RSS {t['rss_mb']:,.0f} vs {b['rss_mb']:,.0f} MB"
            )
    if "index" in modes:
        rate = args.rows / med["this", "index"]["wall"]
        print(f"21M rows (psgs_w100.tsv) at this wall rate: {21_015_324 / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
