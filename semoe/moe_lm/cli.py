"""``semoe moe-lm {train,generate}``: train-or-load the MoE LM, then generate and show which experts
the tokens went to. torch is imported only once a command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from semoe.config import ConfigError, MoeLMConfig, load_section
from semoe.moe_lm.inference import generate
from semoe.moe_lm.training import checkpoint_key, encyclopedia_texts, load_or_train
from semoe.storage.artifacts import ArtifactCache, CacheError
from semoe.textfmt import format_table


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="YAML file of MoeLMConfig fields (default: the CPU demo config)")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    common.add_argument("--cache", default="~/.cache/semoe", help="artifact cache root (checkpoints: <root>/moe-lm)")
    common.add_argument("--corpus", help="training texts, one per non-empty line (default: the synthetic encyclopedia)")

    parser = argparse.ArgumentParser(prog="semoe moe-lm", description="small MoE language model with recurrent routers")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", parents=[common], help="train (or load the cached checkpoint) and summarise the curve")
    gen = sub.add_parser("generate", parents=[common], help="greedy generation from the trained model")
    gen.add_argument("--prompt", help="text to continue")
    gen.add_argument("--interactive", action="store_true", help="continue each stdin line until EOF")
    gen.add_argument("--analyze", action="store_true", help="print each layer's expert usage")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    return parser


def _texts(corpus: str | None) -> list[str]:
    if corpus is None:
        return encyclopedia_texts()
    return [line for line in Path(corpus).expanduser().read_text().splitlines() if line.strip()]


def _progress(total: int):
    every = max(1, total // 10)

    def report(row: dict) -> None:
        if row["step"] % every == 0 or row["step"] == total:
            print(
                f"step {row['step']}/{total}  loss {row['loss']:.3f}  aux {row['aux_loss']:.3f}  "
                f"lr {row['lr']:.2e}  {row['seconds']:.1f} s",
                file=sys.stderr,
            )

    return report


def usage_table(gen) -> str:
    """One row per layer: the share of tokens that had each expert in their top-k, and how often
    consecutive tokens changed expert set (low for routers that keep a sequence on the same experts)."""

    n_tokens = len(gen.experts)
    columns = ["layer"] + [f"e{e}" for e in range(gen.num_experts)] + ["switch %"]
    rows = []
    for layer, counts in enumerate(gen.expert_usage()):
        chosen = [frozenset(token[layer]) for token in gen.experts]
        switches = sum(a != b for a, b in zip(chosen, chosen[1:]))
        rows.append(
            [layer] + [f"{100 * c / n_tokens:.0f}" for c in counts] + [f"{100 * switches / max(1, n_tokens - 1):.0f}"]
        )
    return f"expert usage, % of {n_tokens} tokens (top-{len(gen.experts[0][0])})\n" + format_table(columns, rows)


def cli_main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    try:
        cfg = load_section(MoeLMConfig, args.config, args.set)
        cache = ArtifactCache(args.cache)
    except (ConfigError, CacheError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "generate" and not (args.prompt or args.interactive):
        print("error: give --prompt TEXT and/or --interactive", file=sys.stderr)
        return 2

    texts = _texts(args.corpus)
    print(f"moe-lm {checkpoint_key(cfg, texts)}: {len(texts)} training texts", file=sys.stderr)
    model, tokenizer, curve = load_or_train(cfg, texts, cache, on_step=_progress(cfg.steps))
    if args.command == "train":
        last = curve[-1]
        print(
            f"{model.num_parameters():,} parameters; {last['step']} steps in {last['seconds']:.1f} s; "
            f"loss {curve[0]['loss']:.3f} -> {last['loss']:.3f}; aux {last['aux_loss']:.3f}"
        )
        return 0

    def answer(prompt: str) -> None:
        try:
            gen = generate(model, tokenizer, prompt, args.max_new_tokens, analyze=args.analyze)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return
        print(prompt + gen.text)
        if args.analyze:
            print(usage_table(gen))

    if args.prompt:
        answer(args.prompt)
    if args.interactive:
        for line in sys.stdin:
            if line.strip():
                answer(line.rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
