"""Open-RAG natively on transformers 5.x: forward against a reference written here, the released
checkpoint's key layout and config, the reflection-token tokenizer, every routing policy on its
adapter MoE, and RoE decoding (tiny random model from ``tests.support.openrag``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semoe.models.openrag import REFLECTION_TOKENS, is_openrag_config
from semoe.routing import RoutingNoOpError, create_tau_map, find_routers, fit_empirical_null, roe_generate, route_with
from semoe.routing.decoding import greedy_decode
from semoe.routing.memory import cache_bytes
from tests.routing.test_routing_adapters import logits, one_thread, token_ids  # noqa: F401
from tests.routing.test_routing_roe import greedy_by_recomputation
from tests.support.openrag import make_tiny_openrag, reflection_tokenizer, tiny_openrag

LAYERS = 4


@pytest.fixture(scope="module")
def model():
    return tiny_openrag()


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory) -> str:
    return make_tiny_openrag(tmp_path_factory.mktemp("openrag"))


def reference_forward(state: dict, cfg, ids: torch.Tensor) -> torch.Tensor:
    """Open-RAG's forward, straight from the released modeling_openrag.py's equations on the
    state dict: Llama-2 attention (rotate-half RoPE, GQA, causal), SwiGLU MLP, then per token
    the top-k router logits, softmax over them, and Σ_e w_e (y + scale · up_e(gelu(down_e(y))))
    with y the dense MLP output."""
    hd, heads, kv = cfg.hidden_size // cfg.num_attention_heads, cfg.num_attention_heads, cfg.num_key_value_heads
    T = ids.shape[1]

    def norm(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    def rope(x):  # (B, H, T, hd)
        inv = 1.0 / (cfg.rope_parameters["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(T).float(), inv)
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
        return x * cos + torch.cat([-x[..., hd // 2 :], x[..., : hd // 2]], -1) * sin

    x = state["model.embed_tokens.weight"][ids]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(cfg.num_hidden_layers):

        def p(name: str, i: int = i) -> torch.Tensor:
            return state[f"model.layers.{i}.{name}.weight"]

        h = norm(x, p("input_layernorm"))
        q = (h @ p("self_attn.q_proj").T).view(1, T, heads, hd).transpose(1, 2)
        k = (h @ p("self_attn.k_proj").T).view(1, T, kv, hd).transpose(1, 2)
        v = (h @ p("self_attn.v_proj").T).view(1, T, kv, hd).transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
        att = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(1, T, -1) @ p("self_attn.o_proj").T
        h = norm(x, p("post_attention_layernorm"))
        y = (F.silu(h @ p("mlp.gate_proj").T) * (h @ p("mlp.up_proj").T)) @ p("mlp.down_proj").T
        top, chosen = torch.topk(h @ p("mlp.moe_adapter.router").T, cfg.topk, dim=-1)
        w = top.softmax(-1)
        out = torch.zeros_like(y)
        for slot in range(cfg.topk):
            for e in range(cfg.num_experts):
                sel = chosen[..., slot] == e
                down, up = (
                    p(f"mlp.moe_adapter.experts.expert_{e}.adapter_down"),
                    p(f"mlp.moe_adapter.experts.expert_{e}.adapter_up"),
                )
                adapted = y[sel] + cfg.moe_scaling * (F.gelu(y[sel] @ down.T) @ up.T)
                out[sel] += w[..., slot][sel].unsqueeze(-1) * adapted
        x = x + out
    return norm(x, state["model.norm.weight"]) @ state["lm_head.weight"].T


def test_forward_equals_the_reference_forward(model):
    ids = token_ids(model, length=11)
    state = {k: v.float() for k, v in model.state_dict().items()}
    got = logits(model, ids)
    want = reference_forward(state, model.config, ids)
    assert (got - want).abs().max() <= 1e-5
    assert got.abs().max() > 0.1  # not a trivially small output


def test_released_checkpoint_layout_loads_with_no_missing_or_unexpected_keys(released_dir):
    from safetensors import safe_open

    from semoe.models.openrag.modeling import OpenRagForCausalLM, load_openrag, read_config

    config = json.loads((Path(released_dir) / "config.json").read_text())
    assert config["model_type"] == "llama" and "modeling_openrag" in config["auto_map"]["AutoModelForCausalLM"]
    assert is_openrag_config(config) and not is_openrag_config({"model_type": "llama", "hidden_size": 8})
    with safe_open(f"{released_dir}/model.safetensors", "pt") as f:
        keys = set(f.keys())
    # The release's names (modeling_openrag.py: LlamaMLP.moe_adapter = OpenRAGGateAdapter).
    assert "model.layers.3.mlp.moe_adapter.router.weight" in keys
    assert "model.layers.0.mlp.moe_adapter.experts.expert_7.adapter_up.weight" in keys
    assert len([k for k in keys if ".moe_adapter." in k]) == LAYERS * (1 + 8 * 2)

    native, info = OpenRagForCausalLM.from_pretrained(
        released_dir, config=read_config(released_dir), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert set(native.state_dict()) == keys
    loaded = load_openrag(released_dir, dtype=torch.float32).eval()
    assert loaded.config.model_type == "openrag" and loaded.config.topk == 2 and loaded.config.adapter_dim == 16
    reference = tiny_openrag(len(reflection_tokenizer()))
    ids = token_ids(reference)
    assert torch.equal(logits(loaded, ids), logits(reference, ids))


def test_semoe_loader_takes_the_native_class_without_remote_code(released_dir, tmp_path):
    """transformers alone would load the released config as a plain Llama and drop the adapters."""
    from semoe.models.loading import load_model

    model, tok = load_model(released_dir, str(tmp_path), "float32", "cpu")
    assert type(model).__name__ == "OpenRagForCausalLM"
    assert [s.adapter.family for s in find_routers(model)] == ["openrag"] * LAYERS
    assert tok.convert_tokens_to_ids("[Retrieval]") != tok.unk_token_id


def test_a_checkpoint_without_its_adapters_is_an_error(released_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from semoe.models.loading import ModelLoadError, load_model

    broken = tmp_path / "broken"
    shutil.copytree(released_dir, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["model.layers.2.mlp.moe_adapter.experts.expert_5.adapter_down.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"lacks parameters \(1, e.g. model.layers.2.mlp.moe_adapter.experts"):
        load_model(str(broken), str(tmp_path), "float32", "cpu")


def test_native_model_type_loads_through_the_auto_classes(model, tmp_path):
    from transformers import AutoModelForCausalLM

    import semoe.models.openrag.modeling  # noqa: F401  (registers the openrag model type)

    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "openrag"
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again).__name__ == "OpenRagForCausalLM"
    ids = token_ids(model)
    assert torch.equal(logits(again, ids), logits(model, ids))


def test_moe_dtype_keeps_the_adapters_in_their_dtype(tmp_path):
    from semoe.models.openrag.modeling import load_openrag, save_released_layout

    full = tiny_openrag()
    mixed = tiny_openrag(moe_dtype="bfloat16")
    moe = mixed.model.layers[0].mlp.moe_adapter
    assert moe.router.weight.dtype == moe.experts.expert_0.adapter_down.weight.dtype == torch.bfloat16
    assert mixed.model.layers[0].mlp.gate_proj.weight.dtype == torch.float32
    ids = token_ids(full)
    out = logits(mixed, ids)
    assert out.dtype == torch.float32
    assert 0 < (out - logits(full, ids)).abs().max() < 0.05  # bf16 adapters: close, not equal
    save_released_layout(mixed, tmp_path)
    loaded = load_openrag(str(tmp_path), dtype=torch.float32)
    assert loaded.model.layers[1].mlp.moe_adapter.experts.expert_3.adapter_up.weight.dtype == torch.bfloat16
    assert loaded.model.layers[1].mlp.down_proj.weight.dtype == torch.float32
    assert torch.equal(logits(loaded.eval(), ids), out)


def test_tokenizer_carries_the_reflection_tokens(released_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(released_dir)
    ids = tok.convert_tokens_to_ids(list(REFLECTION_TOKENS))
    assert len(set(ids)) == len(REFLECTION_TOKENS) and tok.unk_token_id not in ids
    assert {"[Utility:1]", "[Utility:5]", "[No support / Contradictory]", "<paragraph>"} <= set(REFLECTION_TOKENS)
    text = "Who?[Retrieval]<paragraph>Paris is in France.</paragraph>[Relevant]Paris.[Fully supported][Utility:5]"
    encoded = tok(text, add_special_tokens=False)["input_ids"]
    for token in ("[Retrieval]", "<paragraph>", "</paragraph>", "[Relevant]", "[Fully supported]", "[Utility:5]"):
        assert encoded.count(tok.convert_tokens_to_ids(token)) == 1
    assert tok.decode(encoded) == text
    assert max(ids) < json.loads((Path(released_dir) / "config.json").read_text())["vocab_size"]


# ---------------------------------------------------------------- routing policies


def test_routers_are_found_as_the_openrag_family(model):
    sites = find_routers(model)
    assert [s.path for s in sites] == [f"model.layers.{i}.mlp.moe_adapter.router" for i in range(LAYERS)]
    assert all(s.adapter.family == "openrag" and s.top_k == 2 and s.num_experts == 8 for s in sites)
    assert all(s.renormalize and s.experts is model.get_submodule(s.path[: -len("router")] + "experts") for s in sites)


@pytest.mark.parametrize("k", range(1, 9))
def test_topk_with_any_k(model, k):
    ids = token_ids(model, batch=2)
    base = logits(model, ids)
    with route_with(model, {"name": "topk", "params": {"k": k}}) as session:
        out = logits(model, ids)
    assert [r["experts_mean"] for r in session.stats.summary()] == [float(k)] * LAYERS
    if k == 2:  # the model's own routing
        assert (out - base).abs().max() <= 1e-5
    else:
        assert (out - base).abs().max() > 1e-3
    assert torch.equal(logits(model, ids), base)  # unpatched again


def test_bh_and_adaptive_k_vary_the_adapters_per_token(model):
    ids = token_ids(model, length=16, batch=2)
    calib = [token_ids(model, length=32, seed=s) for s in range(3)]
    null = fit_empirical_null(model, calib)
    # Softmax p-values (1 − p over 8 experts) reject only p ≥ 1 − α/8: BH stays at its floor of 2,
    # which is the model's own top-2, so the no-op guard refuses it in patch mode.
    softmax_bh = {"name": "bh", "params": {"alpha": 0.3, "min_k": 2, "max_k": 6}}
    with route_with(model, softmax_bh, mode="analyze") as session:
        logits(model, ids)
    assert all(r["floor_rate"] == 1.0 and r["experts_mean"] == 2 for r in session.stats.summary())
    with pytest.raises(RoutingNoOpError):
        with route_with(model, softmax_bh):
            pass
    specs = [
        {"name": "bh", "params": {"alpha": 0.3, "min_k": 1, "max_k": 6, "p_values": "calibrated", "null": null}},
        {"name": "top-p", "params": {"p": 0.9, "max_k": 8}},
        {"name": "entropy-k", "params": {"min_k": 1, "max_k": 8}},
    ]
    base = logits(model, ids)
    for spec in specs:  # (test_routing_dispatch: only the selected adapters run, same logits as padded)
        with route_with(model, spec) as session:
            out = logits(model, ids)
        rows = session.stats.summary()
        assert all(sum(r["k_histogram"]) == ids.numel() for r in rows)
        assert any(sum(1 for n in r["k_histogram"] if n) > 1 for r in rows), spec  # k varies per token
        assert (out - base).abs().max() > 1e-3


def test_heatmap_is_layers_by_adapters(model, tmp_path):
    """The routing flow's heatmap data: one row per layer, one column per adapter expert."""
    from semoe.routing.heatmaps import write_heatmap_png

    ids = token_ids(model, batch=2)
    with route_with(model, {"name": "topk", "params": {"k": 3}}) as session:
        logits(model, ids)
    matrix = session.stats.activation_matrix()
    assert len(matrix) == LAYERS and all(len(row) == 8 and sum(row) == 3 * ids.numel() for row in matrix)
    write_heatmap_png(tmp_path / "heat.png", matrix)
    assert (tmp_path / "heat.png").read_bytes().startswith(b"\x89PNG")


def test_no_op_guard(model):
    # BH squeezed to exactly top-2 with renormalised weights is the model's own routing.
    with pytest.raises(RoutingNoOpError, match="no-op"):
        with route_with(model, {"name": "bh", "params": {"min_k": 2, "max_k": 2}}):
            pass
    with route_with(model, {"name": "topk", "params": {"renormalize": False}}) as session:
        assert all(r["tokens"] == 0 for r in session.stats.summary())  # a real change passes the probe
    assert all("forward" not in s.module.__dict__ for s in find_routers(model))


# ---------------------------------------------------------------- RoE


def test_roe_with_zero_tau_is_greedy_decoding(model):
    prompt = token_ids(model, length=6)
    out = roe_generate(model, prompt, K=8, tau_map=0.0, max_new_tokens=12)
    assert torch.equal(out.sequences, greedy_by_recomputation(model, prompt, 12))
    assert torch.equal(out.sequences, greedy_decode(model, prompt, 12).sequences)


def test_roe_tau_map_on_openrag():
    sites = find_routers(tiny_openrag(num_hidden_layers=6))
    from semoe.routing.policies.roe import RoEPolicy

    drawn = RoEPolicy(tau=(0.0, 0.01), seed=3)
    drawn.bind(sites)
    assert drawn.taus[0] == drawn.taus[-1] == 0.0 and all(0 <= t <= 0.01 for t in drawn.taus)
    assert len(set(drawn.taus[1:-1])) == 4  # one draw per noisy layer
    again, other = RoEPolicy(tau=(0.0, 0.01), seed=3), RoEPolicy(tau=(0.0, 0.01), seed=4)
    again.bind(sites), other.bind(sites)
    assert again.taus == drawn.taus == create_tau_map(6, (0.0, 0.01), seed=3) and other.taus != drawn.taus
    fixed = RoEPolicy(tau=0.05)
    fixed.bind(sites)
    assert fixed.taus == [0.0, 0.05, 0.05, 0.05, 0.05, 0.0]


def test_roe_keeps_the_clean_paths_cache(model):
    prompt = token_ids(model, length=6)
    out = roe_generate(model, prompt, K=8, tau_map=[0.0, 2.0, 2.0, 0.0], max_new_tokens=8)
    overlap = [r["overlap"] for r in out.stats.summary()]
    assert overlap[0] == overlap[-1] == 1.0 and min(overlap[1:-1]) < 0.9  # noisy copies routed differently
    with torch.no_grad():
        reference = model(input_ids=out.sequences[:, :-1], use_cache=True).cache
    for ref, got in zip(reference.layers, out.cache.layers):
        torch.testing.assert_close(got.keys, ref.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.values, ref.values, atol=1e-5, rtol=1e-5)
    assert cache_bytes(out.cache) == greedy_decode(model, prompt, 8).kv_cache_bytes


# ---------------------------------------------------------------- listing and the GPU config


def test_semoe_ls_lists_the_openrag_family(capsys):
    from semoe.cli import main

    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    families = out.split("model families (routing):")[1]
    assert "openrag" in families and "olmoe" in families


def test_gpu_config_validates_without_downloading():
    from semoe.checks import check_config
    from semoe.config import load_config
    from semoe.models.openrag import RELEASED_ID

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "routing-openrag.yaml")
    check_config(cfg)
    r = cfg.routing
    assert [m.spec for m in r.models] == [RELEASED_ID] and (r.dtype, r.device) == ("bfloat16", "cuda")
    roe = {
        (p.params["samples"], tuple(p.params["tau"]) if isinstance(p.params["tau"], list) else p.params["tau"])
        for p in r.policies
        if p.name == "roe"
    }
    assert roe == {(4, (0.0, 0.01)), (8, (0.0, 0.01)), (4, 0.05), (8, 0.05)}
    assert r.baseline and {d.display_name for d in cfg.datasets} == {"hotpotqa", "2wiki"}
    assert {d.name for d in cfg.datasets} == {"openrag"} and r.qa.method.name == "reflection"
