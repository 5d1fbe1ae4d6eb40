"""Passage experts from a DyPRAG-style parameter translator against PRAG's augment + train,
side by side on the embedded SmolLM2-135M-Instruct (``--parts``, any of):

* ``layers``: the translator's passage encoder depth (``translator.encoder_layers``, the
  first N decoder layers; ``all``: DyPRAG's whole model): for each N in ``--layers`` a
  translator is trained on the same pairs (same seed) and measured by the held-out QA
  log-likelihood gain (mean over held-out passages of the answer tokens' loss without minus
  with the translated expert, nats per token; the quality test's measure) and its creation CPU
  time per passage; what the default of ``encoder_layers`` was chosen from;
* ``creation``: **expert creation per passage**, on the same held-out passages: the LLM
  augments each passage (rewrite + QA pairs) and a LoRA is trained on it (cold caches: what
  SEMoE pays for a passage no offline step saw), against the translator (one pooling forward
  over the batch + one translator forward, and one passage at a time); augment + train is
  also counted per *usable* expert (an augmentation that yields no QA pair makes none);
* ``semoe``: **SEMoE seconds per question** on the same questions: SEMoE with trained experts
  (cold expert caches, augmenting and training what its queries retrieve), SEMoE with
  translator experts, and single retrieval (the baseline of the ratios).

Translators are trained (untimed) on ``--train-passages`` encyclopedia people whose QA pairs
come from templates over their facts (``bench_expert_training.make_items``: no LLM
augmentation), with PRAG's settings and the config's translator settings (``--encoder-layers``
for ``creation`` and ``semoe``). The augment + train side and trained SEMoE run cold, so once
per round with fresh caches (``--cold-repeats``, default 1: each costs minutes); the translator
and single retrieval get a warm-up and ``--repeats`` rounds. Timing (``_common``): process CPU
time beside wall time, 1 torch thread; trust the CPU-time ratios on a shared box.

    python benchmarks/bench_translator.py --parts layers --layers all,12,8,4
    python benchmarks/bench_translator.py --parts creation --train-passages 8 --passages 6
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


def depth(text: str) -> int | None:
    """``--layers`` / ``--encoder-layers`` value: a number of layers, or ``all`` (None)."""
    return None if text == "all" else int(text)


def train(model, tok, pairs, experts_cfg: ExpertConfig, encoder_layers: int | None):
    """A translator trained on ``pairs`` reading passages with ``encoder_layers``, same seed each time."""
    import torch

    tcfg = experts_cfg.translator.model_copy(update={"encoder_layers": encoder_layers})
    torch.manual_seed(0)
    (translator, curve), wall, cpu = timed(lambda: train_translator(model, tok, pairs, experts_cfg, tcfg))
    print(
        f"translator (encoder_layers {encoder_layers or 'all'}) trained in {wall:.0f} s wall / {cpu:.0f} s cpu "
        f"({len(curve)} steps): loss {sum(r.loss for r in curve[: len(pairs)]) / len(pairs):.3f} (epoch 1) -> "
        f"{sum(r.loss for r in curve[-len(pairs) :]) / len(pairs):.3f} (epoch {tcfg.epochs})",
        flush=True,
    )
    return translator


def layer_sweep(model, tok, pairs, held, experts_cfg: ExpertConfig, layers: list[int | None], repeats: int) -> None:
    """Creation time per passage, then held-out QA log-likelihood gain, of a translator per
    encoder depth. Timing needs no training (the cost is the encoder's forward), so it comes
    first; each depth's gain is printed as soon as its translator is trained."""
    from semoe.experts.lockstep import expert_losses
    from semoe.experts.translator import Layout, ParameterTranslator

    passages = [(it.passage_id, it.passage) for it in held]
    tcfg = experts_cfg.translator
    layout = Layout.of(model, experts_cfg)
    untrained = {
        f"encoder_layers {n or 'all'}": ParameterTranslator(layout, tcfg.hidden, tcfg.input_layer, encoder_layers=n)
        for n in layers
    }
    timings, _ = compare(
        {k: lambda tr=tr: translate(tr, model, tok, passages, tcfg.max_passage_tokens) for k, tr in untrained.items()},
        repeats,
    )
    print_table(
        f"translator creation per encoder depth, {len(held)} held-out passages in one batch; seconds per passage",
        {k: t.scaled(1 / len(held)) for k, t in timings.items()},
        next(iter(timings)),
        speedup=True,
    )
    answer_loss = experts_cfg.model_copy(update={"loss_on": "answer"})
    zero = initial_lora(model, experts_cfg)  # B = 0: the base model
    base = expert_losses(model, tok, held, [zero] * len(held), answer_loss)
    print(f"held-out answer loss of the base model: {sum(base) / len(base):.4f} nats/token", flush=True)
    for n in layers:
        translator = train(model, tok, pairs, experts_cfg, n)
        experts = translate(translator, model, tok, passages, tcfg.max_passage_tokens)
        with_expert = expert_losses(model, tok, held, experts, answer_loss)
        gain = sum(b - w for b, w in zip(base, with_expert)) / len(held)
        print(
            f"encoder_layers {n or 'all'}: held-out QA log-likelihood gain {gain:.4f} nats/token (answer loss "
            f"{sum(with_expert) / len(held):.4f}), {sum(w < b for b, w in zip(base, with_expert))}/{len(held)} "
            "passages improved",
            flush=True,
        )


def creation(lm, cfg: SemoeConfig, translator, held, n_items: int, tmp: Path, args) -> None:
    """Expert creation per held-out passage: augment + train cold against the translator."""
    model, tok = lm.model, lm.tokenizer
    held_ids = {it.passage_id for it in held}
    passages = [p for p in build_encyclopedia(items_corpus(n_items)).passages if p.id in held_ids]
    rounds = iter(range(10**6))

    def augment_and_train():
        provider = ExpertProvider(lm, cfg.model, cfg.augment, cfg.experts, str(tmp / f"cold-{next(rounds)}"))
        return provider.experts_for(passages)

    cold = Timing()
    for _ in range(args.cold_repeats):
        made, wall, cpu = timed(augment_and_train)
        cold.wall.append(wall)
        cold.cpu.append(cpu)
    max_tokens, pairs = cfg.experts.translator.max_passage_tokens, [(p.id, p.text) for p in passages]
    timings, _ = compare(
        {
            "translator, one batch": lambda: translate(translator, model, tok, pairs, max_tokens, len(pairs)),
            "translator, one at a time": lambda: translate(translator, model, tok, pairs, max_tokens, 1),
        },
        args.repeats,
    )
    n = len(passages)
    per_passage = {"augment + train": cold.scaled(1 / n), **{k: t.scaled(1 / n) for k, t in timings.items()}}
    if made:
        per_passage["augment + train, per usable expert"] = cold.scaled(1 / len(made))
    print_table(
        f"expert creation, {n} held-out passages, augment + train cold ({args.cold_repeats} round(s)), translator "
        f"(encoder_layers {translator.encoder_layers or 'all'}) best of {args.repeats}; seconds per passage",
        per_passage,
        "augment + train",
        speedup=True,
        extra={"experts": {"augment + train": str(len(made)), **{k: str(n) for k in timings}}},
    )


def semoe_per_question(lm, cfg: SemoeConfig, checkpoint: Path, tmp: Path, args) -> None:
    """SEMoE seconds per question with trained (cold) and translator experts, against single retrieval."""
    enc = build_encyclopedia(cfg.synthetic)
    questions = enc.questions[: args.questions]
    rounds = iter(range(10**6))
    retriever = RETRIEVERS.get("tantivy")(cfg.retrieval, tmp / "index", "bench-translator")
    retriever.build(enc.passages, total=len(enc.passages))
    tcfg = cfg.experts.translator
    translated = cfg.experts.model_copy(
        update={"source": "translator", "translator": tcfg.model_copy(update={"checkpoint": str(checkpoint)})}
    )

    def run(name: str, experts: ExpertConfig | None, cache: str):
        method = build_method(MethodSpec(name=name), cfg)
        provider = ExpertProvider(lm, cfg.model, cfg.augment, experts, cache) if experts else None
        ctx = MethodContext(cfg.generation, lm, cfg.retrieval, retriever, provider)
        return lambda qs=questions: method.run(qs, ctx)

    cold = Timing()
    for _ in range(args.cold_repeats):
        outs_trained, wall, cpu = timed(run("semoe", cfg.experts, str(tmp / f"semoe-cold-{next(rounds)}")))
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
    n = len(questions)
    print_table(
        f"{n} questions, trained SEMoE cold ({args.cold_repeats} round(s)), the others best of {args.repeats}; "
        "seconds per question",
        {k: t.scaled(1 / n) for k, t in per_question.items()},
        "single-retrieval",
        extra={
            "EM": {
                k: f"{sum(exact_match(o.prediction, q.answers) for o, q in zip(v, questions)) / n:.2f}"
                for k, v in outs.items()
            },
            "retr/q": {k: f"{sum(len(o.retrievals) for o in v) / n:.2f}" for k, v in outs.items()},
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="creation,semoe", help="comma list of: layers, creation, semoe")
    ap.add_argument("--train-passages", type=int, default=8, help="translator training pairs")
    ap.add_argument("--passages", type=int, default=6, help="held-out passages for expert creation and quality")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--layers", default="all,12,8,4", help="encoder depths of the `layers` part (`all`: every layer)")
    ap.add_argument(
        "--encoder-layers",
        type=depth,
        default=None,
        help="the translator's depth in `creation` and `semoe` (default: the config's)",
    )
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cache", default="~/.cache/semoe", help="artifact cache holding the converted model")
    ap.add_argument("--cold-repeats", type=int, default=1, help="rounds of the cold (augment + train) variants")
    add_timing_args(ap)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
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
    if args.encoder_layers is not None:
        translator_cfg = cfg.experts.translator.model_copy(update={"encoder_layers": args.encoder_layers})
        cfg = cfg.model_copy(update={"experts": cfg.experts.model_copy(update={"translator": translator_cfg})})
    model, tok = load_model(args.model, str(Path(args.cache).expanduser()), device="cpu")
    lm = ChatLM(model, tok, cfg.generation.system_prompt)
    items = make_items(args.train_passages + args.passages, seed=ITEMS_SEED)
    train_items, held = items[: args.train_passages], items[args.train_passages :]
    print(
        f"model {args.model} ({len(model.get_decoder().layers)} layers), {len(train_items)} training pairs, "
        f"{len(held)} held-out passages, torch threads {threads}, {load_average()}",
        flush=True,
    )

    experts_cfg = cfg.experts
    targets = train_experts_batched(model, tok, train_items, experts_cfg, initial_lora(model, experts_cfg))
    pairs = [Pair(it, f"bench-{i}", r.expert) for i, (it, r) in enumerate(zip(train_items, targets))]
    if "layers" in parts:
        layer_sweep(model, tok, pairs, held, experts_cfg, [depth(n) for n in args.layers.split(",")], args.repeats)
    if not parts & {"creation", "semoe"}:
        return
    translator = train(model, tok, pairs, experts_cfg, experts_cfg.translator.encoder_layers)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "creation" in parts:
            creation(lm, cfg, translator, held, len(items), tmp, args)
        if "semoe" in parts:
            checkpoint = tmp / "translator.safetensors"
            save_translator(checkpoint, translator, args.model)
            semoe_per_question(lm, cfg, checkpoint, tmp, args)


if __name__ == "__main__":
    main()
