"""Questions/s of batched heterogeneous-expert generation against a merge → generate →
unmerge loop per question.

Each question is a synthetic-encyclopedia question with ``--experts`` random LoRA experts
(peft-style init: A uniform ±1/sqrt(in), B small Gaussian, so the model still writes
sensible text) on gate/up/down_proj of every layer; in ``--mode combine`` (default) its
gold passage, cut to a random number of sentences, is in the prompt too, in ``prag`` it is
not. Both paths answer the same questions greedily; the script prints both rates, their
ratio and how many answers are identical (batched float arithmetic may flip a near-tied
greedy choice now and then).

On a CPU, prefill is compute-bound and costs the same per token batched or not, so the
speed-up grows as prompts get shorter relative to the answer (``prag`` > ``combine``).

    python benchmarks/bench_expert_inference.py --questions 16 --batch-size 16
    python benchmarks/bench_expert_inference.py --model /path/to/hf-model-dir
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from semoe.config import SyntheticConfig
from semoe.data.encyclopedia import build_encyclopedia
from semoe.experts.format import LoraExpert
from semoe.experts.inference import generate_with_experts, merged, mode_inputs
from semoe.generation.lm import ChatLM
from semoe.generation.prompts import build_messages
from semoe.models.loading import load_model

TARGETS = ("gate_proj", "up_proj", "down_proj")


def random_expert(model, name: str, rank: int, alpha: float, b_std: float, gen: torch.Generator) -> LoraExpert:
    weights = {}
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and path.rsplit(".", 1)[-1] in TARGETS:
            bound = module.in_features ** -0.5
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
    ap.add_argument("--repeats", type=int, default=1, help="alternate both paths this often, keep each one's best")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); on a shared "
                    "machine 1 avoids the stalls of oversubscribed OpenMP threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model, tok = load_model(args.model, str(Path(args.cache).expanduser()))
    lm = ChatLM(model, tok)
    gen = torch.Generator().manual_seed(args.seed)
    conversations = make_conversations(args.questions, args.seed, args.mode)
    experts = [
        [random_expert(model, f"q{q}-e{k}", args.rank, args.alpha, args.b_std, gen) for k in range(args.experts)]
        for q in range(len(conversations))
    ]
    lengths = [len(tok(lm.render(c), add_special_tokens=False).input_ids) for c in conversations]
    n = len(conversations)
    print(f"{args.model} on {lm.device} ({torch.get_num_threads()} threads), loaded in "
          f"{time.perf_counter() - t0:.1f} s; {n} questions ({args.mode}), prompts {min(lengths)}-{max(lengths)} "
          f"tokens (mean {sum(lengths) / n:.0f}), {args.experts} experts x rank {args.rank} on {'/'.join(TARGETS)}, "
          f"max_new_tokens {args.max_new_tokens}", flush=True)

    with merged(model, experts[0]):  # warm-up: first-call allocations and kernel selection
        lm.generate(conversations[:1], 2, batch_size=1)

    merge_s = hetero_s = merge_only_s = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        baseline, generate_s = [], 0.0
        for conv, ex in zip(conversations, experts):
            with merged(model, ex):
                t1 = time.perf_counter()
                baseline.extend(lm.generate([conv], args.max_new_tokens, batch_size=1))
                generate_s += time.perf_counter() - t1
        elapsed = time.perf_counter() - t0
        if elapsed < merge_s:
            merge_s, merge_only_s = elapsed, elapsed - generate_s
        t0 = time.perf_counter()
        batched = generate_with_experts(lm, conversations, experts, args.max_new_tokens, args.batch_size)
        hetero_s = min(hetero_s, time.perf_counter() - t0)

    same = sum(a.text == b.text for a, b in zip(baseline, batched))
    print(f"merge -> generate -> unmerge per question: {n / merge_s:.2f} questions/s ({merge_s:.1f} s, "
          f"{merge_only_s:.1f} s of it merging and restoring)", flush=True)
    print(f"heterogeneous batched (batch {args.batch_size}):   {n / hetero_s:.2f} questions/s ({hetero_s:.1f} s)")
    print(f"speed-up {merge_s / hetero_s:.2f}x; identical answers {same}/{n}")
    for i, (a, b) in enumerate(zip(baseline, batched)):
        if a.text != b.text:
            print(f"  q{i}: merged {a.text!r} | batched {b.text!r}")


if __name__ == "__main__":
    main()
