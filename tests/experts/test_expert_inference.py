"""Inserting passage experts: batched per-row LoRA must give what merging each question's
experts into the weights gives, and every path must leave the model as it found it."""

from __future__ import annotations

import warnings

import pytest
import torch

from semoe.experts.format import ExpertFileError, LoraExpert, save_expert
from semoe.experts.inference import (
    HeterogeneousLora,
    combine_experts,
    generate_with_experts,
    heterogeneous_experts,
    load_experts,
    merged,
    mode_inputs,
)
from semoe.generation.lm import ChatLM

MLP = ("gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "left"
    return model, tok


def make_expert(model, name: str, rank: int, seed: int, targets=MLP, alpha: float = 4.0) -> LoraExpert:
    """Random expert large enough to change a tiny random model's greedy tokens."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for path, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and path.rsplit(".", 1)[-1] in targets:
            weights[path] = (
                torch.randn(rank, m.in_features, generator=gen) * 0.3,
                torch.randn(m.out_features, rank, generator=gen) * 0.3,
            )
    return LoraExpert(passage_id=name, rank=rank, alpha=alpha, weights=weights)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(model, before) -> None:
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def greedy(model, tok, prompts: list[str], n_new: int = 6):
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=n_new,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=None,
            return_dict_in_generate=True,
            output_logits=True,
        )
    tokens = out.sequences[:, enc["input_ids"].shape[1] :]
    return tokens, torch.stack(out.logits, 1)  # (batch, steps), (batch, steps, vocab)


PROMPTS = [
    "The river town of Kelloway lies in the north of Orvania, and",
    "Question: Who founded the Brannic Institute? It was founded in 1872 by a chemist named",
    "Hello",
    "Teodric Almsvane (born 1931) is a bridge engineer who was born in",
]


def test_combine_is_sum_of_deltas(tiny):
    model, _ = tiny
    e1 = make_expert(model, "p1", 2, 1, alpha=32.0)
    e2 = make_expert(model, "p2", 3, 2, targets=("gate_proj",), alpha=8.0)
    e3 = make_expert(model, "p3", 1, 3, targets=("down_proj",), alpha=1.0)
    c = combine_experts([e1, e2, e3])
    assert c.rank == 6 and c.scaling == 1.0 and c.passage_id == "p1+p2+p3"
    assert set(c.weights) == set(e1.weights)
    for m in c.weights:
        a, b = c.weights[m]
        assert a.shape[0] == b.shape[1] == 6
        want = sum(e.delta(m) for e in (e1, e2, e3) if m in e.weights)
        torch.testing.assert_close(c.delta(m), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        combine_experts([])


def test_merged_restores_weights_bit_exactly(tiny):
    model, tok = tiny
    before = snapshot(model)
    experts = [make_expert(model, f"p{i}", 2, 10 + i) for i in range(3)]
    path = next(iter(experts[0].weights))
    with merged(model, experts):
        want = before[f"{path}.weight"] + sum(e.delta(path) for e in experts)
        torch.testing.assert_close(model.get_submodule(path).weight, want)
    assert_same_weights(model, before)
    with pytest.raises(RuntimeError, match="boom"), merged(model, experts):
        raise RuntimeError("boom")
    assert_same_weights(model, before)
    bad = LoraExpert("bad", 2, 2.0, {path: (torch.zeros(2, 7), torch.zeros(7, 2))})
    with pytest.raises(ValueError, match="bad"), merged(model, [experts[0], bad]):
        pass
    assert_same_weights(model, before)


def test_heterogeneous_batch_matches_merged_per_question(tiny):
    """Rows with 0, 1 and 3 experts (one of another rank and targets) and prompts of
    different lengths (left padding) decode together as each would alone, merged."""
    model, tok = tiny
    before = snapshot(model)
    rows = [
        [make_expert(model, "a", 2, 21)],
        [],
        [
            make_expert(model, "b", 2, 22),
            make_expert(model, "c", 1, 23, targets=("up_proj",)),
            make_expert(model, "d", 2, 24),
        ],
        [make_expert(model, "e", 2, 25, targets=("down_proj",))],
    ]
    with heterogeneous_experts(model, rows) as lora:
        assert lora.rows == 4
        tokens, logits = greedy(model, tok, PROMPTS)
    assert_same_weights(model, before)
    base_tokens, _ = greedy(model, tok, PROMPTS[:1])
    changed = 0
    for i, (prompt, experts) in enumerate(zip(PROMPTS, rows)):
        with merged(model, experts):
            want_tokens, want_logits = greedy(model, tok, [prompt])
        torch.testing.assert_close(logits[i], want_logits[0], atol=1e-4, rtol=0)
        assert torch.equal(tokens[i], want_tokens[0])
        changed += i == 0 and not torch.equal(want_tokens[0], base_tokens[0])
    assert changed, "the experts should change the tiny model's output, else the test proves nothing"
    assert all(not m._forward_hooks for m in model.modules())


def test_set_experts_swaps_while_installed(tiny):
    model, tok = tiny
    first = [[make_expert(model, "a", 2, 31, targets=("gate_proj",))], []]
    second = [[], [make_expert(model, "b", 2, 32, targets=("down_proj",)), make_expert(model, "c", 2, 33)]]
    prompts = PROMPTS[:2]
    with heterogeneous_experts(model, first) as lora:
        tokens1, logits1 = greedy(model, tok, prompts)
        lora.set_experts(second)
        tokens2, logits2 = greedy(model, tok, prompts)
        lora.set_experts([[], [], first[0][0:1]])
        with pytest.raises(RuntimeError, match="experts were set for 3"):
            greedy(model, tok, prompts)
    for experts_per_row, logits in ((first, logits1), (second, logits2)):
        for i, experts in enumerate(experts_per_row):
            with merged(model, experts):
                _, want = greedy(model, tok, [prompts[i]])
            torch.testing.assert_close(logits[i], want[0], atol=1e-4, rtol=0)
    _, plain = greedy(model, tok, prompts)
    torch.testing.assert_close(logits2[0], plain[0], atol=1e-4, rtol=0)


def test_close_removes_hooks(tiny):
    model, tok = tiny
    _, plain = greedy(model, tok, PROMPTS[:1])
    lora = HeterogeneousLora(model)
    lora.set_experts([[make_expert(model, "a", 2, 41)]])
    assert any(m._forward_hooks for m in model.modules())
    lora.close()
    assert all(not m._forward_hooks for m in model.modules())
    _, after = greedy(model, tok, PROMPTS[:1])
    assert torch.equal(plain, after)


def test_generate_with_experts_matches_merged_loop(tiny):
    """Length-sorted batching must keep every conversation with its own experts."""
    model, tok = tiny
    lm = ChatLM(model, tok)
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS + ["Why?", PROMPTS[1] + " and so on"]]
    experts = [[make_expert(model, f"x{i}", 2, 50 + i)] * (i % 3) for i in range(len(conversations))]
    got = generate_with_experts(lm, conversations, experts, max_new_tokens=6, batch_size=4)
    want = []
    for conv, ex in zip(conversations, experts):
        with merged(model, ex):
            want.extend(lm.generate([conv], max_new_tokens=6, batch_size=1))
    assert [g.text for g in got] == [w.text for w in want]
    assert len({w.text for w in want}) > 1
    with pytest.raises(ValueError, match="expert lists"):
        generate_with_experts(lm, conversations, experts[:2], 6)


def test_mode_inputs():
    experts = [LoraExpert("p", 1, 1.0, {})]
    assert mode_inputs("icl", ["P"], experts) == (["P"], [])
    assert mode_inputs("prag", ["P"], experts) == (None, experts)
    assert mode_inputs("combine", ["P"], experts) == (["P"], experts)
    with pytest.raises(ValueError, match="unknown inference mode"):
        mode_inputs("rag", ["P"], experts)


def test_bad_expert_files_name_the_path(tiny, tmp_path):
    model, _ = tiny
    good = tmp_path / "good.safetensors"
    save_expert(good, make_expert(model, "g", 2, 60))
    assert load_experts([good])[0].passage_id == "g"
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ExpertFileError, match="missing.safetensors"):
        load_experts([good, missing])
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:50])
    with pytest.raises(ExpertFileError, match="corrupt.safetensors"):
        load_experts([corrupt])


# --------------------------------------------------------------------------- expert files


def save_peft_adapter(base_dir: str, out, enc, seed: int = 7, **config) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (non-zero B) peft LoRA on a fresh copy of the model in ``base_dir``, saved with
    ``save_pretrained`` to ``out``; returns (logits of peft's model on ``enc``, base logits)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base(**enc).logits
    torch.manual_seed(seed)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False, **config
    )
    with warnings.catch_warnings():  # peft calls a transformers property deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(base, lora).eval()
    peft_model.save_pretrained(out)
    with torch.no_grad():
        return peft_model(**enc).logits, plain


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_adapter_loads_with_peft_delta(tiny, tiny_lm_dir, tmp_path, rslora):
    model, tok = tiny
    before = snapshot(model)
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True, add_special_tokens=False)
    want, plain = save_peft_adapter(tiny_lm_dir, tmp_path / "p17", enc, use_rslora=rslora)
    assert (want - plain).abs().max() > 1e-2, "the adapter should change the logits, else the test proves nothing"
    for source in (tmp_path / "p17", tmp_path / "p17" / "adapter_model.safetensors"):
        [expert] = load_experts([source], model=model, base_model="smollm2-135m-instruct")
        assert expert.passage_id == "p17" and expert.rank == 4 and len(expert.weights) == 3 * 2  # 3 targets, 2 layers
        assert expert.meta["base_model"] == tiny_lm_dir
        with merged(model, [expert]), torch.no_grad():
            got = model(**enc).logits
        assert (got - want).abs().max() <= 1e-5
        with heterogeneous_experts(model, [[expert], [expert]]), torch.no_grad():
            got = model(**enc).logits
        assert (got - want).abs().max() <= 1e-5
    assert_same_weights(model, before)


def test_peft_adapter_of_another_model_names_the_file(tiny, tiny_lm_dir, tmp_path):
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    model, tok = tiny
    enc = tok(PROMPTS[:1], return_tensors="pt", add_special_tokens=False)
    save_peft_adapter(tiny_lm_dir, tmp_path / "renamed", enc)
    config_path = tmp_path / "renamed" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "HuggingFaceTB/SmolLM2-360M-Instruct"}))
    with pytest.raises(ExpertFileError, match=r"renamed.*trained on base model 'HuggingFaceTB/SmolLM2-360M-Instruct'"):
        load_experts([tmp_path / "renamed"], model=model, base_model=tiny_lm_dir)
    # one model under its hub id and its semoe alias
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    assert load_experts([tmp_path / "renamed"], model=model, base_model="smollm2-135m-instruct")[0].weights
    # same architecture, other widths
    wider = tmp_path / "wider-base"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=model.config.vocab_size,
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).save_pretrained(wider)
    save_peft_adapter(str(wider), tmp_path / "wider", enc)
    with pytest.raises(ExpertFileError, match=r"wider was trained on base model '.*wider-base'"):
        load_experts([tmp_path / "wider"], model=model, base_model=tiny_lm_dir)
    # ... even where it claims to be for this model, every module is refused, naming the file
    config_path = tmp_path / "wider" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "base_model_name_or_path": tiny_lm_dir}))
    with pytest.raises(ExpertFileError, match=r"wider does not fit the model \(6 of 6 modules\): .*do not fit Linear"):
        load_experts([tmp_path / "wider"], model=model, base_model=tiny_lm_dir)


def test_experts_that_would_change_nothing_are_errors(tiny, tmp_path):
    from safetensors.torch import save_file

    model, _ = tiny
    meta = {"rank": "2", "alpha": "4.0", "passage_id": "x"}
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty), metadata=meta)
    with pytest.raises(ExpertFileError, match=r"empty.safetensors holds no LoRA weights: expected tensors named"):
        load_experts([empty])
    expert = make_expert(model, "elsewhere", 2, 70)
    elsewhere = tmp_path / "elsewhere.safetensors"
    save_expert(
        elsewhere,
        LoraExpert(
            "elsewhere", 2, 4.0, {m.replace("model.layers", "transformer.h"): w for m, w in expert.weights.items()}
        ),
    )
    assert len(load_experts([elsewhere])[0].weights) == 6  # loads; only the model can tell it misses
    with pytest.raises(
        ExpertFileError,
        match=r"elsewhere.safetensors does not fit the model \(6 of 6 modules\): "
        r".*no module 'transformer.h.0.mlp.\w+'; expected modules",
    ):
        load_experts([elsewhere], model=model)


def test_peft_state_dict_key_names_load_every_module(tiny, tmp_path):
    """Keys of a live peft model's state_dict carry the adapter name (``lora_A.default.weight``)."""
    from safetensors.torch import save_file

    model, _ = tiny
    expert = make_expert(model, "sd", 2, 71)
    tensors = {
        f"base_model.model.{m}.lora_{ab}.default.weight": w
        for m, pair in expert.weights.items()
        for ab, w in zip("AB", pair)
    }
    path = tmp_path / "state_dict.safetensors"
    save_file(tensors, str(path), metadata={"rank": "2", "alpha": "4.0", "passage_id": "sd"})
    [loaded] = load_experts([path], model=model)
    assert loaded.weights.keys() == expert.weights.keys()
    assert all(torch.equal(loaded.delta(m), expert.delta(m)) for m in expert.weights)
    tensors["base_model.model.model.layers.0.mlp.down_proj.lora_A.other.weight"] = tensors.popitem()[1]
    save_file(tensors, str(path), metadata={"rank": "2", "alpha": "4.0", "passage_id": "sd"})
    with pytest.raises(ExpertFileError, match="state_dict.safetensors holds several adapters"):
        load_experts([path])


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t, c: t.update({"base_model.model.model.layers.0.mlp.down_proj.lora_B.bias": torch.zeros(4)}),
            "not LoRA A/B weights.*lora_B.bias",
        ),
        (lambda t, c: t.pop(next(k for k in t if k.endswith("lora_B.weight"))), "corrupt: .*lora_B.weight missing"),
        (lambda t, c: c.update(use_dora=True), "use_dora not supported"),
        (lambda t, c: c.update(rank_pattern={"q_proj": 8}), "rank_pattern not supported"),
        (lambda t, c: c.update(peft_type="IA3"), "peft_type 'IA3' is not LORA"),
        (lambda t, c: c.update(target_modules=["q_proj"]), "modules outside target_modules"),
        (lambda t, c: c.update(r=8), r"do not fit rank 8"),
        (lambda t, c: c.pop("lora_alpha"), "'lora_alpha' missing"),
        (lambda t, c: c.clear(), "'r' or 'lora_alpha' missing"),
    ],
)
def test_bad_peft_adapters_name_the_file(tiny, tiny_lm_dir, tmp_path, edit, message):
    import json

    from safetensors.torch import load_file, save_file

    _, tok = tiny
    enc = tok(PROMPTS[:1], return_tensors="pt", add_special_tokens=False)
    adapter = tmp_path / "adapter"
    save_peft_adapter(tiny_lm_dir, adapter, enc)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    edit(tensors, config)
    save_file(tensors, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ExpertFileError, match=rf"{adapter}.*{message}"):
        load_experts([adapter])


def test_adapter_without_its_config_or_safetensors_names_what_is_missing(tiny, tiny_lm_dir, tmp_path):
    _, tok = tiny
    adapter = tmp_path / "adapter"
    save_peft_adapter(tiny_lm_dir, adapter, tok(PROMPTS[:1], return_tensors="pt", add_special_tokens=False))
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(ExpertFileError, match="neither semoe's metadata .* nor a peft adapter_config.json beside it"):
        load_experts([adapter])
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(ExpertFileError, match="adapter_model.safetensors.*adapter_model.bin is not read"):
        load_experts([adapter])
