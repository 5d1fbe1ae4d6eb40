"""Decode steps of finished rows and the KV cache (issue 13): the README demo's questions
answered by ``no-retrieval`` and ``single-retrieval`` three ways, in one process:

* ``rows-stay``: as before issue 13: transformers' own decoding loop (``GenerationMixin._sample``),
  every row decoded until the batch's longest row stops, no answer stop, transformers'
  ``DynamicCache`` (the whole cache concatenated at every step);
* ``concat``: the current loop (a row leaves the batch once finished: EOS, its answer sentence
  complete) over transformers' ``DynamicCache``;
* ``rows-leave``: the current core: that loop over the cache that appends in place
  (``semoe.generation.kv_cache``).

Prints process CPU time beside wall time per side and method (median of ``--repeats`` after a
warm-up of each side), the ratios of ``rows-leave`` to each baseline, the decode row-steps
(rows run per one-token forward, summed) and whether the extracted answers are identical.
Trust the CPU ratio on a busy machine.

    python benchmarks/bench_generation.py --questions 16 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rows_stay(model, input_ids, logits_processor, stopping_criteria, generation_config, on_rows=None, **kwargs):
    """The pre-issue-13 loop behind ``ChatLM``'s decoding interface: transformers' sampling loop
    (rows stay until the last one stops), each row cut after its EOS as the old code did."""
    from transformers.generation.utils import GenerationMixin

    from semoe.generation.lm import _RowStop

    criteria = type(stopping_criteria)(c for c in stopping_criteria if not isinstance(c, _RowStop))
    out = GenerationMixin._sample(model, input_ids, logits_processor, criteria, generation_config, **kwargs)
    eos = set(generation_config._eos_token_tensor.view(-1).tolist())
    rows = []
    for new in out[:, input_ids.shape[1] :].tolist():
        rows.append(new[: next((j + 1 for j, t in enumerate(new) if t in eos), len(new))])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on a shared box)")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    import torch

    import semoe.generation.lm as lm_module
    import semoe.generation.methods.standard as standard
    from semoe.config import MethodSpec, load_config
    from semoe.data import DataContext
    from semoe.data.loading import load_examples
    from semoe.evaluation.answer_chunks import method_context
    from semoe.generation.base import build_method
    from semoe.indexing import build_index, open_retriever

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"model.dtype={args.dtype}"])
    retriever = open_retriever(cfg, build_index(cfg).corpus_key)
    examples = load_examples(cfg.datasets[0], DataContext.of(cfg))[: args.questions]
    ctx = method_context(cfg, cfg.datasets[0].display_name, retriever)
    steps: list[int] = []
    ctx.lm.model.register_forward_pre_hook(
        lambda _m, _a, kw: steps.append(kw["input_ids"].shape[0]) if kw["input_ids"].shape[1] == 1 else None,
        with_kwargs=True,
    )
    from transformers import DynamicCache

    current = lm_module._decode_dropping_finished, standard.answer_complete, lm_module.in_place_cache

    def concat_cache(config, reserve):
        return DynamicCache(config=config)

    sides = {
        "rows-stay": (rows_stay, lambda reply: False, concat_cache),
        "concat": (current[0], current[1], concat_cache),
        "rows-leave": current,
    }

    def run(side: str, method: str):
        lm_module._decode_dropping_finished, standard.answer_complete, lm_module.in_place_cache = sides[side]
        steps.clear()
        c0, w0 = time.process_time(), time.perf_counter()
        outs = build_method(MethodSpec(name=method), cfg).run(examples, ctx)
        return time.process_time() - c0, time.perf_counter() - w0, sum(steps), [o.prediction for o in outs]

    load0 = os.getloadavg()[0]
    print(
        f"regime: {len(examples)} questions of {Path(args.config).name}, {cfg.model.spec} {args.dtype} on CPU, "
        f"batch {cfg.generation.batch_size}, {cfg.generation.max_new_tokens} new tokens, "
        f"torch threads {torch.get_num_threads()}, repeats {args.repeats} (median) after a warm-up per side"
    )
    for method in ("no-retrieval", "single-retrieval"):
        results = {}
        for side in sides:
            run(side, method)  # warm-up
        for side in sides:
            reps = [run(side, method) for _ in range(args.repeats)]
            results[side] = (
                statistics.median(r[0] for r in reps),
                statistics.median(r[1] for r in reps),
                reps[0][2],
                reps[0][3],
            )
        c1, w1, s1, p1 = results["rows-leave"]
        for side, (c, w, s, _) in results.items():
            print(f"{method:17s} {side:10s} cpu {c:7.2f} s  wall {w:7.2f} s  decode row-steps {s}")
        for side in ("rows-stay", "concat"):
            c0, w0, s0, p0 = results[side]
            print(
                f"{method:17s} rows-leave/{side:9s} cpu {c1 / c0:5.2f}  wall {w1 / w0:5.2f}  "
                f"row-steps {s1 / s0:.2f}  answers identical: {p0 == p1}"
            )
    lm_module._decode_dropping_finished, standard.answer_complete, lm_module.in_place_cache = current
    print(f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
