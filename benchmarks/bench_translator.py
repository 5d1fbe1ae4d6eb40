"""Passage experts from a DyPRAG-style parameter translator against PRAG's augment + train,
side by side on the embedded SmolLM2-135M-Instruct:

1. **expert creation per passage**, on the same held-out passages: the LLM augments each
   passage (rewrite + QA pairs) and a LoRA is trained on it (cold caches: what SEMoE pays for a
   passage no offline step saw), against one pooling forward + one translator forward;
2. **SEMoE seconds per question** on the same questions: SEMoE with trained experts (cold
   expert caches, augmenting and training what its queries retrieve), SEMoE with translator
   experts, and single retrieval (the baseline of the ratios).

The translator is trained first (untimed) on ``--train-passages`` encyclopedia people whose
QA pairs come from templates over their facts (``bench_expert_training.make_items``: no LLM
augmentation), with PRAG's settings. The augment + train side and trained SEMoE run cold, so
once per round with fresh caches (``--cold-repeats``, default 1: each costs minutes); the
translator and single retrieval get a warm-up and ``--repeats`` rounds. Timing (``_common``):
process CPU time beside wall time, 1 torch thread; trust the CPU-time ratios on a shared box.

    python benchmarks/bench_translator.py --train-passages 8 --passages 6 --questions 8
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import Timing, add_timing_args, apply_threads, compare, load_average, print_table, timed
from bench_expert_training import make_items

from semoe.config import ExpertConfig, MethodSpec, SemoeConfig, SyntheticConfig
from semoe.data.encyclopedia import build_encyclopedia
from semoe.experts.lockstep import train_experts_batched
from semoe.experts.lora_init import initial_lora
from semoe.experts.provider import ExpertProvider
from semoe.experts.translator import Pair, save_translator, train_translator, translate
from semoe.generation.base import MethodContext, build_method
from semoe.generation.lm import ChatLM
from semoe.metrics import exact_match
from semoe.models.loading import load_model
from semoe.retrieval import RETRIEVERS

ITEMS_SEED = 1  # the encyclopedia of the training and held-out passages (not the questions' corpus)


def items_corpus(n: int) -> SyntheticConfig:  # the encyclopedia make_items reads
    return SyntheticConfig(seed=ITEMS_SEED, n_entities=max(8, n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-passages", type=int, default=8, help="translator training pairs")
    ap.add_argument("--passages", type=int, default=6, help="held-out passages for expert creation")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cache", default="~/.cache/semoe", help="artifact cache holding the converted model")
    ap.add_argument("--cold-repeats", type=int, default=1, help="rounds of the cold (augment + train) variants")
    add_timing_args(ap)
    args = ap.parse_args()
    threads = apply_threads(args.threads)

    cfg = SemoeConfig.model_validate(
        {
            "synthetic": {"seed": 0, "n_entities": 100, "n_questions": args.questions},
            "model": {"spec": args.model},
            "retrieval": {"top_k": 3},
            "generation": {"max_new_tokens": 24, "few_shot": 2},
            "trigger": {"max_retrievals": 2},
            "experts": {"measure_loss": False},
        }
    )
    model, tok = load_model(args.model, str(Path(args.cache).expanduser()), device="cpu")
    lm = ChatLM(model, tok, cfg.generation.system_prompt)
    enc = build_encyclopedia(cfg.synthetic)
    questions = enc.questions[: args.questions]
    items = make_items(args.train_passages + args.passages, seed=ITEMS_SEED)
    train, held = items[: args.train_passages], items[args.train_passages :]
    print(
        f"model {args.model}, {len(train)} training pairs, {len(held)} held-out passages, {len(questions)} "
        f"questions, torch threads {threads}, {load_average()}",
        flush=True,
    )

    experts_cfg = cfg.experts
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        targets = train_experts_batched(model, tok, train, experts_cfg, initial_lora(model, experts_cfg))
        pairs = [Pair(it, f"bench-{i}", r.expert) for i, (it, r) in enumerate(zip(train, targets))]
        (translator, curve), wall, cpu = timed(
            lambda: train_translator(model, tok, pairs, experts_cfg, experts_cfg.translator)
        )
        epochs = experts_cfg.translator.epochs
        print(
            f"translator trained in {wall:.0f} s wall / {cpu:.0f} s cpu ({len(curve)} steps): loss "
            f"{sum(r.loss for r in curve[: len(pairs)]) / len(pairs):.3f} (epoch 1) -> "
            f"{sum(r.loss for r in curve[-len(pairs) :]) / len(pairs):.3f} (epoch {epochs})",
            flush=True,
        )
        checkpoint = tmp / "translator.safetensors"
        save_translator(checkpoint, translator, args.model)

        # 1. expert creation per passage, the same held-out passages
        held_ids = {it.passage_id for it in held}
        passages = [p for p in build_encyclopedia(items_corpus(len(items))).passages if p.id in held_ids]
        rounds = iter(range(10**6))

        def augment_and_train():
            provider = ExpertProvider(lm, cfg.model, cfg.augment, experts_cfg, str(tmp / f"cold-{next(rounds)}"))
            return provider.experts_for(passages)

        cold = Timing()
        for _ in range(args.cold_repeats):
            made, wall, cpu = timed(augment_and_train)
            cold.wall.append(wall)
            cold.cpu.append(cpu)
        tcfg = experts_cfg.translator
        timings, _ = compare(
            {
                "translator": lambda: translate(
                    translator, model, tok, [(p.id, p.text) for p in passages], tcfg.max_passage_tokens
                )
            },
            args.repeats,
        )
        per_passage = {"augment + train": cold, **timings}
        per_passage = {k: t.scaled(1 / len(passages)) for k, t in per_passage.items()}
        print_table(
            f"expert creation, {len(passages)} held-out passages, augment + train cold ({args.cold_repeats} "
            f"round(s)), translator best of {args.repeats}; seconds per passage",
            per_passage,
            "augment + train",
            speedup=True,
            extra={"experts": {"augment + train": str(len(made)), "translator": str(len(passages))}},
        )

        # 2. SEMoE seconds per question
        retriever = RETRIEVERS.get("tantivy")(cfg.retrieval, tmp / "index", "bench-translator")
        retriever.build(enc.passages, total=len(enc.passages))
        translated = experts_cfg.model_copy(
            update={"source": "translator", "translator": tcfg.model_copy(update={"checkpoint": str(checkpoint)})}
        )

        def run(name: str, experts: ExpertConfig | None, cache: str):
            method = build_method(MethodSpec(name=name), cfg)
            provider = ExpertProvider(lm, cfg.model, cfg.augment, experts, cache) if experts else None
            ctx = MethodContext(cfg.generation, lm, cfg.retrieval, retriever, provider)
            return lambda qs=questions: method.run(qs, ctx)

        cold = Timing()
        for _ in range(args.cold_repeats):
            outs_trained, wall, cpu = timed(run("semoe", experts_cfg, str(tmp / f"semoe-cold-{next(rounds)}")))
            cold.wall.append(wall)
            cold.cpu.append(cpu)
        variants = {
            "single-retrieval": run("single-retrieval", None, str(tmp)),
            "semoe, translator experts": run("semoe", translated, str(tmp / "translated")),
        }
        warm = {k: (lambda fn=fn: fn(questions[:1])) for k, fn in variants.items()}
        timings, outs = compare(variants, args.repeats, warm)
        outs["semoe, trained experts (cold)"] = outs_trained
        per_question = {**timings, "semoe, trained experts (cold)": cold}
        per_question = {k: t.scaled(1 / len(questions)) for k, t in per_question.items()}
        n = len(questions)
        print_table(
            f"{n} questions, trained SEMoE cold ({args.cold_repeats} round(s)), the others best of {args.repeats}; "
            "seconds per question",
            per_question,
            "single-retrieval",
            extra={
                "EM": {
                    k: f"{sum(exact_match(o.prediction, q.answers) for o, q in zip(v, questions)) / n:.2f}"
                    for k, v in outs.items()
                },
                "retr/q": {k: f"{sum(len(o.retrievals) for o in v) / n:.2f}" for k, v in outs.items()},
            },
        )


if __name__ == "__main__":
    main()
