"""RoE: τ maps, K-sample ensemble decoding, and the clean KV cache."""

from __future__ import annotations

import pytest
import torch

from semoe.routing import RoutingError, create_tau_map, roe_generate, roe_next_token_probs
from semoe.routing.decoding import greedy_decode
from semoe.routing.memory import cache_bytes
from tests.routing.test_routing_adapters import logits, one_thread, tiny_moe, token_ids  # noqa: F401


def greedy_by_recomputation(model, ids, new_tokens: int) -> torch.Tensor:
    """Reference greedy decoding: the whole sequence recomputed every step, no cache."""
    for _ in range(new_tokens):
        ids = torch.cat([ids, logits(model, ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_tau_map_zeroes_the_first_and_last_layers():
    assert create_tau_map(5, 0.3, skip=1) == [0.0, 0.3, 0.3, 0.3, 0.0]
    assert create_tau_map(6, 0.3, skip=2) == [0.0, 0.0, 0.3, 0.3, 0.0, 0.0]
    drawn = create_tau_map(6, (0.1, 0.5), skip=1, seed=3)
    assert drawn == create_tau_map(6, (0.1, 0.5), skip=1, seed=3)
    assert drawn[0] == drawn[-1] == 0 and all(0.1 <= t <= 0.5 for t in drawn[1:-1])


@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe", "mixtral"])
def test_roe_with_zero_tau_is_greedy_decoding(family):
    model = tiny_moe(family)
    prompt = token_ids(model, length=6)
    out = roe_generate(model, prompt, K=4, tau_map=0.0, max_new_tokens=10)
    assert torch.equal(out.sequences, greedy_by_recomputation(model, prompt, 10))


def test_roe_clean_cache_is_the_clean_paths_cache():
    model = tiny_moe("olmoe")
    prompt = token_ids(model, length=6)
    out = roe_generate(model, prompt, K=8, tau_map=[0.0, 3.0, 0.0], max_new_tokens=8)
    assert out.stats.summary()[1]["overlap"] < 0.9  # the noisy copies did route differently
    with torch.no_grad():
        reference = model(input_ids=out.sequences[:, :-1], use_cache=True).cache
    assert len(reference.layers) == len(out.cache.layers)
    for ref, got in zip(reference.layers, out.cache.layers):
        assert got.keys.shape == ref.keys.shape == (1, 2, out.sequences.shape[1] - 1, 8)
        torch.testing.assert_close(got.keys, ref.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.values, ref.values, atol=1e-5, rtol=1e-5)
    baseline = greedy_decode(model, prompt, 8)
    assert cache_bytes(out.cache) == baseline.kv_cache_bytes


def test_roe_averages_noisy_samples():
    model = tiny_moe("qwen3_moe")
    ids = token_ids(model, length=10)
    clean = torch.softmax(logits(model, ids)[0], -1)
    same = roe_next_token_probs(model, ids, K=3, tau_map=0.0, chunk=4).probs
    torch.testing.assert_close(same, clean, atol=1e-5, rtol=1e-4)
    noisy = roe_next_token_probs(model, ids, K=6, tau_map=[0.0, 5.0, 0.0], chunk=4)
    assert (noisy.probs - clean).abs().max() > 100 * max((same - clean).abs().max(), 1e-8)
    torch.testing.assert_close(noisy.probs.sum(-1), torch.ones(10))
    assert noisy.stats.summary()[0]["overlap"] == 1.0 and noisy.stats.summary()[1]["overlap"] < 1.0


def test_roe_refuses_what_it_cannot_do():
    model = tiny_moe("olmoe")
    with pytest.raises(ValueError, match="one sequence at a time"):
        roe_generate(model, token_ids(model, batch=2), K=2, max_new_tokens=1)
    with pytest.raises(RoutingError, match="tau_map has 2 entries"):
        roe_generate(model, token_ids(model), K=2, tau_map=[0.1, 0.1], max_new_tokens=1)


@pytest.mark.parametrize("router_type", ["linear", "gru", "rnn"])
def test_roe_on_the_small_moe_lm(router_type):
    """MoeLM runs the K copies as batch rows; only the clean row's keys, values and recurrent
    router state are kept, so τ = 0 is greedy decoding and the cache is the clean path's."""
    from semoe.moe_lm.model import MoeLM
    from tests.support.helpers import tiny_moe_lm_config

    torch.manual_seed(0)
    model = MoeLM(tiny_moe_lm_config(n_layers=3, router_type=router_type)).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.mlp.gate.weight.mul_(20)
    prompt = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(0))
    clean = roe_generate(model, prompt, K=4, tau_map=0.0, max_new_tokens=8)
    assert torch.equal(clean.sequences, greedy_by_recomputation(model, prompt, 8))
    noisy = roe_generate(model, prompt, K=6, tau_map=[0.0, 5.0, 0.0], max_new_tokens=8)
    assert noisy.stats.summary()[1]["overlap"] < 0.9
    with torch.no_grad():
        reference = model(noisy.sequences[:, :-1], use_cache=True).cache
    for name in ("keys", "values"):
        for ref, got in zip(getattr(reference, name), getattr(noisy.cache, name)):
            assert got.shape == ref.shape == (1, 4, noisy.sequences.shape[1] - 1, 8)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for ref, got in zip(reference.router_carries, noisy.cache.router_carries):
        assert (ref is None) == (got is None)
        if ref is not None:
            torch.testing.assert_close(got.state, ref.state, atol=1e-5, rtol=1e-5)
    probs = roe_next_token_probs(model, prompt, K=3, tau_map=0.0).probs
    torch.testing.assert_close(probs, torch.softmax(logits(model, prompt)[0], -1), atol=1e-5, rtol=1e-4)
