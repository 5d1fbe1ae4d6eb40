"""Per-passage expert training speed: PRAG's peft loop (batch 1, one passage at a time)
against the batched multi-expert trainer, on the same passages with the same init.

Passages are people from the synthetic encyclopedia; their three QA pairs come from
templates over the facts behind each passage (birth year, birthplace, occupation) and the
one rewrite is the passage's sentences in reverse order, so no LLM augmentation is needed.
The two trainers alternate round by round (peft on a round's passages, then the batched
trainer on the same ones), so a change in machine load hits both alike; wall and CPU
(process) time are both printed, and the CPU-time ratio is the one to trust on a shared
machine. Timing covers training only; afterwards one float32 evaluator scores every
trainer's experts on their passages' training sequences (the "final loss").

    python benchmarks/bench_expert_training.py --passages 16 --threads 1
    python benchmarks/bench_expert_training.py --model /path/to/hf-model --dtypes bfloat16
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from semoe.config import SyntheticConfig
from semoe.data.encyclopedia import build_encyclopedia
from semoe.config import ExpertConfig
from semoe.experts.training import (
    QA,
    TrainingItem,
    build_sequences,
    expert_losses,
    initial_lora,
    train_expert_peft,
    train_experts_batched,
)
from semoe.models.loading import load_model


def make_items(n: int, seed: int) -> list[TrainingItem]:
    enc = build_encyclopedia(SyntheticConfig(seed=seed, n_entities=max(8, n)))
    texts = {p.id: p.text for p in enc.passages}
    items = []
    for person in enc.people[:n]:
        name, text = f"{person.name} {person.surname}", texts[person.passage_id]
        qa = [QA(f"When was {name} born?", str(person.birth_year), f"{name} was born in {person.birth_year}."),
              QA(f"Where was {name} born?", person.birthplace.name, f"{name} was born in {person.birthplace.name}."),
              QA(f"What was the occupation of {name}?", person.occupation, f"{name} was {_a(person.occupation)}.")]
        items.append(TrainingItem.create(person.passage_id, text, [" ".join(reversed(text.split(". ")))], qa))
    return items


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


class Clock:
    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> "Clock":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=16)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="embedded alias or local model directory")
    ap.add_argument("--cache", default="~/.cache/semoe", help="artifact cache (converted embedded models)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                    help="compute dtypes of the batched trainer to run (the peft loop runs in the model's float32)")
    ap.add_argument("--batch-passages", type=int, default=8, help="passages per lockstep batch (also the round size)")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0, help="synthetic encyclopedia seed")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, str(Path(args.cache).expanduser()), device="cpu")
    items = make_items(args.passages, args.seed)
    cfg = ExpertConfig(epochs=args.epochs, batch_passages=args.batch_passages, micro_batch=args.micro_batch,
                       measure_loss=False)
    tokens = [len(s.ids) for it in items for s in build_sequences(tok, it, cfg)]
    print(f"model {args.model}, {len(items)} passages, {len(tokens) / len(items):.0f} sequences per passage, "
          f"{sum(tokens) / len(tokens):.0f} tokens per sequence, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    init = initial_lora(model, cfg)

    runs = {"peft loop (PRAG, batch 1)": ("peft", cfg)}
    runs.update({f"batched {dt}": ("batched", cfg.model_copy(update={"compute_dtype": dt})) for dt in args.dtypes})
    clocks = {name: Clock() for name in runs}
    experts = {name: [] for name in runs}
    for start in range(0, len(items), args.batch_passages):
        chunk = items[start : start + args.batch_passages]
        for name, (kind, run_cfg) in runs.items():
            with clocks[name]:
                if kind == "peft":
                    results = [train_expert_peft(model, tok, it, run_cfg, init) for it in chunk]
                else:
                    results = train_experts_batched(model, tok, chunk, run_cfg, init)
            experts[name] += [r.expert for r in results]
        print(f"  round {start // args.batch_passages + 1}: " + ", ".join(
            f"{name} {clocks[name].wall:.0f}s" for name in runs), flush=True)

    scorer = cfg.model_copy(update={"compute_dtype": "float32"})
    before = sum(expert_losses(model, tok, items, [init] * len(items), scorer)) / len(items)
    base_name = next(iter(runs))
    base_clock = clocks[base_name]
    final = {name: sum(expert_losses(model, tok, items, experts[name], scorer)) / len(items) for name in runs}
    print(f"\nmean loss before training (init): {before:.4f}")
    print(f"{'trainer':<28}{'passages/s':>11}{'cpu-s/passage':>15}{'x wall':>8}{'x cpu':>7}"
          f"{'final loss':>12}{'rel. diff':>11}")
    for name in runs:
        c = clocks[name]
        rel = (final[name] - final[base_name]) / final[base_name]
        print(f"{name:<28}{len(items) / c.wall:>11.4f}{c.cpu / len(items):>15.2f}{base_clock.wall / c.wall:>8.2f}"
              f"{base_clock.cpu / c.cpu:>7.2f}{final[name]:>12.4f}{rel:>+11.2%}")
    for name in runs:
        if name != base_name:
            diff = max((a.weights[m][j] - b.weights[m][j]).abs().max().item()
                       for a, b in zip(experts[name], experts[base_name]) for m in a.weights for j in (0, 1))
            print(f"max |weight difference| {name} vs peft loop: {diff:.2e}")


if __name__ == "__main__":
    main()
