"""Questions/s of batched heterogeneous-expert generation: semoe's per-row LoRA against
peft's own mixed-adapter batches and a merge → generate → unmerge loop per question.

Each question is a synthetic-encyclopedia question with ``--experts`` random LoRA experts
(peft-style init: A uniform ±1/sqrt(in), B small Gaussian, so the model still writes
sensible text) on gate/up/down_proj of every layer; in ``--mode combine`` (default) its
gold passage, cut to a random number of sentences, is in the prompt too, in ``prag`` it is
not. All paths answer the same questions greedily with the same experts:

* ``merge loop``: the question's experts merged into the weights, batch 1 (the baseline);
* ``peft mixed-adapter batch``: each question's experts as one peft adapter (their sum,
  ``combine_experts``, as PRAG's ``cat`` combination), a batch generated with
  ``generate(..., adapter_names=[...])``; adding and deleting the adapters is timed too;
* ``semoe per-row LoRA``: ``generate_with_experts`` (one bmm per target Linear per step).

Timing (``_common``): process CPU time beside wall time, 1 torch thread, a short warm-up of
every path, ``--repeats`` interleaved rounds, best round each. The script prints the
ratios, and how many answers are identical to the merge loop's (batched float arithmetic
may flip a near-tied greedy choice now and then).

On a CPU, prefill is compute-bound and costs the same per token batched or not, so the
speed-up grows as prompts get shorter relative to the answer (``prag`` > ``combine``).

    python benchmarks/bench_expert_inference.py --questions 16 --batch-size 16
    python benchmarks/bench_expert_inference.py --mode prag --model /path/to/hf-model-dir
"""

from __future__ import annotations

import argparse
import copy
import random
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from _common import Clock, add_timing_args, apply_threads, compare, load_average, print_table, ratio

from semoe.config import SyntheticConfig
from semoe.data.encyclopedia import build_encyclopedia
from semoe.experts.format import LoraExpert
from semoe.experts.inference import combine_experts, generate_with_experts, merged, mode_inputs
from semoe.generation.lm import ChatLM
from semoe.generation.prompts import build_messages
from semoe.models.loading import load_model

TARGETS = ("gate_proj", "up_proj", "down_proj")


def random_expert(model, name: str, rank: int, alpha: float, b_std: float, gen: torch.Generator) -> LoraExpert:
    weights = {}
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and path.rsplit(".", 1)[-1] in TARGETS:
            bound = module.in_features**-0.5
            a = (torch.rand(rank, module.in_features, generator=gen) * 2 - 1) * bound
            b = torch.randn(module.out_features, rank, generator=gen) * b_std
            weights[path] = (a, b)
    return LoraExpert(passage_id=name, rank=rank, alpha=alpha, weights=weights)


def make_conversations(n: int, seed: int, mode: str) -> list[list[dict]]:
    """Questions with (mode permitting) their first gold passage in context, cut after a
    random number of sentences so that prompt lengths vary (about 100-250 tokens with
    SmolLM2's template)."""
    enc = build_encyclopedia(SyntheticConfig(seed=seed, n_entities=60, n_questions=n))
    by_id = {p.id: p for p in enc.passages}
    rng = random.Random(seed)
    conversations = []
    for q in enc.questions:
        passage = by_id[q.gold_passage_ids[0]]
        sentences = passage.text.split(". ")
        text = ". ".join(sentences[: rng.randint(1, len(sentences))])
        passages, _ = mode_inputs(mode, [replace(passage, text=text)], [])
        conversations.append(build_messages(q.question, passages))
    return conversations


class MixedAdapterModel:
    """What ChatLM needs of a model (parameters, config, generate), generating through peft's
    mixed-adapter batches: row i of the next batch uses adapter ``names[i]``."""

    def __init__(self, peft_model):
        self.peft = peft_model
        self.config = peft_model.config
        self.names: list[str] = []

    def parameters(self):
        return self.peft.parameters()

    def generate(self, **kwargs):
        return self.peft.generate(**kwargs, adapter_names=self.names)


def peft_copy(model):
    """A peft-wrapped copy of ``model`` (the original stays a plain model for the other paths)
    holding a zero placeholder adapter, so the questions' adapters can come and go."""
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():  # peft calls a transformers property deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=1, target_modules=list(TARGETS)), "placeholder")
    return wrapped.eval()  # peft refuses adapter_names in training mode


def peft_generate(
    mixed: MixedAdapterModel, lm: ChatLM, conversations, experts, max_new_tokens, batch_size, setup: Clock | None = None
):
    """Load each question's experts as one adapter, generate in mixed-adapter batches, delete
    them; ``setup`` adds up the time spent loading and deleting adapters."""
    setup = setup or Clock()
    peft_model, names = mixed.peft, []
    with setup:
        add_adapters(peft_model, experts, names)

    def on_batch(idx):
        mixed.names = [names[i] for i in idx]

    try:
        return lm.generate(conversations, max_new_tokens, batch_size=batch_size, on_batch=on_batch)
    finally:
        with setup:
            for name in names:
                peft_model.delete_adapter(name)


def add_adapters(peft_model, experts, names: list[str]) -> None:
    """Question q's experts, summed (``combine_experts``), as adapter ``q{q}``; names appended."""
    from peft import LoraConfig

    for q, ex in enumerate(experts):
        c, name = combine_experts(ex), f"q{q}"
        peft_model.add_adapter(
            name, LoraConfig(r=c.rank, lora_alpha=c.alpha, target_modules=list(TARGETS), init_lora_weights=False)
        )
        with torch.no_grad():
            for path, (a, b) in c.weights.items():
                layer = peft_model.base_model.model.get_submodule(path)
                layer.lora_A[name].weight.copy_(a)
                layer.lora_B[name].weight.copy_(b)
        names.append(name)
    peft_model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="embedded alias, model directory or hub id")
    ap.add_argument("--cache", default="~/.cache/semoe")
    ap.add_argument("--mode", choices=["combine", "prag"], default="combine", help="passages in the prompt or not")
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--experts", type=int, default=3, help="experts per question")
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=32.0, help="PRAG: lora_alpha 32 at rank 2")
    ap.add_argument("--b-std", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    add_timing_args(ap)
    args = ap.parse_args()
    threads = apply_threads(args.threads)

    t0 = time.perf_counter()
    model, tok = load_model(args.model, str(Path(args.cache).expanduser()))
    lm = ChatLM(model, tok)
    mixed = MixedAdapterModel(peft_copy(model))
    peft_lm = ChatLM(mixed, tok)
    gen = torch.Generator().manual_seed(args.seed)
    conversations = make_conversations(args.questions, args.seed, args.mode)
    experts = [
        [random_expert(model, f"q{q}-e{k}", args.rank, args.alpha, args.b_std, gen) for k in range(args.experts)]
        for q in range(len(conversations))
    ]
    lengths = [len(tok(lm.render(c), add_special_tokens=False).input_ids) for c in conversations]
    n, new = len(conversations), args.max_new_tokens
    regime = (
        f"{args.mode}: {n} questions, prompts {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / n:.0f}), "
        f"{args.experts} experts x rank {args.rank} per question, {new} new tokens, batch {args.batch_size}"
    )
    print(
        f"{args.model} on {lm.device} ({threads} threads), loaded in {time.perf_counter() - t0:.1f} s; {regime} "
        f"on {'/'.join(TARGETS)}; {load_average()}",
        flush=True,
    )

    def merge_loop(convs=conversations, exps=experts, tokens=new):
        answers = []
        for conv, ex in zip(convs, exps):
            with merged(model, ex):
                answers.extend(lm.generate([conv], tokens, batch_size=1))
        return answers

    variants = {
        "merge loop (batch 1)": merge_loop,
        "peft mixed-adapter batch": lambda: peft_generate(
            mixed, peft_lm, conversations, experts, new, args.batch_size, peft_setup
        ),
        "semoe per-row LoRA": lambda: generate_with_experts(lm, conversations, experts, new, args.batch_size),
    }
    warm = (conversations[:2], experts[:2], 2)  # first-call allocations and kernel selection
    warmups = {
        "merge loop (batch 1)": lambda: merge_loop(*warm),
        "peft mixed-adapter batch": lambda: peft_generate(mixed, peft_lm, *warm, args.batch_size),
        "semoe per-row LoRA": lambda: generate_with_experts(lm, *warm, args.batch_size),
    }

    def progress(r, timings):
        print(
            f"  round {r + 1}: "
            + ", ".join(f"{k} {t.wall[-1]:.1f}s wall / {t.cpu[-1]:.1f}s cpu" for k, t in timings.items()),
            flush=True,
        )

    peft_setup = Clock()
    timings, answers = compare(variants, args.repeats, warmups, on_round=progress)
    base = answers["merge loop (batch 1)"]
    same = {name: f"{sum(a.text == b.text for a, b in zip(base, out))}/{n}" for name, out in answers.items()}
    qps = {name: f"{n / t.best_wall:.2f}" for name, t in timings.items()}
    print_table(
        regime,
        timings,
        "merge loop (batch 1)",
        speedup=True,
        extra={"questions/s (wall)": qps, "identical answers": same},
    )
    print(
        "  "
        + ratio(timings, "peft mixed-adapter batch", "semoe per-row LoRA")
        + "  (semoe's speed-up over peft's mixed-adapter batches)"
    )
    print(
        f"  peft: loading and deleting the adapters took {peft_setup.cpu / args.repeats:.2f} s cpu "
        f"({peft_setup.wall / args.repeats:.2f} s wall) per round"
    )
    for name, out in answers.items():
        for i, (a, b) in enumerate(zip(base, out)):
            if a.text != b.text:
                print(f"  q{i}: merged {a.text!r} | {name} {b.text!r}")


if __name__ == "__main__":
    main()
