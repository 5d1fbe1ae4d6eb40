"""Patch mode runs only the experts a variable-k policy selects: the zero-weight padding
slots of a :class:`Routing` are skipped, with the same outputs as computing them."""

from __future__ import annotations

import pytest
import torch

from semoe.routing import find_routers, fit_empirical_null, route_with
from tests.routing.test_routing_adapters import FAMILIES, logits, one_thread, tiny_moe, token_ids  # noqa: F401


def variable_k_policies(model) -> dict[str, dict]:
    null = fit_empirical_null(model, [token_ids(model, 32, seed=10 + i) for i in range(2)])
    return {
        "bh": {"name": "bh", "params": {"alpha": 0.2, "max_k": 6, "p_values": "calibrated", "null": null}},
        "top-p": {"name": "top-p", "params": {"p": 0.9, "max_k": 6}},
        "entropy-k": {"name": "entropy-k", "params": {"min_k": 1, "max_k": 5}},
    }


def count_expert_rows(model) -> list[int]:
    """(token, slot) rows each experts module computes, appended per call; installed as the
    modules' own forward, so route_with wraps it and the count sees what really runs."""
    rows: list[int] = []
    for site in find_routers(model):
        original = site.experts.forward

        def counting(hidden, index, weights, _original=original):
            rows.append(index.numel())
            return _original(hidden, index, weights)

        site.experts.forward = counting
    return rows


def uninstall_counters(model) -> None:
    for site in find_routers(model):
        del site.experts.forward


def run_both(model, spec, ids):
    """(logits with padding computed, logits with it skipped, rows computed each way, stats)."""
    rows = count_expert_rows(model)
    try:
        with route_with(model, spec, guard=False, skip_inactive=False):
            padded = logits(model, ids)
        padded_rows = sum(rows)
        rows.clear()
        with route_with(model, spec, guard=False) as session:
            selected = logits(model, ids)
        return padded, selected, padded_rows, sum(rows), session.stats.summary()
    finally:
        uninstall_counters(model)


def selected_pairs(summary) -> int:
    return round(sum(r["experts_mean"] * r["tokens"] for r in summary))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("policy", ["bh", "top-p", "entropy-k"])
def test_selected_experts_only_same_logits(family, policy):
    model = tiny_moe(family)
    ids = token_ids(model, length=24, batch=2)
    padded, selected, padded_rows, selected_rows, summary = run_both(model, variable_k_policies(model)[policy], ids)
    pairs = selected_pairs(summary)
    assert padded_rows > pairs, "the policy should leave padding slots, else the test proves nothing"
    assert selected_rows == pairs
    assert (padded - selected).abs().max().item() <= 1e-5
    assert all("forward" not in s.experts.__dict__ for s in find_routers(model))


@pytest.mark.parametrize("impl", ["eager", "grouped_mm", "batched_mm"])
def test_every_experts_implementation_skips_padding(impl):
    model = tiny_moe("olmoe", experts_implementation=impl)
    ids = token_ids(model, length=24, batch=2)
    padded, selected, padded_rows, selected_rows, summary = run_both(model, variable_k_policies(model)["bh"], ids)
    assert selected_rows == selected_pairs(summary) < padded_rows
    assert (padded - selected).abs().max().item() <= 1e-5


def test_semoe_moe_lm_skips_padding():
    moe_lm = pytest.importorskip("semoe.moe_lm.model")
    from tests.support.helpers import tiny_moe_lm_config

    for router_type in ("linear", "gru"):
        torch.manual_seed(0)
        cfg = tiny_moe_lm_config(num_experts=8, router_type=router_type)
        model = moe_lm.MoeLM(cfg).eval()
        with torch.no_grad():  # decisive routers: a flat one at init gives every token max_k
            for site in find_routers(model):
                site.module.weight.mul_(30)
        ids = torch.randint(0, 258, (2, 16), generator=torch.Generator().manual_seed(0))
        spec = {"name": "entropy-k", "params": {"min_k": 1, "max_k": 6}}
        padded, selected, padded_rows, selected_rows, summary = run_both(model, spec, ids)
        assert selected_rows == selected_pairs(summary) < padded_rows
        assert (padded - selected).abs().max().item() <= 1e-5


def test_fixed_k_and_analyze_mode_run_the_model_experts_unchanged():
    """No padding (top-k at any k) or the model's own routing (analyze): the experts get the
    block's (tokens, k) routing as it is, one call per layer."""
    model = tiny_moe("olmoe")
    ids = token_ids(model, length=12)
    bh = variable_k_policies(model)["bh"]
    rows = count_expert_rows(model)
    try:
        with route_with(model, {"name": "topk", "params": {"k": 3}}, guard=False):
            logits(model, ids)
        assert rows == [12 * 3] * 3
        rows.clear()
        with route_with(model, bh, mode="analyze"):
            logits(model, ids)
        assert rows == [12 * 2] * 3
    finally:
        uninstall_counters(model)


def test_greedy_decoding_is_unchanged():
    """Prefill (padding skipped) and single-token decode steps through the KV cache."""
    model = tiny_moe("qwen3_moe")
    ids = token_ids(model, length=10)
    spec = variable_k_policies(model)["bh"]
    out = {}
    for skip in (False, True):
        with torch.no_grad(), route_with(model, spec, guard=False, skip_inactive=skip):
            out[skip] = model.generate(
                input_ids=ids,
                max_new_tokens=8,
                do_sample=False,
                pad_token_id=0,
                output_logits=True,
                return_dict_in_generate=True,
            )
    assert torch.equal(out[False].sequences, out[True].sequences)
    assert (torch.stack(out[False].logits) - torch.stack(out[True].logits)).abs().max().item() <= 1e-5
