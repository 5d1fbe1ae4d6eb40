"""The MoE LM: cached decoding equals recomputation for every router, recurrent state is scoped
to one sequence, the losses behave, checkpoints are reused, and the CLI prints what it should."""

from __future__ import annotations

import io

import pytest
import torch
import yaml

from semoe.config import MoeLMConfig
from semoe.moe_lm.inference import generate
from semoe.moe_lm.model import MoeLM, load_balancing_loss
from semoe.moe_lm.routers import RouterCarry, SemoeLinearRouter, SemoeRecurrentRouter, build_cell
from semoe.moe_lm.tokenizer import ByteTokenizer
from semoe.moe_lm.training import MOE_TRAINING_COLUMNS, checkpoint_key, load_or_train, train
from semoe.storage.artifacts import ArtifactCache
from semoe.storage.results import ResultStore
from tests.support.helpers import tiny_moe_lm_config

ROUTERS = [("linear", "sequence"), ("gru", "sequence"), ("gru", "layers"), ("rnn", "sequence"), ("rnn", "layers")]
TEXTS = [
    "Tamine Zorell was a composer born in Falvik in 1973.",
    "Falvik is a town on the river Orsa, founded in 1802.",
    "Galdathal Music is a record label founded by Tamine Zorell.",
    "The Orsa Letters is a novel written by Ivo Marrec in 1921.",
] * 4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine the threads' barriers
    cost far more than the work (seen: 40 s instead of 3 s for the training test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> MoeLMConfig:
    return tiny_moe_lm_config(**{"batch_size": 4, "steps": 4, "warmup_steps": 2, "lr": 1e-2, **overrides})


def tiny_model(router_type="gru", recurrent_mode="sequence", **overrides) -> MoeLM:
    torch.manual_seed(0)
    model = MoeLM(tiny(router_type=router_type, recurrent_mode=recurrent_mode, **overrides)).eval()
    with torch.no_grad():  # sharper routing than at init, so wrong state would change expert choices
        for layer in model.layers:
            layer.mlp.gate.weight.mul_(20)
            if isinstance(layer.mlp.gate, SemoeRecurrentRouter):
                layer.mlp.gate.state_weight.mul_(20)
    return model


def indices(out) -> torch.Tensor:
    return torch.stack([r.indices for r in out.routing])  # (layers, tokens, k)


@pytest.mark.parametrize("router_type,mode", ROUTERS)
def test_cached_decoding_equals_recomputation(router_type, mode):
    model = tiny_model(router_type, mode)
    ids = torch.randint(0, 258, (2, 14), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        chunks = [model(ids[:, :5], cache), model(ids[:, 5:8], cache)]  # prefill, then a multi-token chunk
        chunks += [model(ids[:, t : t + 1], cache) for t in range(8, 14)]
    assert cache.length == 14
    torch.testing.assert_close(torch.cat([c.logits for c in chunks], dim=1), full.logits, atol=1e-5, rtol=1e-5)
    stepwise = torch.cat([indices(c).view(2, 2, -1, 2) for c in chunks], dim=2)  # (layers, batch, seq, k)
    assert torch.equal(stepwise, indices(full).view(2, 2, 14, 2))


@pytest.mark.parametrize("router_type,mode", ROUTERS)
def test_sequences_are_independent(router_type, mode):
    """Batched rows equal separate runs, and a previous call leaves no router state behind."""
    model = tiny_model(router_type, mode)
    a, b = torch.randint(0, 258, (2, 1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        alone_b = model(b).logits
        batched = model(torch.cat([a, b])).logits
        torch.testing.assert_close(batched[0:1], model(a).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[1:2], alone_b, atol=1e-5, rtol=1e-5)
        assert torch.equal(model(b).logits, alone_b)
    assert all(getattr(layer.mlp.gate, "carry", None) is None for layer in model.layers)


def test_recurrent_modes_carry_state_where_they_should():
    """sequence mode: a token's routing depends on earlier tokens; layers mode: only on itself and
    on the state handed over from the previous layer."""
    x = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(3))
    changed = x.clone()
    changed[0, 0] += 1.0
    for mode, depends_on_past in [("sequence", True), ("layers", False)]:
        router = SemoeRecurrentRouter(tiny(recurrent_mode=mode), build_cell(tiny()))
        with torch.no_grad():
            diff = (router(x)[0] - router(changed)[0])[1:].abs().max().item()
        assert (diff > 1e-6) == depends_on_past, mode

    router = SemoeRecurrentRouter(tiny(recurrent_mode="layers"), build_cell(tiny()))
    carry = RouterCarry(batch_size=1)
    with torch.no_grad(), router.carrying(carry):
        first = router(x)[0]
        second = router(x)[0]  # same input, but now starting from the state left by "layer 0"
    assert carry.state.shape == (1, 6, 8) and router.carry is None
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("mode", ["sequence", "layers"])
def test_model_hands_router_state_to_the_right_place(mode):
    """layers: layer 1's router starts from layer 0's per-token state; sequence: from its own
    state at the end of the previous chunk (zeros at the start of a sequence)."""
    model = tiny_model("gru", mode)
    seen = []
    model.layers[1].mlp.gate.register_forward_pre_hook(lambda router, args: seen.append(router.carry.state))
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, 258, (2, 5)), cache)
        model(torch.randint(0, 258, (2, 1)), cache)
    if mode == "layers":
        assert [s.shape for s in seen] == [(1, 10, 8), (1, 2, 8)]
    else:
        assert seen[0] is None and seen[1].shape == (1, 2, 8)


def test_routers_mirror_olmoe_interface():
    from transformers import OlmoeConfig
    from transformers.models.olmoe.modeling_olmoe import OlmoeTopKRouter

    cfg = tiny(norm_topk_prob=True)
    olmoe = OlmoeTopKRouter(OlmoeConfig(hidden_size=32, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True))
    ours = SemoeLinearRouter(cfg)
    olmoe.weight.data.copy_(ours.weight.data)
    x = torch.randn(3, 5, 32)
    for a, b in zip(ours(x), olmoe(x)):
        torch.testing.assert_close(a, b)
    recurrent = SemoeRecurrentRouter(cfg, build_cell(cfg))
    logits, scores, idx = recurrent(x)
    assert (logits.shape, scores.shape, idx.shape) == ((15, 4), (15, 2), (15, 2))
    for router in (ours, recurrent):
        assert (router.top_k, router.num_experts, router.norm_topk_prob, router.hidden_dim) == (2, 4, True, 32)
        assert router.weight.shape == olmoe.weight.shape


def test_layers_mode_shares_one_cell_and_checkpoints_it(tmp_path):
    from semoe.moe_lm.training import load_checkpoint, save_checkpoint

    model = tiny_model("gru", "layers")
    assert model.layers[0].mlp.gate.cell is model.layers[1].mlp.gate.cell
    save_checkpoint(tmp_path, model, [])
    loaded, _, _ = load_checkpoint(tmp_path)
    assert loaded.layers[0].mlp.gate.cell is loaded.layers[1].mlp.gate.cell
    ids = torch.randint(0, 258, (1, 10))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_aux_loss_is_one_when_balanced_and_grows_with_imbalance():
    balanced = torch.zeros(32, 4)
    for i in range(32):  # token i prefers experts i and i + 1 (mod 4): every expert gets a quarter
        balanced[i, i % 4], balanced[i, (i + 1) % 4] = 5, 3
    skewed = torch.zeros(32, 4)
    skewed[:, 0], skewed[:, 1] = 5, 3  # every token prefers experts 0 and 1
    skewed.requires_grad_(True)
    low = load_balancing_loss([balanced], top_k=2, num_experts=4)
    high = load_balancing_loss([skewed], top_k=2, num_experts=4)
    assert torch.isclose(low, torch.tensor(1.0)) and high > 1.5
    torch.testing.assert_close(load_balancing_loss([balanced, skewed], 2, 4), (low + high) / 2)
    high.backward()
    assert (skewed.grad[:, 0] > 0).all() and (skewed.grad[:, 2:] < 0).all()  # descent unloads expert 0
    with torch.no_grad():
        assert tiny_model()(torch.randint(0, 258, (2, 8))).aux_loss > 0


def test_shared_expert_weighting():
    model = tiny_model(shared_expert=True, shared_expert_hidden_dim=16, moe_weight=0.3, shared_expert_weight=0.7)
    block = model.layers[0].mlp
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out, routing = block(x)
        flat = x.reshape(-1, 32)
        expected = 0.3 * block.experts(flat, routing.indices, routing.weights) + 0.7 * block.shared_expert(flat)
    torch.testing.assert_close(out, expected.view(2, 5, 32))
    assert block.shared_expert.down_proj.in_features == 16
    assert tiny_model().layers[0].mlp.shared_expert is None


def test_training_lowers_the_loss():
    _, _, curve = train(tiny(steps=40, warmup_steps=4, batch_size=8), TEXTS)
    assert [r["step"] for r in curve] == list(range(1, 41))
    first, last = curve[0]["loss"], sum(r["loss"] for r in curve[-5:]) / 5
    assert last < first - 1.0, (first, last)
    assert all(r["aux_loss"] > 0 and r["lr"] > 0 for r in curve)


def test_load_or_train_reuses_the_checkpoint(tmp_path, monkeypatch):
    import semoe.moe_lm.training as training

    cache = ArtifactCache(tmp_path)
    cfg = tiny(steps=3)
    model, _, curve = load_or_train(cfg, TEXTS, cache)
    assert len(curve) == 3 and cache.is_complete("moe-lm", checkpoint_key(cfg, TEXTS))

    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained again"))
    again, tokenizer, curve_again = load_or_train(cfg, TEXTS, cache)
    assert curve_again == curve and isinstance(tokenizer, ByteTokenizer)
    for (name, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), name
    assert checkpoint_key(cfg, TEXTS) != checkpoint_key(tiny(steps=3, seed=1), TEXTS)
    assert checkpoint_key(cfg, TEXTS) != checkpoint_key(cfg, TEXTS[:-1])

    store = ResultStore(tmp_path / "results.duckdb")
    assert all(tuple(r) == MOE_TRAINING_COLUMNS for r in curve)
    store.write_rows("moe_lm_training", curve)
    store.write_rows("moe_lm_training", curve)  # keyed: writing again adds nothing
    assert store.query("SELECT count(*) n, max(step) s FROM moe_lm_training") == [{"n": 3, "s": 3}]


def test_generate_with_analysis():
    model = tiny_model()
    gen = generate(model, ByteTokenizer(), "Falvik is", max_new_tokens=6, analyze=True)
    n = len(gen.token_ids)
    assert gen.token_ids[:10] == ByteTokenizer().encode("Falvik is") and n <= 16
    assert len(gen.experts) == n and all(len(t) == 2 and all(len(layer) == 2 for layer in t) for t in gen.experts)
    assert torch.tensor(gen.expert_weights).shape == (n, 2, 2)
    assert [sum(row) for row in gen.expert_usage()] == [2 * n, 2 * n]
    # Greedy generation from the cache agrees with recomputing the whole sequence.
    with torch.no_grad():
        full = model(torch.tensor([gen.token_ids]))
    assert gen.experts == torch.stack([r.indices for r in full.routing], dim=1).tolist()
    plain = generate(model, ByteTokenizer(), "Falvik is", max_new_tokens=6)
    assert plain.text == gen.text and plain.experts is None
    long = generate(model, ByteTokenizer(), "x" * 200, max_new_tokens=4)
    assert len(long.token_ids) <= model.config.max_seq_len and long.token_ids[0] == ByteTokenizer.bos_token_id


def test_cli_generate_and_interactive(tmp_path, monkeypatch, capsys):
    from semoe.moe_lm.cli import cli_main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(steps=2).model_dump()))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS))
    common = ["--config", str(config), "--cache", str(tmp_path / "cache"), "--corpus", str(corpus)]

    assert cli_main(["generate", *common, "--prompt", "Falvik", "--analyze", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Falvik")
    table = out[out.index("expert usage") :].splitlines()
    assert table[1].split() == ["layer", "e0", "e1", "e2", "e3", "switch", "%"] and len(table) == 5

    monkeypatch.setattr("sys.stdin", io.StringIO("Falvik\n\nTamine\n"))
    assert cli_main(["generate", *common, "--interactive", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Falvik") and "\nTamine" in out and "expert usage" not in out

    assert cli_main(["train", *common, "--set", "steps=2"]) == 0
    assert "2 steps" in capsys.readouterr().out
    assert cli_main(["generate", *common]) == 2
    assert cli_main(["train", *common, "--set", "k=9"]) == 2


def test_config_rejects_inconsistent_settings():
    from pydantic import ValidationError

    for bad in [dict(k=5), dict(num_heads=3), dict(seq_len=128), dict(router_type="lstm"), dict(unknown=1)]:
        with pytest.raises(ValidationError):
            tiny(**bad)


@pytest.mark.parametrize("router_type,mode", [("linear", "sequence"), ("gru", "sequence"), ("rnn", "layers")])
def test_routing_policies_drive_the_routers(router_type, mode):
    """semoe.routing finds both router classes; a policy's choices reach the experts, and cached
    decoding still equals recomputation under the policy (the recurrent state advances as before)."""
    from semoe.routing import find_routers, route_with

    model = tiny_model(router_type, mode)
    assert [s.path for s in find_routers(model)] == ["layers.0.mlp.gate", "layers.1.mlp.gate"]
    ids = torch.randint(0, 258, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        with route_with(model, {"name": "topk", "params": {"k": 3}}):
            full = model(ids)
            cache = model.new_cache()
            stepwise = torch.cat(
                [model(ids[:, :4], cache).logits] + [model(ids[:, t : t + 1], cache).logits for t in range(4, 10)],
                dim=1,
            )
        assert full.routing[0].indices.shape == (10, 3)
        torch.testing.assert_close(stepwise, full.logits, atol=1e-5, rtol=1e-5)
        assert model(ids).routing[0].indices.shape == (10, 2)
