"""Finding routers in HF MoE models and installing policies reversibly.

Also the home of the tiny random-config models the other ``test_routing_*`` modules import.
"""

from __future__ import annotations

import pytest
import torch

from semoe.routing import RoutingError, UnsupportedModelError, find_routers, route_with

COMMON = dict(
    vocab_size=101,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
FAMILIES = ["olmoe", "mixtral", "qwen2_moe", "qwen3_moe", "openrag"]


def tiny_moe(family: str, num_experts: int = 8, **overrides):
    """3 layers, top-2; Qwen2-MoE keeps layer 1 dense (mlp_only_layers) and a shared expert,
    Qwen3-MoE renormalises, OLMoE does not. Router weights are scaled up so routing is decisive
    (at init all experts are nearly tied and float noise could flip choices). Open-RAG (4 layers,
    top-2 of 8 adapters in every Llama MLP) comes from ``tests.support.openrag``."""
    import transformers as tf

    if family == "openrag":
        from tests.support.openrag import tiny_openrag

        return tiny_openrag(num_experts=num_experts, **overrides)

    kw = dict(COMMON, num_experts_per_tok=2, **overrides)
    if family == "olmoe":
        model = tf.OlmoeForCausalLM(tf.OlmoeConfig(**kw, intermediate_size=16, num_experts=num_experts))
    elif family == "mixtral":
        model = tf.MixtralForCausalLM(tf.MixtralConfig(**kw, intermediate_size=16, num_local_experts=num_experts))
    elif family == "qwen2_moe":
        cfg = tf.Qwen2MoeConfig(
            **kw,
            intermediate_size=32,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
            num_experts=num_experts,
            mlp_only_layers=[1],
        )
        model = tf.Qwen2MoeForCausalLM(cfg)
    elif family == "qwen3_moe":
        cfg = tf.Qwen3MoeConfig(
            **kw,
            intermediate_size=32,
            moe_intermediate_size=16,
            num_experts=num_experts,
            head_dim=8,
            norm_topk_prob=True,
        )
        model = tf.Qwen3MoeForCausalLM(cfg)
    else:
        raise ValueError(family)
    torch.manual_seed(0)
    model.init_weights()
    with torch.no_grad():
        for site in find_routers(model):
            site.module.weight.mul_(30)
    return model.eval()


def token_ids(model, length: int = 12, batch: int = 1, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (batch, length), generator=gen)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy machine their barriers cost more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


EXPECTED = {  # router class, MoE layers, renormalises
    "olmoe": ("OlmoeTopKRouter", [0, 1, 2], False),
    "mixtral": ("MixtralTopKRouter", [0, 1, 2], True),
    "qwen2_moe": ("Qwen2MoeTopKRouter", [0, 2], False),
    "qwen3_moe": ("Qwen3MoeTopKRouter", [0, 1, 2], True),
    "openrag": ("OpenRagTopKRouter", [0, 1, 2, 3], True),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_finds_every_router(family):
    model = tiny_moe(family)
    cls, layers, renorm = EXPECTED[family]
    sites = find_routers(model)
    assert [type(s.module).__name__ for s in sites] == [cls] * len(layers)
    assert [s.decoder_layer for s in sites] == layers
    assert [s.index for s in sites] == list(range(len(layers)))
    assert all(s.top_k == 2 and s.num_experts == 8 and s.renormalize is renorm for s in sites)


@pytest.mark.parametrize("family", FAMILIES)
def test_own_k_reproduces_and_other_k_changes_logits(family):
    model = tiny_moe(family)
    ids = token_ids(model, batch=2)
    base = logits(model, ids)
    with route_with(model, "topk") as session:
        same = logits(model, ids)
    assert (same - base).abs().max() <= 1e-5
    assert session.stats.experts_per_token() == 2
    with route_with(model, {"name": "topk", "params": {"k": 5}}) as session:
        other = logits(model, ids)
    assert (other - base).abs().max() > 1e-3
    assert [r["experts_mean"] for r in session.stats.summary()] == [5.0] * len(EXPECTED[family][1])


@pytest.mark.parametrize("family", FAMILIES)
def test_unpatch_restores_exactly(family):
    model = tiny_moe(family)
    ids = token_ids(model)
    base = logits(model, ids)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    routers = [s.module for s in find_routers(model)]
    with pytest.raises(RuntimeError, match="boom"):
        with route_with(model, {"name": "topk", "params": {"k": 8}}):
            assert all("forward" in r.__dict__ for r in routers)
            raise RuntimeError("boom")
    for router in routers:
        assert "forward" not in router.__dict__
        assert router.forward.__func__ is type(router).forward
        assert router.top_k == 2
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert torch.equal(logits(model, ids), base)


@pytest.mark.parametrize("family", FAMILIES)
def test_analyze_mode_leaves_outputs_unchanged(family):
    model = tiny_moe(family)
    ids = token_ids(model, batch=2)
    base = logits(model, ids)
    with route_with(model, {"name": "topk", "params": {"k": 6}}, mode="analyze") as session:
        seen = logits(model, ids)
    assert torch.equal(seen, base)
    rows = session.stats.summary()
    assert all(r["experts_mean"] == 6 and r["tokens"] == ids.numel() for r in rows)
    assert all(r["overlap"] == 1.0 for r in rows)  # top-6 contains the model's top-2
    assert all(sum(r["expert_counts"]) == 6 * ids.numel() for r in rows)


@pytest.mark.parametrize("family,renormalize", [("olmoe", True), ("mixtral", False), ("qwen3_moe", False)])
def test_renormalisation_can_be_flipped(family, renormalize):
    model = tiny_moe(family)
    ids = token_ids(model)
    base = logits(model, ids)
    with route_with(model, {"name": "topk", "params": {"renormalize": renormalize}}) as session:
        flipped = logits(model, ids)
    assert (flipped - base).abs().max() > 1e-4
    assert all(r["overlap"] == 1.0 for r in session.stats.summary())  # same experts, other weights


def test_policy_cannot_be_installed_twice():
    model = tiny_moe("olmoe")
    with route_with(model, "topk"):
        with pytest.raises(RoutingError, match="already has a routing policy"):
            with route_with(model, "topk"):
                pass
    assert all("forward" not in s.module.__dict__ for s in find_routers(model))


def test_k_above_num_experts_is_refused():
    model = tiny_moe("olmoe")
    with pytest.raises(RoutingError, match="k=9 > num_experts=8"):
        with route_with(model, {"name": "topk", "params": {"k": 9}}):
            pass


def test_dense_model_is_unsupported_with_a_clear_message():
    import transformers as tf

    cfg = tf.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    with pytest.raises(UnsupportedModelError, match="no supported MoE router in LlamaForCausalLM.*OlmoeTopKRouter"):
        find_routers(tf.LlamaForCausalLM(cfg))


def test_unknown_moe_layout_names_its_modules():
    class FooSparseMoeBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = torch.nn.Linear(4, 4)

    model = torch.nn.Sequential(FooSparseMoeBlock())
    with pytest.raises(UnsupportedModelError, match="MoE-looking modules here: FooSparseMoeBlock"):
        find_routers(model)


def test_adapter_fails_clearly_when_transformers_lacks_the_router_class():
    from semoe.routing.adapters.olmoe import OlmoeAdapter

    class Renamed(OlmoeAdapter):
        router_classes = ("OlmoeRouterOfAnotherVersion",)
        _verified = False

    with pytest.raises(UnsupportedModelError, match=r"transformers 5\.\d+.*defines no OlmoeRouterOfAnotherVersion"):
        Renamed.verify()


def test_mirror_router_interface_is_checked():
    from semoe.routing.adapters.olmoe import OlmoeAdapter

    with pytest.raises(UnsupportedModelError, match="no integer 'top_k'"):
        OlmoeAdapter.check_router(torch.nn.Linear(2, 2), "layers.0.mlp.gate")


def test_semoe_moe_lm_routers_are_supported():
    moe_lm = pytest.importorskip("semoe.moe_lm.model")
    from tests.support.helpers import tiny_moe_lm_config

    for router_type in ("linear", "gru"):
        torch.manual_seed(0)
        cfg = tiny_moe_lm_config(router_type=router_type)
        model = moe_lm.MoeLM(cfg).eval()
        ids = torch.randint(0, 258, (2, 10), generator=torch.Generator().manual_seed(0))
        base = logits(model, ids)
        sites = find_routers(model)
        assert [s.adapter.family for s in sites] == ["semoe_moe_lm"] * 2
        with route_with(model, "topk"):
            assert torch.equal(logits(model, ids), base)
        with route_with(model, {"name": "topk", "params": {"k": 4}}) as session:
            assert (logits(model, ids) - base).abs().max() > 1e-6
        assert session.stats.experts_per_token() == 4
        assert all("forward" not in s.module.__dict__ for s in sites)
        assert torch.equal(logits(model, ids), base)
