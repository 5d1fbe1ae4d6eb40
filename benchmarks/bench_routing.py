"""Cost of routing policies on a random OLMoE sized like a small real layer (CPU by default).

Regimes, each timed by process CPU time beside wall time (see ``_common``), 1 torch thread,
a warm-up of every variant and ``--repeats`` interleaved rounds:

* BH routing, ``patch`` mode (the headline: what a user pays to route with BH): the policy
  picks a different number of experts per token and only those run. Compared with the
  model's own top-k forward for a prefill (``--prefill`` tokens) and for single-token decode
  steps; the extra cost is BH's decision plus the extra experts it selects (printed beside
  it). ``bh patch, padding computed`` is the old dispatch that also ran every zero-weight
  padding slot up to the batch's largest k.
* BH routing, ``analyze`` mode: the model's own top-k routing runs while BH (calibrated
  p-values, floor/ceiling, statistics) decides alongside, so the expert work is identical
  and only the routing decision is extra; target ≤ 10% of a top-k forward (also measured
  inside the patched routers, which does not depend on machine load).
* RoE with K samples ≤ 2.5× the per-token decode time of greedy decoding, and clean-cache
  KV memory ≤ 1.1× greedy's (bytes of the cache tensors' storage after decoding).

    python benchmarks/bench_routing.py                      # hidden 512, 8 layers, 64 experts, top-8
    python benchmarks/bench_routing.py --K 4 --tau 0.3 --experts-impl eager --threads 2
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _common import add_timing_args, apply_threads, compare, load_average, print_table
from transformers import OlmoeConfig, OlmoeForCausalLM

from semoe.routing import find_routers, fit_empirical_null, roe_generate, route_with
from semoe.routing.decoding import greedy_decode
from semoe.routing.memory import PeakMemory, cache_bytes


def build(args) -> OlmoeForCausalLM:
    cfg = OlmoeConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        num_experts=args.experts,
        num_experts_per_tok=args.k,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        experts_implementation=args.experts_impl,
    )
    torch.manual_seed(args.seed)
    model = OlmoeForCausalLM(cfg).eval()
    if args.router_scale != 1.0:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.gate.weight.mul_(args.router_scale)
    return model


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def routing_share(model, spec, inputs, cache=None) -> float:
    """CPU seconds one forward spends deciding routing (policy + statistics), measured inside
    the patched routers, so it does not depend on how busy the machine is between calls."""
    spent = [0.0]

    def timing(fn):
        def wrapper(*a, **kw):
            start = time.process_time()
            out = fn(*a, **kw)
            spent[0] += time.process_time() - start
            return out

        return wrapper

    with route_with(model, spec, mode="analyze", guard=False) as session:
        session.policy.route = timing(session.policy.route)
        session.stats.record = timing(session.stats.record)
        model(input_ids=inputs, cache=cache, use_cache=cache is not None)
    if cache is not None:
        cache.crop(-inputs.shape[1])
    return spent[0]


def experts_per_token(model, spec, inputs, cache=None, mode: str = "patch") -> float:
    with route_with(model, spec, mode=mode, guard=False) as session:
        model(input_ids=inputs, cache=cache, use_cache=cache is not None)
    if cache is not None:
        cache.crop(-inputs.shape[1])
    return session.stats.experts_per_token()


def forward_overhead(model, null, args) -> None:
    bh = {
        "name": "bh",
        "params": {
            "alpha": args.alpha,
            "min_k": args.min_k,
            "max_k": args.max_k,
            "p_values": "calibrated",
            "null": null,
        },
    }
    ids = torch.randint(3, args.vocab, (1, args.prefill), generator=torch.Generator().manual_seed(1))
    step = ids[:, :1]
    prefix = model(input_ids=ids[:, :64], use_cache=True).cache
    steps = args.decode_steps

    def forward(spec, inputs, cache=None, calls: int = 1, **route):
        def run():
            for _ in range(calls):
                if spec is None:
                    model(input_ids=inputs, cache=cache, use_cache=cache is not None)
                else:
                    with route_with(model, spec, guard=False, **route):
                        model(input_ids=inputs, cache=cache, use_cache=cache is not None)
                if cache is not None:
                    cache.crop(-inputs.shape[1])  # decode steps all start from the same 64-token prefix

        return run

    def variants(inputs, cache=None, calls=1):
        return {
            "top-k (model's own routing)": forward(None, inputs, cache, calls),
            "bh patch (selected experts)": forward(bh, inputs, cache, calls, mode="patch"),
            "bh patch, padding computed": forward(bh, inputs, cache, calls, mode="patch", skip_inactive=False),
            "bh analyze": forward(bh, inputs, cache, calls, mode="analyze"),
        }

    with torch.no_grad():
        prefill, _ = compare(variants(ids), args.repeats)
        decode, _ = compare(variants(step, prefix, steps), args.repeats)
        decode = {name: t.scaled(1 / steps) for name, t in decode.items()}
        inside = {
            "prefill": min(routing_share(model, bh, ids) for _ in range(args.repeats)),
            "decode": min(routing_share(model, bh, step, prefix) for _ in range(args.repeats * 5)),
        }
        k_used = {"prefill": experts_per_token(model, bh, ids), "decode": experts_per_token(model, bh, step, prefix)}
        with route_with(model, bh, guard=False) as session:
            model(input_ids=ids)
        rows = session.stats.summary()

    print(
        f"\nBH routing (alpha={args.alpha}, min_k={args.min_k}, max_k={args.max_k}, calibrated p-values) "
        f"against the model's top-{args.k}; {load_average()}"
    )
    regimes = (
        ("prefill", prefill, f"prefill forward, {args.prefill} tokens, batch 1"),
        ("decode", decode, f"decode, 1 token after a 64-token prefix (mean of {steps} steps)"),
    )
    for label, times, what in regimes:
        print_table(what, times, "top-k (model's own routing)")
        base = times["top-k (model's own routing)"]
        patch, padded = times["bh patch (selected experts)"], times["bh patch, padding computed"]
        more = k_used[label] / args.k - 1
        print(
            f"  headline, bh patch: {(patch.best_cpu / base.best_cpu - 1) * 100:+.1f}% cpu "
            f"({(patch.best_wall / base.best_wall - 1) * 100:+.1f}% wall) for {k_used[label]:.2f} experts/token "
            f"({more * 100:+.1f}% experts vs top-{args.k}); padding computed: "
            f"{(padded.best_cpu / base.best_cpu - 1) * 100:+.1f}% cpu"
        )
        analyze = times["bh analyze"]
        cpu = analyze.best_cpu / base.best_cpu - 1
        share = inside[label] / base.best_cpu
        print(f"  bh analyze overhead, cpu      {cpu * 100:+6.1f}%  (target ≤ +10%)  {verdict(cpu <= 0.10)}")
        print(
            f"  bh analyze overhead, inside routers {share * 100:+6.1f}%  ({inside[label] * 1e3:.2f} ms cpu of BH "
            f"decisions + statistics per forward)  {verdict(share <= 0.10)}"
        )
    n = sum(r["tokens"] for r in rows)
    floor = sum(r["floor_rate"] * r["tokens"] for r in rows) / n
    ceiling = sum(r["ceiling_rate"] * r["tokens"] for r in rows) / n
    print(f"  bh prefill: floor hits {floor:.1%}, ceiling hits {ceiling:.1%}")


def router_sharpness(model, args) -> str:
    ids = torch.randint(3, args.vocab, (1, 128), generator=torch.Generator().manual_seed(3))
    top1, entropy = [], []

    def hook(module, inputs, output):
        probs = torch.softmax(output[0].float(), dim=-1)
        top1.append(probs.max(-1).values.mean())
        entropy.append((-(probs * probs.clamp_min(1e-12).log()).sum(-1) / math.log(probs.shape[-1])).mean())

    handles = [site.module.register_forward_hook(hook) for site in find_routers(model)]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return (
        f"router top-1 probability {float(torch.stack(top1).mean()):.3f}, "
        f"normalised entropy {float(torch.stack(entropy).mean()):.3f}"
    )


def roe_cost(model, args) -> None:
    prompt = torch.randint(3, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(2))
    results: dict = {}
    per_token: dict[str, list[float]] = {}  # decode wall seconds per token, measured inside each run

    def greedy():
        with PeakMemory() as mem:
            out = greedy_decode(model, prompt, args.new_tokens)
        results["greedy"] = (out.kv_cache_bytes, mem.added_bytes)
        per_token.setdefault("greedy", []).append(out.seconds_per_token)

    def roe(tau):
        def run():
            with PeakMemory() as mem:
                out = roe_generate(model, prompt, args.K, tau, args.new_tokens, skip=args.skip, guard=False)
            noisy = [r["overlap"] for r in out.stats.summary()][args.skip : -args.skip or None]
            results[tau] = (cache_bytes(out.cache), mem.added_bytes, sum(noisy) / max(len(noisy), 1))
            per_token.setdefault(f"tau={tau}", []).append(
                out.decode_seconds / (out.sequences.shape[1] - prompt.shape[1])
            )

        return run

    with torch.no_grad():
        times, _ = compare({"greedy": greedy, **{f"tau={tau}": roe(tau) for tau in args.tau}}, args.repeats)
    for name in per_token:
        per_token[name] = per_token[name][1:]  # drop the warm-up run
    g_kv, g_peak = results["greedy"]
    print(
        f"\nRoE decoding, K={args.K} (1 clean + {args.K - 1} noisy), tau=0 on the first/last {args.skip} MoE layers; "
        f"prompt {args.prompt}, {args.new_tokens} new tokens; {router_sharpness(model, args)}"
    )
    print_table(
        f"RoE, whole generate call (prefill + {args.new_tokens} tokens)",
        times,
        "greedy",
        extra={"decode ms/tok (wall)": {n: f"{min(v) * 1e3:.2f}" for n, v in per_token.items()}},
    )
    for tau in args.tau:
        kv, peak, kept = results[tau]
        ratio = min(per_token[f"tau={tau}"]) / min(per_token["greedy"])
        print(
            f"  roe tau={tau}: decode per token {ratio:5.2f}x greedy (wall, target ≤ 2.5x) {verdict(ratio <= 2.5)};  "
            f"KV cache {kv:,} B = {kv / g_kv:.3f}x greedy's {g_kv:,} B "
            f"(target ≤ 1.1x) {verdict(kv <= 1.1 * g_kv)};  "
            f"noisy layers keep {kept:.0%} of the model's experts;  peak RSS added {peak / 2**20:.1f} MiB "
            f"(greedy {g_peak / 2**20:.1f} MiB)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=256, help="per-expert FFN width (OLMoE: hidden / 2)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--experts-impl", default=None, help="eager, grouped_mm, batched_mm (default: transformers')")
    ap.add_argument("--router-scale", type=float, default=1.0, help="multiply router weights (sharper routing)")
    ap.add_argument("--prefill", type=int, default=256, help="tokens in the forward-overhead measurement")
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--min-k", type=int, default=2)
    ap.add_argument("--max-k", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--K", type=int, default=8)
    ap.add_argument(
        "--tau",
        type=float,
        nargs="+",
        default=[0.0, 0.2, 0.5],
        help="τ of the noisy layers, one RoE run each (0: the cost of K rows alone)",
    )
    ap.add_argument("--skip", type=int, default=1)
    ap.add_argument("--decode-steps", type=int, default=8, help="decode steps timed per round (mean reported)")
    add_timing_args(ap)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    threads = apply_threads(args.threads)
    model = build(args)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"random OLMoE: hidden {args.hidden}, {args.layers} layers, {args.experts} experts × {args.intermediate}, "
        f"top-{args.k}, vocab {args.vocab} ({n_params / 1e6:.0f}M params, "
        f"experts={model.config._experts_implementation}); "
        f"torch {torch.__version__}, {threads} thread(s)"
    )
    calib = [torch.randint(3, args.vocab, (1, 128), generator=torch.Generator().manual_seed(10 + i)) for i in range(4)]
    null = fit_empirical_null(model, calib)
    forward_overhead(model, null, args)
    roe_cost(model, args)


if __name__ == "__main__":
    main()
