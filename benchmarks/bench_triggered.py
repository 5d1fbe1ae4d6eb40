"""Time per question of triggered retrieval (DRAGIN, FLARE) against single retrieval, in two
regimes: short answers (the pipeline's default generation settings) and chain of thought
(DRAGIN's own setting: CoT prompts, 128 new tokens).

Real SmolLM2-135M-Instruct, the synthetic encyclopedia in a tantivy index, the same N
questions for every method. Timing (``_common``): process CPU time beside wall time, 1 torch
thread, a warm-up of every method on one question, ``--repeats`` interleaved rounds, best
round each; the CPU-time ratio is the one to trust on a shared machine. The DRAGIN paper
measured its method at 4.8x single retrieval; the target here is <= 2x.

    python benchmarks/bench_triggered.py --questions 10
    python benchmarks/bench_triggered.py --regimes cot --methods single-retrieval,dragin --set trigger.max_retrievals=2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import add_timing_args, apply_threads, compare, load_average, print_table

from semoe.config import MethodSpec, apply_overrides, config_from_dict
from semoe.data.encyclopedia import build_encyclopedia
from semoe.generation import METHODS
from semoe.generation.base import MethodContext, build_method
from semoe.generation.lm import ChatLM
from semoe.metrics import exact_match
from semoe.retrieval import RETRIEVERS

# regime -> (config overrides, description)
REGIMES = {
    "short": ([], "short answers (generation defaults)"),
    "cot": (
        ["generation.chain_of_thought=true", "generation.max_new_tokens=128"],
        "chain of thought, 128 new tokens (DRAGIN's setting)",
    ),
}


def summary(outs, questions) -> dict:
    n = len(questions)
    return {
        "retr/q": f"{sum(len(o.retrievals) for o in outs) / n:.2f}",
        "gen tok/q": f"{sum(o.generated_tokens for o in outs) / n:.1f}",
        "prefill/q": f"{sum(o.extra.get('prefill_tokens', o.prompt_tokens) for o in outs) / n:.0f}",
        "EM": f"{sum(exact_match(o.prediction, q.answers) for o, q in zip(outs, questions)) / n:.2f}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--methods", default="single-retrieval,dragin,token")
    ap.add_argument("--regimes", default="short,cot", help=f"comma-separated, of {', '.join(REGIMES)}")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. trigger.max_retrievals=2"
    )
    add_timing_args(ap)
    args = ap.parse_args()

    from semoe.models.loading import load_model

    threads = apply_threads(args.threads)
    methods = args.methods.split(",")
    for m in methods:
        METHODS.get(m)
    regimes = args.regimes.split(",")
    for r in regimes:
        if r not in REGIMES:
            ap.error(f"unknown regime {r!r}; expected some of {', '.join(REGIMES)}")
    configs = {
        r: config_from_dict(
            apply_overrides({"synthetic": {"n_questions": args.questions}}, REGIMES[r][0] + args.set), "--set"
        )
        for r in regimes
    }
    cfg = configs[regimes[0]]
    enc = build_encyclopedia(cfg.synthetic)
    questions = enc.questions[: args.questions]
    with tempfile.TemporaryDirectory() as tmp:
        retriever = RETRIEVERS.get("tantivy")(cfg.retrieval, Path(tmp) / "index", "bench-triggered")
        retriever.build(enc.passages, total=len(enc.passages))
        model, tokenizer = load_model(
            cfg.model.spec, str(Path(cfg.cache.root).expanduser()), cfg.model.dtype, cfg.model.device
        )
        print(
            f"{len(questions)} questions, {len(enc.passages)} passages, torch threads {threads}, {load_average()}",
            flush=True,
        )
        for r in regimes:
            cfg_r = configs[r]
            lm = ChatLM(model, tokenizer, cfg_r.generation.system_prompt)
            ctx = MethodContext(generation=cfg_r.generation, lm=lm, retrieval=cfg_r.retrieval, retriever=retriever)

            def variant(m, qs=questions, ctx=ctx, cfg_r=cfg_r):
                method = build_method(MethodSpec(name=m), cfg_r)
                return lambda: method.run(qs, ctx)

            def progress(rep, timings, r=r):
                print(
                    f"  {r} round {rep + 1}: "
                    + ", ".join(
                        f"{m} {t.wall[-1] / len(questions):.2f} s/q wall, {t.cpu[-1] / len(questions):.2f} s/q cpu"
                        for m, t in timings.items()
                    ),
                    flush=True,
                )

            timings, outs = compare(
                {m: variant(m) for m in methods},
                args.repeats,
                {m: variant(m, questions[:1]) for m in methods},
                progress,
            )
            timings = {m: t.scaled(1 / len(questions)) for m, t in timings.items()}
            stats = {m: summary(outs[m], questions) for m in methods}
            columns = {c: {m: stats[m][c] for m in methods} for c in next(iter(stats.values()))}
            print_table(
                f"{REGIMES[r][1]}; seconds per question",
                timings,
                "single-retrieval" if "single-retrieval" in methods else methods[0],
                extra=columns,
            )


if __name__ == "__main__":
    main()
