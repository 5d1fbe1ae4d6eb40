"""Inserting passage experts: batched per-row LoRA must give what merging each question's
experts into the weights gives, and every path must leave the model as it found it."""

from __future__ import annotations

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
            weights[path] = (torch.randn(rank, m.in_features, generator=gen) * 0.3,
                             torch.randn(m.out_features, rank, generator=gen) * 0.3)
    return LoraExpert(passage_id=name, rank=rank, alpha=alpha, weights=weights)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(model, before) -> None:
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def greedy(model, tok, prompts: list[str], n_new: int = 6):
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n_new, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=None, return_dict_in_generate=True, output_logits=True)
    tokens = out.sequences[:, enc["input_ids"].shape[1]:]
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
        [make_expert(model, "b", 2, 22), make_expert(model, "c", 1, 23, targets=("up_proj",)),
         make_expert(model, "d", 2, 24)],
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
