"""RoE decoding on a tiny random Open-RAG model (``tests.support.openrag``) against greedy decoding.

RoE runs K routing samples per token (one clean, K − 1 with Gumbel noise on the adapter MoE's
router logits) in one forward and keeps only the clean path's keys and values. Targets (issue
11): decode per token ≤ 2.5× greedy's, clean-cache KV memory ≤ 1.1× greedy's. Timing as every
benchmark here (``_common``): process CPU time beside wall time, warm-up, ``--repeats``
interleaved rounds, 1 torch thread; the per-token figure is measured inside each decode loop.

    python benchmarks/bench_roe_openrag.py                     # K = 8, τ 0 / 0.01 / 0.05
    python benchmarks/bench_roe_openrag.py --K 4 --tau 0.5 --layers 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's semoe and tests.support

import torch  # noqa: E402
from _common import add_timing_args, apply_threads  # noqa: E402
from bench_routing import roe_cost  # noqa: E402

from tests.support.openrag import reflection_tokenizer, tiny_openrag  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--K", type=int, default=8)
    ap.add_argument(
        "--tau", type=float, nargs="+", default=[0.0, 0.01, 0.05], help="τ of the noisy layers, one run each"
    )
    ap.add_argument("--skip", type=int, default=1, help="τ = 0 on the first and last `skip` layers")
    ap.add_argument("--seed", type=int, default=0)
    add_timing_args(ap)
    args = ap.parse_args()

    threads = apply_threads(args.threads)
    args.vocab = len(reflection_tokenizer())
    model = tiny_openrag(args.vocab, args.seed, num_hidden_layers=args.layers)
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"tiny random Open-RAG: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, {cfg.num_experts} adapters "
        f"× {cfg.adapter_dim}, top-{cfg.topk}, vocab {cfg.vocab_size} ({n_params / 1e3:.0f}K params); "
        f"torch {torch.__version__}, {threads} thread(s)"
    )
    roe_cost(model, args)


if __name__ == "__main__":
    main()
