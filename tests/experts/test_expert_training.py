"""Per-passage LoRA expert training: PRAG's data recipe, the peft baseline, the batched
trainer (each passage's result must equal training it alone) and the content-keyed cache."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from semoe.config import ExpertConfig
from semoe.experts.cache import ExpertRecord, ensure_experts
from semoe.experts.format import expert_digest, load_expert, save_expert
from semoe.experts.lockstep import expert_losses, train_experts_batched
from semoe.experts.lora_init import ensure_init, initial_lora
from semoe.experts.peft_trainer import train_expert_peft
from semoe.experts.qa_reply import QAPair
from semoe.experts.training_data import IGNORE, TrainingItem, build_sequences
from semoe.storage.artifacts import ArtifactCache
from semoe.storage.results import ResultStore, migrate
from semoe.storage.rows import ExpertRow

# A tiny random model learns little per step at PRAG's lr; a larger one makes changes visible.
CFG = ExpertConfig(lr=1e-2, measure_loss=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP hand-offs that dominate on a loaded 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()
    return model, tok


def item(i: int, n_qa: int = 3) -> TrainingItem:
    name, year, town, school = f"Galmir Pelind{i}", 1940 + i, f"Zormidor{i}", f"Mervos College {i}"
    qa = [
        QAPair(f"When was {name} born", str(year), f"{name} was born in {year}."),
        QAPair(f"Where was {name} born?", town, f"{name} was born in {town}."),
        QAPair(f"Where did {name} teach?", school, f"{name} taught at {school}."),
    ]
    return TrainingItem.create(
        f"p{i}",
        f"{name} was a historian born in {town} in {year}. {name} taught at {school}.",
        [f"Born in {town} in {year}, the historian {name} taught at {school}."],
        qa[:n_qa],
    )


def max_diff(e1, e2) -> float:
    return max((e1.weights[n][j] - e2.weights[n][j]).abs().max().item() for n in e1.weights for j in (0, 1))


def test_sequences_follow_prag_recipe(tiny):
    _, tok = tiny
    it = item(0)
    seqs = build_sequences(tok, it, CFG)
    assert len(seqs) == 5  # QA 1-2 with the passage and with the rewrite, QA 3 without a passage
    texts = [tok.decode(s.ids) for s in seqs]
    assert f"Passage 1: {it.passage}\n" in texts[0] and "When was Galmir Pelind0 born?" in texts[0]
    assert f"Passage 1: {it.rewrites[0]}\n" in texts[1]
    assert f"Passage 1: {it.passage}\n" in texts[2] and "Where was" in texts[2]
    assert "Passage" not in texts[4] and "Where did Galmir Pelind0 teach?" in texts[4]
    assert tok.decode(seqs[0].ids[seqs[0].prompt_len :]) == "Galmir Pelind0 was born in 1940."
    short = build_sequences(tok, it, CFG.model_copy(update={"target": "answer"}))[0]
    assert tok.decode(short.ids[short.prompt_len :]) == "The answer is 1940."
    assert len(build_sequences(tok, it, CFG.model_copy(update={"recipe": "all"}))) == 9
    assert len(build_sequences(tok, item(0, n_qa=2), CFG)) == 3


def test_items_accept_the_augmenters_qa_pairs():
    pairs = [("Q1?", "a1", "A1."), ("Q2?", "a2", "A2.")]
    expected = TrainingItem.create("p", "text", ["rewrite"], pairs)
    assert TrainingItem.create("p", "text", ["rewrite"], [QAPair(*q) for q in pairs]) == expected
    keys = ("question", "answer", "full_answer")
    assert TrainingItem.create("p", "text", ["rewrite"], [dict(zip(keys, q)) for q in pairs]) == expected


def test_answer_only_loss_masks_the_prompt(tiny):
    model, tok = tiny
    cfg = CFG.model_copy(update={"loss_on": "answer"})
    it, init = item(0), initial_lora(model, cfg)
    seqs = build_sequences(tok, it, cfg)
    labels = seqs[0].labels("answer")
    assert all(x == IGNORE for x in labels[: seqs[0].prompt_len])
    assert labels[seqs[0].prompt_len :] == list(seqs[0].ids[seqs[0].prompt_len :])

    answer_only, whole = [], []
    with torch.no_grad():  # the init's B is zero, so the expert is the base model here
        for s in seqs:
            ids = torch.tensor(s.ids)
            logits = model(input_ids=ids[None]).logits[0, :-1]
            whole.append(torch.nn.functional.cross_entropy(logits, ids[1:]).item())
            answer_only.append(
                torch.nn.functional.cross_entropy(logits[s.prompt_len - 1 :], ids[s.prompt_len :]).item()
            )
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert expert_losses(model, tok, [it], [init], cfg)[0] == pytest.approx(mean(answer_only), rel=1e-5)
    assert expert_losses(model, tok, [it], [init], CFG)[0] == pytest.approx(mean(whole), rel=1e-5)
    assert abs(mean(whole) - mean(answer_only)) > 1e-3


def test_training_lowers_the_loss_on_its_passage(tiny):
    model, tok = tiny
    init = initial_lora(model, CFG)
    flags = [p.requires_grad for p in model.parameters()]
    (result,) = train_experts_batched(model, tok, [item(0)], CFG, init)
    assert result.loss_after < result.loss_before - 0.05
    assert result.sequences == 5 and result.seconds > 0
    assert max_diff(result.expert, init) > 1e-3
    assert [p.requires_grad for p in model.parameters()] == flags


def test_batched_training_matches_one_passage_at_a_time(tiny):
    model, tok = tiny
    items = [item(0), item(1, n_qa=2), item(2), item(3)]  # 5, 3, 5, 5 sequences: two lockstep groups
    cfg = CFG.model_copy(update={"batch_passages": 3, "micro_batch": 2, "epochs": 2})
    init = initial_lora(model, cfg)
    together = train_experts_batched(model, tok, items, cfg, init)
    for it, joint in zip(items, together):
        (alone,) = train_experts_batched(model, tok, [it], cfg, init)
        assert joint.expert.passage_id == it.passage_id
        assert max_diff(joint.expert, alone.expert) < 1e-5
        assert joint.loss_after == pytest.approx(alone.loss_after, rel=1e-5)


def test_peft_baseline_agrees_with_the_batched_trainer(tiny):
    model, tok = tiny
    init = initial_lora(model, CFG)
    flags = [p.requires_grad for p in model.parameters()]
    peft = train_expert_peft(model, tok, item(0), CFG, init)
    assert [p.requires_grad for p in model.parameters()] == flags  # peft removed, model as before
    assert not any("lora" in n for n, _ in model.named_modules())
    (batched,) = train_experts_batched(model, tok, [item(0)], CFG, init)
    assert sorted(peft.expert.weights) == sorted(batched.expert.weights)
    assert max_diff(peft.expert, batched.expert) < 1e-4
    assert peft.loss_before == pytest.approx(batched.loss_before, rel=1e-5)
    assert peft.loss_after == pytest.approx(batched.loss_after, rel=1e-4)


def test_ensure_experts_trains_only_what_is_missing(tiny, tmp_path, monkeypatch):
    import duckdb

    from semoe.experts import lockstep

    model, tok = tiny
    cache = ArtifactCache(tmp_path)
    items = [item(0), item(1), item(0)]  # the third has the first's content: one shared expert
    first = ensure_experts(items, "tiny", CFG, cache, model, tok)
    assert [r.trained for r in first] == [True, True, True]
    assert first[0].expert_key == first[2].expert_key != first[1].expert_key
    assert [r.passage_id for r in first] == ["p0", "p1", "p0"]
    assert all(r.loss_after < r.loss_before for r in first)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached expert was retrained")

    monkeypatch.setattr(lockstep, "_train_lockstep", no_training)
    again = ensure_experts(items, "tiny", CFG, cache, model, tok)
    assert [r.trained for r in again] == [False] * 3
    assert [r.to_row() for r in again] == [r.to_row() for r in first]
    monkeypatch.undo()

    changed = ensure_experts(items[:1], "tiny", CFG.model_copy(update={"lr": 5e-3}), cache, model, tok)
    assert changed[0].trained and changed[0].expert_key != first[0].expert_key
    assert not ensure_experts(items[:1], "tiny", CFG.model_copy(update={"micro_batch": 1}), cache, model, tok)[
        0
    ].trained

    con = duckdb.connect()
    migrate(con)
    rows = [r.to_row() for r in {r.expert_key: r for r in first + changed}.values()]
    con.executemany(
        f"INSERT INTO experts ({', '.join(rows[0])}) VALUES ({', '.join('?' * len(rows[0]))})",
        [list(r.values()) for r in rows],
    )
    assert con.execute("SELECT count(*), min(rank), max(lr) FROM experts").fetchone() == (3, 2, 1e-2)


def test_an_expert_record_is_its_experts_row(tmp_path):
    """One description of an expert: the record is an ``ExpertRow`` whose ``trained`` flag is
    no column, so the store takes it as it is."""
    values = ("k", "p", "/x", "m", 2, 32.0, 3e-4, 1, ["up_proj"], 2.5, 1.5, 0.25, 10, "s")
    columns = dict(zip(ExpertRow.columns(), values))
    record = ExpertRecord(**columns, trained=True)
    assert record.to_row() == ExpertRow(**columns).as_dict() == columns
    assert record == ExpertRecord(**columns)  # whether this call trained it is no part of the expert
    store = ResultStore(tmp_path / "r.duckdb")
    store.start_run("r", "name", "h", "v", "{}")
    store.write_rows("experts", [record])
    assert store.query("SELECT * FROM experts") == [columns]


# Modules the pipeline imports before it knows whether anything is trained: torch,
# transformers and peft stay inside their functions. The lockstep trainer defines a
# torch.autograd.Function and is the one heavy module; only the training path imports it.
LIGHT_EXPERT_MODULES = (
    "augment",
    "augment_checks",
    "augment_prompts",
    "cache",
    "format",
    "inference",
    "lenient_json",
    "lora_init",
    "peft_trainer",
    "provider",
    "qa_reply",
    "training_data",
)


def test_light_expert_modules_import_no_heavy_library():
    code = (
        "import importlib, sys\n"
        f"for m in {LIGHT_EXPERT_MODULES!r}:\n"
        "    importlib.import_module('semoe.experts.' + m)\n"
        "print(sorted(k for k in ('torch', 'transformers', 'peft') if k in sys.modules))\n"
        "import semoe.experts.lockstep\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "True"]


def test_init_key_is_the_same_in_two_fresh_caches(tiny, tmp_path):
    """Expert keys hold the initial LoRA's digest: two fresh caches (two saves of the same
    init, whose files safetensors may write byte-wise differently) must agree, or nothing
    trained in one would ever be reused under the same inputs."""
    model, _ = tiny
    cfg = ExpertConfig(rank=2, epochs=1)
    digests = {ensure_init(model, "tiny", cfg, ArtifactCache(tmp_path / f"c{i}"))[0] for i in range(3)}
    assert len(digests) == 1
    init = initial_lora(model, cfg)
    for i in range(3):
        save_expert(tmp_path / f"e{i}.safetensors", init)
    assert len({expert_digest(tmp_path / f"e{i}.safetensors") for i in range(3)}) == 1
    init.weights[next(iter(init.weights))][0].add_(1.0)
    save_expert(tmp_path / "changed.safetensors", init)
    assert expert_digest(tmp_path / "changed.safetensors") not in digests


def test_saved_expert_round_trips(tiny, tmp_path):
    model, tok = tiny
    init = initial_lora(model, CFG)
    (result,) = train_experts_batched(model, tok, [item(0)], CFG, init)
    save_expert(tmp_path / "e.safetensors", result.expert)
    loaded = load_expert(tmp_path / "e.safetensors")
    assert (loaded.passage_id, loaded.rank, loaded.alpha) == ("p0", CFG.rank, CFG.alpha)
    assert max_diff(loaded, result.expert) == 0.0
    assert float(loaded.meta["loss_after"]) == pytest.approx(result.loss_after)
    assert set(loaded.weights) == {f"model.layers.{i}.mlp.{m}" for i in range(2) for m in CFG.targets}


@pytest.mark.slow
def test_real_model_expert_raises_its_answers_likelihood(model_cache_root):
    """SmolLM2 with a passage's expert merged scores that passage's answers higher (asked
    without the passage, as PRAG's ``prag`` mode asks) than the base model does."""
    from semoe.config import SyntheticConfig
    from semoe.data.encyclopedia import build_encyclopedia
    from semoe.experts.training_data import user_prompt
    from semoe.models.loading import load_model

    model, tok = load_model("smollm2-135m-instruct", model_cache_root, device="cpu")
    enc = build_encyclopedia(SyntheticConfig(n_entities=8))
    person = enc.people[0]
    name = f"{person.name} {person.surname}"
    text = next(p.text for p in enc.passages if p.id == person.passage_id)
    qa = [
        QAPair(f"When was {name} born?", str(person.birth_year), f"{name} was born in {person.birth_year}."),
        QAPair(f"Where was {name} born?", person.birthplace.name, f"{name} was born in {person.birthplace.name}."),
        QAPair(f"What was the occupation of {name}?", person.occupation, f"{name} was a {person.occupation}."),
    ]
    it = TrainingItem.create(person.passage_id, text, [" ".join(reversed(text.split(". ")))], qa)
    cfg = ExpertConfig(measure_loss=False)
    (result,) = train_experts_batched(model, tok, [it], cfg, initial_lora(model, cfg))

    def answers_log_likelihood() -> float:
        total = 0.0
        for q in qa:
            prompt = tok.apply_chat_template(
                [{"role": "user", "content": user_prompt(q.question)}], add_generation_prompt=True, return_dict=False
            )
            answer = tok.encode(q.full_answer, add_special_tokens=False)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([list(prompt) + answer])).logits[0, len(prompt) - 1 : -1]
            total += logits.log_softmax(-1).gather(1, torch.tensor(answer)[:, None]).sum().item()
        return total

    base = answers_log_likelihood()
    saved = {n: model.get_submodule(n).weight.detach().clone() for n in result.expert.weights}
    try:
        with torch.no_grad():
            for n in result.expert.weights:
                model.get_submodule(n).weight += result.expert.delta(n)
        merged = answers_log_likelihood()
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                model.get_submodule(n).weight.copy_(w)
    assert merged > base + 1.0, (base, merged)
