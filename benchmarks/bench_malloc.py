"""glibc's malloc in a model-running process: its defaults against freed memory kept for reuse
(``runner.malloc``, ``semoe.models.malloc``), on the README demo's regime: one batch of
``--rows`` prompts sharing a 292-token prefix (instructions, few-shot turns) with ~420-520
tokens each after it (three retrieved passages and the question), greedy, ``--new-tokens``
new tokens, the embedded SmolLM2-135M, float32 (``ChatLM._generate_batch``, what every
standard method runs).

``mallopt`` cannot be undone within a process, so each measurement is a process of its own:
per round, one per variant (order alternating), each loading the model, warming up on a small
batch, then timing one batch. CPU time is the process's user + system time (the page faults
this is about are system time); the minor page faults and the system time are shown beside
it. The script fails unless both variants produce the same tokens.

    python benchmarks/bench_malloc.py --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time

from _common import Timing, add_timing_args, apply_threads, print_table

VARIANTS = ("system", "reuse")
PREFIX_TOKENS = 292  # the demo's shared prefix


def measure(args) -> dict:
    """One timed batch in this process (the ``--variant`` worker)."""
    import torch

    from semoe.generation.lm import ChatLM
    from semoe.models.loading import load_model
    from semoe.models.malloc import keep_freed_memory

    if args.variant == "reuse" and not keep_freed_memory():
        raise SystemExit("mallopt is not available here (not glibc)")
    threads = apply_threads(args.threads)
    lm = ChatLM(*load_model(args.model, args.cache_root, device="cpu"))
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(200, 40000, (PREFIX_TOKENS,), generator=g).tolist()
    lengths = torch.randint(420, 520, (args.rows,), generator=g).tolist()
    rows = [prefix + torch.randint(200, 40000, (n,), generator=g).tolist() for n in lengths]
    lm._generate_batch(rows[:2], 4, None, None, True, do_sample=False)  # warm-up
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out = lm._generate_batch(rows, args.new_tokens, None, None, True, do_sample=False)
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    return {
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
        "faults": after.ru_minflt - before.ru_minflt,
        "threads": threads,
        "tokens": hashlib.sha256(json.dumps(out).encode()).hexdigest(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cache-root", default="~/.cache/semoe", help="artifact cache holding the converted model")
    ap.add_argument("--rows", type=int, default=16, help="prompts in the batch (the demo's batch size)")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one measurement, in a worker
    add_timing_args(ap)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(measure(args)))
        return
    timings = {v: Timing() for v in VARIANTS}
    samples: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.repeats):
        for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            argv = [*sys.argv[1:], "--variant", variant]
            done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"the {variant} worker failed:\n{done.stderr[-3000:]}")
            s = json.loads(done.stdout.strip().splitlines()[-1])
            samples[variant].append(s)
            timings[variant].wall.append(s["wall"])
            timings[variant].cpu.append(s["user"] + s["sys"])
    if len({s["tokens"] for v in VARIANTS for s in samples[v]}) != 1:
        raise SystemExit("the variants generated different tokens")
    best = {v: min(samples[v], key=lambda s: s["wall"]) for v in VARIANTS}
    print_table(
        f"one greedy batch of {args.rows} x ({PREFIX_TOKENS} shared + ~470) tokens, {args.new_tokens} new, "
        f"{args.model}, {best['system']['threads']} torch thread(s), a process per measurement; tokens identical",
        timings,
        "system",
        speedup=True,
        extra={
            "sys s": {v: f"{best[v]['sys']:.2f}" for v in VARIANTS},
            "page faults": {v: f"{best[v]['faults']:,}" for v in VARIANTS},
        },
    )


if __name__ == "__main__":
    main()
