"""The results store's short-lived connections: ``ResultStore.connect`` (the file attached to
the process's one DuckDB instance, ``semoe.storage.connections``) against a DuckDB instance
per connection (``duckdb.connect(path)``, what the store did before), each followed by the
query the pipeline runs most (a run's status). The store is the README demo's schema, with
``--runs`` runs in it. The script fails unless both sides read the same rows.

    python benchmarks/bench_store_connect.py --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import add_timing_args, compare, print_table

SQL = "SELECT status FROM runs WHERE run_id = ?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=200, help="connections opened per timed round")
    ap.add_argument("--runs", type=int, default=50, help="runs stored in the benchmark's store")
    add_timing_args(ap, threads=None)
    args = ap.parse_args()

    import duckdb

    from semoe.storage.results import ResultStore

    path = Path(tempfile.mkdtemp(prefix="bench-store-")) / "semoe.duckdb"
    store = ResultStore(path)
    for i in range(args.runs):
        store.start_run(f"run-{i}", "bench", "h", "v", "{}")

    def attached() -> list:
        out = []
        for i in range(args.connections):
            with store.connect() as con:
                out.append(con.execute(SQL, [f"run-{i % args.runs}"]).fetchone())
        return out

    def instance_each() -> list:
        out = []
        for i in range(args.connections):
            con = duckdb.connect(str(path))
            out.append(con.execute(SQL, [f"run-{i % args.runs}"]).fetchone())
            con.close()
        return out

    variants = {"instance per connection": instance_each, "attached (ResultStore.connect)": attached}
    timings, results = compare(variants, args.repeats)
    if len({tuple(r) for r in results.values()}) != 1:
        raise SystemExit("the two sides read different rows")
    per = {name: t.scaled(1000 / args.connections) for name, t in timings.items()}
    print_table(
        f"{args.connections} connections, one query each", per, "instance per connection", unit="ms", speedup=True
    )


if __name__ == "__main__":
    main()
