"""Benjamini–Hochberg, adaptive-k policies and the no-op guard."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from semoe.routing import (
    RoutingNoOpError,
    benjamini_hochberg,
    find_routers,
    fit_empirical_null,
    make_policy,
    register_policy,
    route_with,
)
from semoe.routing.adapters.olmoe import OlmoeAdapter
from semoe.routing.sites import RouterSite
from tests.routing.test_routing_adapters import logits, one_thread, tiny_moe, token_ids  # noqa: F401


def site(num_experts: int = 64, top_k: int = 8, index: int = 0) -> RouterSite:
    return RouterSite(index, "model.layers.0.mlp.gate", None, OlmoeAdapter, 0, top_k, num_experts, False)


def counts(routing) -> torch.Tensor:
    t, kmax = routing.indices.shape
    return routing.counts if routing.counts is not None else torch.full((t,), kmax)


# The example of Benjamini & Hochberg (1995), section 4: 15 p-values, α = 0.05, 4 rejections.
BH_1995 = [
    0.0001,
    0.0004,
    0.0019,
    0.0095,
    0.0201,
    0.0278,
    0.0298,
    0.0344,
    0.0459,
    0.3240,
    0.4262,
    0.5719,
    0.6528,
    0.7590,
    1.000,
]


@pytest.mark.parametrize(
    "p,alpha,expected",
    [
        (BH_1995, 0.05, [True] * 4 + [False] * 11),
        ([0.01, 0.04, 0.03, 0.5], 0.05, [True, False, False, False]),
        ([0.01, 0.02, 0.03, 0.04, 0.05], 0.05, [True] * 5),  # every p on its threshold i·α/m
        ([0.09, 0.02, 0.07, 0.06], 0.1, [True] * 4),  # step-up: p_(2) fails, p_(4) passes → reject all
        ([0.5, 0.03, 0.026, 0.005], 0.1, [False, True, True, True]),
        ([0.5, 0.9], 0.05, [False, False]),
    ],
)
def test_benjamini_hochberg_hand_worked(p, alpha, expected):
    assert benjamini_hochberg(p, alpha).tolist() == expected


def test_benjamini_hochberg_rows_are_independent():
    p = torch.tensor([[0.01, 0.04, 0.03, 0.5], [0.5, 0.9, 0.001, 0.7]])
    assert benjamini_hochberg(p, 0.05).tolist() == [[True, False, False, False], [False, False, True, False]]
    with pytest.raises(ValueError):
        benjamini_hochberg([0.1, 1.5], 0.05)


@pytest.fixture(scope="module")
def peaked_logits() -> torch.Tensor:
    """Router logits over 64 experts; every third token has 1-6 clearly favoured experts."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(600, 64, generator=gen)
    for t in range(0, 600, 3):
        x[t, torch.randperm(64, generator=gen)[: favoured(t)]] = 8.0
    return x


def favoured(t: int) -> int:
    return 1 + t % 6


@pytest.fixture(scope="module")
def null(peaked_logits):
    """Empirical null (probabilities of the unselected experts) fitted on other tokens of the same kind."""
    from semoe.routing.calibration import EmpiricalNull

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 64, generator=gen)
    x[::3, :3] = 8.0
    probs = torch.softmax(x, -1)
    keep = torch.ones_like(probs, dtype=torch.bool).scatter_(1, probs.topk(8).indices, False)
    return EmpiricalNull([probs[keep].sort().values])


@pytest.mark.parametrize("mode", ["softmax", "calibrated"])
def test_bh_is_monotone_in_alpha_and_respects_bounds(peaked_logits, null, mode):
    extra = {"p_values": mode, "null": null} if mode == "calibrated" else {}
    previous = None
    for alpha in [0.01, 0.05, 0.1, 0.3, 0.6, 1.0]:
        policy = make_policy({"name": "bh", "params": {"alpha": alpha, "min_k": 2, "max_k": 12, **extra}})
        policy.bind([site()])
        r = policy.route(peaked_logits, site())
        k = counts(r)
        assert k.min() >= 2 and k.max() <= 12
        if previous is not None:
            assert (k >= previous).all()
        previous = k
        assert r.weights.shape == r.indices.shape
        inactive = torch.arange(r.indices.shape[1]) >= k.unsqueeze(-1)
        assert (r.weights[inactive] == 0).all() and (r.weights[~inactive] > 0).all()


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.5])
def test_calibrated_thresholds_equal_bh_on_the_empirical_p_values(peaked_logits, null, alpha):
    """The policy compares statistics with precomputed thresholds; that must be BH on p-values."""
    from semoe.routing.calibration import bh_count

    params = {"alpha": alpha, "max_k": 64, "p_values": "calibrated", "null": null}
    policy = make_policy({"name": "bh", "params": params})
    policy.bind([site()])
    probs = torch.softmax(peaked_logits, -1).sort(-1, descending=True).values
    expected = bh_count(null.p_values(0, probs).double(), alpha).clamp(min=1)
    assert torch.equal(counts(policy.route(peaked_logits, site())), expected)


def test_softmax_p_values_hit_the_floor_calibrated_ones_do_not(peaked_logits, null):
    """Over 64 experts 1 − softmax is rejected only when the top probability is ≥ 1 − α/64."""
    softmax = make_policy({"name": "bh", "params": {"alpha": 0.1, "min_k": 2}})
    calibrated_params = {"alpha": 0.1, "min_k": 2, "p_values": "calibrated", "null": null}
    calibrated = make_policy({"name": "bh", "params": calibrated_params})
    for p in (softmax, calibrated):
        p.bind([site()])
    soft, cal = softmax.route(peaked_logits, site()), calibrated.route(peaked_logits, site())
    assert soft.floor.float().mean() > 0.95
    assert cal.floor.float().mean() < 0.2
    # calibrated BH selects every favoured expert of a peaked token (they are its most probable)
    assert all(counts(cal)[t] >= favoured(t) for t in range(0, 600, 3))


def test_bh_floor_and_ceiling_rates_are_recorded():
    model = tiny_moe("olmoe", num_experts=64)
    ids = token_ids(model, length=24, batch=2)
    with route_with(model, {"name": "bh", "params": {"alpha": 0.1, "min_k": 2}}, mode="analyze") as session:
        logits(model, ids)
    rows = session.stats.summary()
    assert all(r["floor_rate"] == 1.0 and r["ceiling_rate"] == 0.0 and r["experts_mean"] == 2 for r in rows)

    calib = [token_ids(model, length=64, seed=s) for s in range(4)]
    null = fit_empirical_null(model, calib)
    assert null.describe()["layers"] == 3 and null.describe()["calibration_tokens"] == 256
    spec = {"name": "bh", "params": {"alpha": 0.2, "min_k": 2, "max_k": 6, "p_values": "calibrated", "null": null}}
    with route_with(model, spec) as session:
        logits(model, ids)
    rows = session.stats.summary()
    assert all(r["floor_rate"] < 1.0 for r in rows)
    assert all(2 <= r["experts_mean"] <= 6 and r["floor_rate"] + r["ceiling_rate"] <= 1 for r in rows)
    assert sum(rows[0]["k_histogram"]) == ids.numel()


def test_calibrated_null_round_trips_through_a_file(tmp_path):
    model = tiny_moe("mixtral")
    null = fit_empirical_null(model, [{"input_ids": token_ids(model, 20), "attention_mask": torch.ones(1, 20)}])
    path = tmp_path / "null.safetensors"
    null.save(path)
    spec = {"name": "bh", "params": {"alpha": 0.5, "p_values": "calibrated", "null": str(path)}}
    ids = token_ids(model, batch=2)
    outs = []
    for n in (null, str(path)):
        spec["params"]["null"] = n
        with route_with(model, spec, guard=False):
            outs.append(logits(model, ids))
    assert torch.equal(*outs)


def test_bh_calibrated_without_null_explains_itself():
    model = tiny_moe("olmoe")
    with pytest.raises(Exception, match="needs a null"):
        with route_with(model, {"name": "bh", "params": {"p_values": "calibrated"}}):
            pass


def test_top_p_and_entropy_k_adapt_to_the_router_distribution():
    flat = torch.zeros(1, 16)
    sharp = torch.tensor([[12.0, 11.0] + [0.0] * 14])
    one_hot = torch.tensor([[30.0] + [0.0] * 15])
    s = site(num_experts=16, top_k=2)
    top_p = make_policy({"name": "top-p", "params": {"p": 0.9, "max_k": 12}})
    entropy = make_policy({"name": "entropy-k", "params": {"min_k": 1, "max_k": 10}})
    for policy in (top_p, entropy):
        policy.bind([s])
    assert counts(top_p.route(flat, s)).item() == 12 and top_p.route(flat, s).ceiling.item()
    assert counts(top_p.route(sharp, s)).item() == 2
    assert counts(entropy.route(flat, s)).item() == 10
    assert counts(entropy.route(one_hot, s)).item() == 1
    assert 1 < counts(entropy.route(sharp, s)).item() < 10
    renorm = make_policy({"name": "top-p", "params": {"p": 0.9, "renormalize": True}}).route(sharp, s)
    assert torch.allclose(renorm.weights.sum(-1), torch.ones(1))


def test_policy_params_are_validated():
    with pytest.raises(ValidationError):
        make_policy({"name": "bh", "params": {"alpha": 0}})
    with pytest.raises(ValidationError):
        make_policy({"name": "bh", "params": {"min_k": 4, "max_k": 2}})
    with pytest.raises(ValidationError):
        make_policy({"name": "topk", "params": {"top_k": 4}})


def test_guard_fires_on_a_no_op_override():
    model = tiny_moe("olmoe")
    # BH squeezed to exactly the model's top-2 is top-2 routing: nothing would change.
    with pytest.raises(RoutingNoOpError, match="no-op"):
        with route_with(model, {"name": "bh", "params": {"min_k": 2, "max_k": 2}}):
            pass
    assert all("forward" not in s.module.__dict__ for s in find_routers(model))
    with route_with(model, {"name": "bh", "params": {"min_k": 2, "max_k": 2}}, guard=False):
        pass  # an explicit opt-out is allowed


def test_guard_fires_when_a_policy_claims_a_change_it_does_not_make():
    from semoe.routing import POLICIES
    from semoe.routing.policies.topk import TopKPolicy

    @register_policy("test-claims-change")
    class ClaimsChange(TopKPolicy):
        def expects_change(self, site) -> bool:
            return True

    try:
        model = tiny_moe("qwen3_moe")
        with pytest.raises(RoutingNoOpError, match="chose exactly the model's own experts"):
            with route_with(model, "test-claims-change"):
                pass
    finally:
        POLICIES._items.pop("test-claims-change")


def test_guard_passes_real_changes_and_leaves_no_stats_behind():
    model = tiny_moe("olmoe")
    with route_with(model, {"name": "topk", "params": {"k": 3}}) as session:
        assert all(r["tokens"] == 0 for r in session.stats.summary())
