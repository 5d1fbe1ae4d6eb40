"""Per-passage expert training speed: PRAG's peft loop (batch 1, one passage at a time)
against the batched multi-expert trainer, on the same passages with the same init, with the
gain of batching and the gain of bfloat16 reported apart.

Passages are people from the synthetic encyclopedia; their three QA pairs come from
templates over the facts behind each passage (birth year, birthplace, occupation) and the
one rewrite is the passage's sentences in reverse order, so no LLM augmentation is needed.

Trainers (each trains every passage once per round):

* ``peft loop fp32``: PRAG's recipe as it is (the baseline);
* ``peft loop, autocast bf16``: the same loop under ``torch.autocast(bfloat16)``, what a
  user would try first for speed;
* ``batched fp32``: semoe's lockstep trainer in float32 (the gain of batching alone);
* ``batched bf16``: semoe's bfloat16 recipe (bf16 Linear weights in a copy, autocast,
  float32 LoRA/optimizer/loss; its gain over ``batched fp32`` is the precision's).

Timing (``_common``): process CPU time beside wall time, 1 torch thread, a warm-up of every
trainer on one passage, ``--repeats`` interleaved rounds, best round each; the CPU-time
ratio is the one to trust on a shared machine. Afterwards one float32 evaluator scores every
trainer's experts on their passages' training sequences (the "final loss").

    python benchmarks/bench_expert_training.py --passages 8
    python benchmarks/bench_expert_training.py --model /path/to/hf-model --trainers "batched bf16"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import add_timing_args, apply_threads, compare, load_average, print_table, ratio

from semoe.config import ExpertConfig, SyntheticConfig
from semoe.data.encyclopedia import build_encyclopedia
from semoe.experts.lockstep import expert_losses, train_experts_batched
from semoe.experts.lora_init import initial_lora
from semoe.experts.peft_trainer import train_expert_peft
from semoe.experts.qa_reply import QAPair
from semoe.experts.training_data import TrainingItem, build_sequences
from semoe.models.loading import load_model


def make_items(n: int, seed: int) -> list[TrainingItem]:
    enc = build_encyclopedia(SyntheticConfig(seed=seed, n_entities=max(8, n)))
    texts = {p.id: p.text for p in enc.passages}
    items = []
    for person in enc.people[:n]:
        name, text = f"{person.name} {person.surname}", texts[person.passage_id]
        qa = [
            QAPair(f"When was {name} born?", str(person.birth_year), f"{name} was born in {person.birth_year}."),
            QAPair(f"Where was {name} born?", person.birthplace.name, f"{name} was born in {person.birthplace.name}."),
            QAPair(f"What was the occupation of {name}?", person.occupation, f"{name} was {_a(person.occupation)}."),
        ]
        items.append(TrainingItem.create(person.passage_id, text, [" ".join(reversed(text.split(". ")))], qa))
    return items


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


TRAINERS = ("peft loop fp32", "peft loop, autocast bf16", "batched fp32", "batched bf16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=8)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="embedded alias or local model directory")
    ap.add_argument("--cache", default="~/.cache/semoe", help="artifact cache (converted embedded models)")
    ap.add_argument(
        "--trainers",
        nargs="+",
        default=list(TRAINERS),
        choices=TRAINERS,
        help="trainers to run (the first one listed is the baseline of the ratios)",
    )
    ap.add_argument("--batch-passages", type=int, default=8, help="passages per lockstep batch")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="synthetic encyclopedia seed")
    add_timing_args(ap)
    args = ap.parse_args()

    threads = apply_threads(args.threads)
    model, tok = load_model(args.model, str(Path(args.cache).expanduser()), device="cpu")
    items = make_items(args.passages, args.seed)
    cfg = ExpertConfig(
        epochs=args.epochs, batch_passages=args.batch_passages, micro_batch=args.micro_batch, measure_loss=False
    )
    tokens = [len(s.ids) for it in items for s in build_sequences(tok, it, cfg)]
    regime = (
        f"{len(items)} passages, {len(tokens) / len(items):.0f} sequences of {sum(tokens) / len(tokens):.0f} "
        f"tokens each, {args.epochs} epoch(s), lockstep batch {args.batch_passages}"
    )
    print(f"model {args.model}, {regime}, torch threads {threads}, {load_average()}", flush=True)
    init = initial_lora(model, cfg)
    bf16 = cfg.model_copy(update={"compute_dtype": "bfloat16"})

    def peft_loop(chunk, autocast: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return [train_expert_peft(model, tok, it, cfg, init).expert for it in chunk]

    def batched(chunk, run_cfg):
        return [
            r.expert
            for start in range(0, len(chunk), args.batch_passages)
            for r in train_experts_batched(model, tok, chunk[start : start + args.batch_passages], run_cfg, init)
        ]

    trainers = {
        "peft loop fp32": lambda chunk: peft_loop(chunk, False),
        "peft loop, autocast bf16": lambda chunk: peft_loop(chunk, True),
        "batched fp32": lambda chunk: batched(chunk, cfg),
        "batched bf16": lambda chunk: batched(chunk, bf16),
    }
    trainers = {name: trainers[name] for name in args.trainers}

    def progress(r, timings):
        print(
            f"  round {r + 1}: "
            + ", ".join(f"{k} {t.wall[-1]:.0f}s wall / {t.cpu[-1]:.0f}s cpu" for k, t in timings.items()),
            flush=True,
        )

    timings, experts = compare(
        {name: (lambda fn=fn: fn(items)) for name, fn in trainers.items()},
        args.repeats,
        {name: (lambda fn=fn: fn(items[:1])) for name, fn in trainers.items()},
        progress,
    )
    timings = {name: t.scaled(1 / len(items)) for name, t in timings.items()}

    scorer = cfg.model_copy(update={"compute_dtype": "float32"})
    before = sum(expert_losses(model, tok, items, [init] * len(items), scorer)) / len(items)
    final = {name: sum(expert_losses(model, tok, items, experts[name], scorer)) / len(items) for name in trainers}
    base = args.trainers[0]
    print(f"\nmean loss before training (init): {before:.4f}")
    print_table(
        f"{regime}; seconds per passage",
        timings,
        base,
        speedup=True,
        extra={
            "final loss": {n: f"{v:.4f}" for n, v in final.items()},
            "vs " + base: {n: f"{(v - final[base]) / final[base]:+.2%}" for n, v in final.items()},
        },
    )
    pairs = [
        ("peft loop fp32", "batched fp32", "batching alone (fp32)"),
        ("batched fp32", "batched bf16", "bfloat16 on the batched trainer"),
        ("peft loop fp32", "peft loop, autocast bf16", "bfloat16 autocast on the peft loop"),
        ("peft loop, autocast bf16", "batched bf16", "semoe's bf16 recipe over the peft loop in bf16"),
    ]
    for slow, fast, what in pairs:
        if slow in timings and fast in timings:
            print(f"  gain of {what}: " + ratio(timings, slow, fast))
    for name in trainers:
        if name != base:
            diff = max(
                (a.weights[m][j] - b.weights[m][j]).abs().max().item()
                for a, b in zip(experts[name], experts[base])
                for m in a.weights
                for j in (0, 1)
            )
            print(f"  max |weight difference| {name} vs {base}: {diff:.2e}")


if __name__ == "__main__":
    main()
