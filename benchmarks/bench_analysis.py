"""What the analysis costs when a run is scored: the per-method means alone (SQL, what scoring
cost before intervals), ``ResultStore.compute_metrics`` (means and bootstrap intervals, overall
and per question type) and the report's paired comparisons (every pair of methods).

    .venv/bin/python benchmarks/bench_analysis.py --questions 1000 --methods 7
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_timing_args, compare, print_table  # noqa: E402

from semoe.reporting import paired_comparisons  # noqa: E402
from semoe.storage.results import AGGREGATES, ResultStore  # noqa: E402

TYPES = ("bridge", "comparison", "compositional", "inference")


def fill(store: ResultStore, questions: int, methods: int, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for m in range(methods):
        em = rng.random(questions) < 0.2 + 0.05 * m
        retrieved = rng.random(questions) < 0.7
        recall = rng.random(questions).round(2)
        for q in range(questions):
            rows.append(
                {
                    "run_id": "bench",
                    "dataset": "d",
                    "example_id": f"q{q:06d}",
                    "method": f"method-{m}",
                    "question_type": TYPES[q % len(TYPES)],
                    "em": float(em[q]),
                    "f1": float(em[q]) or float(rng.random() * 0.5),
                    "recall": float(recall[q]) if retrieved[q] else None,
                    "recall_all": float(recall[q]) if retrieved[q] else 0.0,
                    "retrieval_count": int(retrieved[q]),
                    "latency_s": 0.1,
                }
            )
    store.start_run("bench", "bench", "h", "v", "{}")
    store.write_predictions({"predictions": rows})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=1000)
    ap.add_argument("--methods", type=int, default=7)
    add_timing_args(ap, threads=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "bench.duckdb")
        fill(store, args.questions, args.methods)
        means = f"SELECT dataset, method, {AGGREGATES} FROM predictions WHERE run_id = 'bench' GROUP BY ALL"
        timings, _ = compare(
            {
                "means only (SQL)": lambda: store.query(means),
                "compute_metrics (+ intervals)": lambda: store.compute_metrics("bench"),
                "paired comparisons": lambda: paired_comparisons(store, "bench"),
            },
            args.repeats,
        )
    pairs = args.methods * (args.methods - 1) // 2
    print_table(
        f"{args.methods} methods x {args.questions} questions, {len(TYPES)} types, {pairs} pairs",
        timings,
        "means only (SQL)",
    )


if __name__ == "__main__":
    main()
