"""The DyPRAG-style parameter translator (semoe.experts.translator): its output is the expert
format and loads through the same insertion path, training lowers its loss, a batch equals
one-at-a-time translation, a bad checkpoint is one clear error, held-out passages' experts
raise their QA likelihood; as an expert source: config, methods, answer identity, the flow."""

from __future__ import annotations

import pytest
import torch

from semoe.config import ConfigError, ExpertConfig, MethodSpec, SemoeConfig, TranslatorConfig
from semoe.experts.lockstep import train_experts_batched
from semoe.experts.lora_init import initial_lora
from semoe.experts.qa_reply import QAPair
from semoe.experts.training_data import TrainingItem
from semoe.experts.translator import (
    Layout,
    Pair,
    ParameterTranslator,
    TranslatorError,
    load_translator,
    pool,
    save_translator,
    train_translator,
    translate,
    translator_losses,
)

# A tiny random model learns little per step at PRAG's lr; a larger one gives targets that differ.
CFG = ExpertConfig(lr=1e-2, measure_loss=False)
TCFG = TranslatorConfig(hidden=8, epochs=3, lr=1e-2)


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    """The tiny model and its tokenizer, run with one torch thread (tiny tensors: more threads
    only add OpenMP hand-offs on a loaded box)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield (
        AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval(),
        AutoTokenizer.from_pretrained(tiny_lm_dir),
    )
    torch.set_num_threads(threads)


def item(i: int) -> TrainingItem:
    name, year, town = f"Galmir Pelind{i}", 1900 + 7 * i, f"Zormidor{i}"
    qa = [
        QAPair(f"When was {name} born?", str(year), f"{name} was born in {year}."),
        QAPair(f"Where was {name} born?", town, f"{name} was born in {town}."),
    ]
    text = f"{name} was a historian born in {town} in {year}." + " He wrote many books." * (i % 3)
    return TrainingItem.create(f"p{i}", text, [f"Born in {town} in {year}, {name} was a historian."], qa)


@pytest.fixture(scope="module")
def pairs(tiny) -> list[Pair]:
    """(passage, PRAG expert) pairs of 8 passages, trained as the provider trains them."""
    model, tok = tiny
    items = [item(i) for i in range(8)]
    results = train_experts_batched(model, tok, items, CFG, initial_lora(model, CFG))
    return [Pair(it, f"key{i}", r.expert) for i, (it, r) in enumerate(zip(items, results))]


@pytest.fixture(scope="module")
def trained(tiny, pairs):
    model, tok = tiny
    torch.manual_seed(0)
    return train_translator(model, tok, pairs[:6], CFG, TCFG)  # pairs 6 and 7 are held out


def test_translator_writes_the_expert_format(tiny):
    model, tok = tiny
    layout = Layout.of(model, CFG)
    init = initial_lora(model, CFG)
    assert [len(mods) for _, mods in layout.layers] == [3, 3]  # 2 layers x gate/up/down
    for input_layer in ("last", "own"):
        translator = ParameterTranslator(layout, hidden=4, input_layer=input_layer)
        feats = pool(model, tok, ["one passage", "another, longer passage"], layout, input_layer, 64)
        assert feats.shape == (2, 2, 32)
        experts = translator.experts(["a", "b"], feats)
        for e in experts:
            assert (e.rank, e.alpha) == (init.rank, init.alpha)
            assert {m: (a.shape, b.shape) for m, (a, b) in e.weights.items()} == {
                m: (a.shape, b.shape) for m, (a, b) in init.weights.items()
            }
    last = pool(model, tok, ["x y z"], layout, "last", 64)
    assert torch.equal(last[:, 0], last[:, 1])  # DyPRAG: every layer reads the last layer's state


def test_encoder_layers_read_the_passage_with_the_first_layers(tiny):
    """``encoder_layers: 1`` pools the state after the first decoder layer, final norm applied,
    as the whole model computes it; the model keeps its layers; more layers than the model has
    is all of them."""
    model, tok = tiny
    layout = Layout.of(model, CFG)
    text = "Tobin Ashcroft painted harbours"
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([tok(text)["input_ids"]]), output_hidden_states=True).hidden_states
        after_first = model.get_decoder().norm(hidden[1])[0, -1]
    one = pool(model, tok, [text], layout, "last", 64, encoder_layers=1)
    torch.testing.assert_close(one[0, 0], after_first, atol=1e-5, rtol=1e-4)
    assert len(model.get_decoder().layers) == 2
    every = pool(model, tok, [text], layout, "last", 64)
    torch.testing.assert_close(every[0, 0], hidden[-1][0, -1], atol=1e-5, rtol=1e-4)
    assert (one - every).abs().max() > 1e-3
    assert torch.equal(pool(model, tok, [text], layout, "last", 64, encoder_layers=5), every)
    own = pool(model, tok, [text], layout, "own", 64, encoder_layers=1)
    assert torch.equal(own[:, 0], own[:, 1])  # layers beyond the encoder read its last state


def test_training_lowers_the_loss_and_experts_load_through_insertion(tiny, pairs, trained):
    from semoe.experts.inference import heterogeneous_experts, merged

    model, tok = tiny
    translator, curve = trained
    assert len(curve) == 3 * 6 and [r.step for r in curve] == list(range(18))
    first_epoch = sum(r.loss for r in curve if r.epoch == 0) / 6
    after = translator_losses(translator, model, tok, pairs[:6], CFG, TCFG)
    assert sum(after) / 6 < first_epoch
    assert all(r.mse >= 0 and r.lm > 0 and r.kl >= 0 for r in curve)

    expert = translate(translator, model, tok, [("p6", pairs[6].item.passage)], 64)[0]
    ids = torch.tensor([tok.encode("Where was Galmir Pelind6 born?")])
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with heterogeneous_experts(model, [[expert]]):
            per_row = model(input_ids=ids).logits
        with merged(model, [expert]):
            merged_logits = model(input_ids=ids).logits
    assert (per_row - base).abs().max() > 1e-4  # the expert changes the model
    torch.testing.assert_close(per_row, merged_logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("encoder_layers", [None, 1])
def test_a_batch_translates_as_one_at_a_time(tiny, trained, encoder_layers):
    model, tok = tiny
    translator, _ = trained
    if encoder_layers is not None:
        torch.manual_seed(1)
        translator = ParameterTranslator(translator.layout, 4, "last", encoder_layers=encoder_layers)
    texts = ["Quorvanthe is a river town", "Tobin Ashcroft painted harbours and lighthouses all his life", "Bells"]
    passages = [(f"q{i}", t) for i, t in enumerate(texts)]  # different lengths: padding in the batch
    batch = translate(translator, model, tok, passages, 64, batch_size=3)
    alone = [translate(translator, model, tok, [p], 64)[0] for p in passages]
    for b, a in zip(batch, alone):
        assert b.passage_id == a.passage_id
        for m in a.weights:
            for j in (0, 1):
                torch.testing.assert_close(b.weights[m][j], a.weights[m][j], atol=1e-5, rtol=1e-4)
    assert (batch[0].weights[m][1] - batch[1].weights[m][1]).abs().max() > 0  # passages differ


def test_checkpoint_round_trip_and_clear_errors(tiny, trained, tmp_path):
    model, tok = tiny
    translator, _ = trained
    path = tmp_path / "translator.safetensors"
    save_translator(path, translator, "tiny")
    loaded = load_translator(path, model=model)
    assert loaded.key and loaded.base_model == "tiny"
    p = [("p7", item(7).passage)]
    a, b = translate(translator, model, tok, p, 64)[0], translate(loaded, model, tok, p, 64)[0]
    assert all(torch.equal(a.weights[m][j], b.weights[m][j]) for m in a.weights for j in (0, 1))
    assert loaded.encoder_layers == translator.encoder_layers == TCFG.encoder_layers
    shallow = tmp_path / "shallow.safetensors"
    save_translator(shallow, ParameterTranslator(translator.layout, 4, "last", encoder_layers=1), "tiny")
    assert load_translator(shallow).encoder_layers == 1  # a checkpoint reads passages as it was trained to

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TranslatorError, match=f"translator checkpoint {cut} is corrupt"):
        load_translator(cut)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(TranslatorError, match="is corrupt"):
        load_translator(garbage)
    with pytest.raises(TranslatorError, match="not found"):
        load_translator(tmp_path / "missing.safetensors")
    from semoe.experts.format import save_expert

    expert_file = tmp_path / "expert.safetensors"
    save_expert(expert_file, a)
    with pytest.raises(TranslatorError, match="not a semoe parameter translator"):
        load_translator(expert_file)
    other = torch.nn.Module()
    other.embed = torch.nn.Embedding(10, 16)
    other.get_input_embeddings = lambda: other.embed
    with pytest.raises(TranslatorError, match="reads hidden states of size 32"):
        load_translator(path, model=other)


def test_held_out_experts_raise_their_qa_likelihood(tiny, pairs, trained):
    """Passages 6 and 7 were not among the training pairs: their translated experts make
    their QA answers more likely than the base model does."""
    from semoe.experts.lockstep import expert_losses

    model, tok = tiny
    translator, _ = trained
    held = [p.item for p in pairs[6:]]
    experts = translate(translator, model, tok, [(it.passage_id, it.passage) for it in held], 64)
    answer_loss = CFG.model_copy(update={"loss_on": "answer"})
    zero = initial_lora(model, CFG)  # B = 0: the base model
    base = expert_losses(model, tok, held, [zero] * len(held), answer_loss)
    with_expert = expert_losses(model, tok, held, experts, answer_loss)
    assert all(w < b for w, b in zip(with_expert, base)), (with_expert, base)


# --------------------------------------------------------------------------- as an expert source


def test_trained_experts_keep_their_identity():
    plain = ExpertConfig()
    assert "source" not in plain.identity() and "translator" not in plain.identity()
    tuned = ExpertConfig(translator={"hidden": 64})  # unused translator settings change nothing
    assert tuned.identity() == plain.identity()
    dyprag = ExpertConfig(source="translator")
    assert dyprag.trained().identity() == plain.identity()
    assert dyprag.identity()["translator"]["hidden"] == 32
    given = ExpertConfig(source="translator", translator={"checkpoint": "/x.safetensors", "hidden": 64})
    assert given.identity()["translator"] == {"checkpoint": "given", "max_passage_tokens": 512}
    shallow = ExpertConfig(source="translator", translator={"encoder_layers": 2})
    assert shallow.identity() != dyprag.identity() and shallow.trained().identity() == plain.identity()
    with pytest.raises(ValueError, match="nothing to train on"):
        TranslatorConfig(mse_weight=0, lm_weight=0, kl_weight=0)


def test_dyprag_methods_use_translator_experts():
    from semoe.generation.base import build_method

    cfg = SemoeConfig(
        methods=["dyprag", "dyprag-combine", "prag", {"name": "semoe", "params": {"experts": {"source": "translator"}}}]
    )
    sources = {m.display_name: build_method(m, cfg).params.experts.source for m in cfg.methods}
    assert sources == {"dyprag": "translator", "dyprag-combine": "translator", "prag": "trained", "semoe": "translator"}
    bad = SemoeConfig(methods=[{"name": "dyprag", "params": {"experts": {"source": "trained"}}}])
    with pytest.raises(ConfigError, match="always uses translator experts"):
        build_method(bad.methods[0], bad)


def test_answer_key_follows_the_translator_checkpoint():
    from semoe import identity

    cfg = SemoeConfig(methods=["prag", "dyprag"])
    prag, dyprag = cfg.methods
    assert identity.answer_scope(cfg, prag, "c", cfg.datasets[0]) == identity.answer_scope(
        cfg, prag, "c", cfg.datasets[0], None
    )
    a, b = (identity.answer_scope(cfg, dyprag, "c", cfg.datasets[0], k) for k in ("ckpt-a", "ckpt-b"))
    assert a != b
    examples = {"synthetic": []}
    assert identity.qa_run_id(cfg, examples, "c", {"dyprag": "ckpt-a"}) != identity.qa_run_id(
        cfg, examples, "c", {"dyprag": "ckpt-b"}
    )
    spec = MethodSpec(name="dyprag", params={"experts": {"translator": {"hidden": 8}}})
    other = SemoeConfig(methods=[spec])
    assert identity.answer_scope(other, spec, "c", other.datasets[0], "ckpt-a") != a  # its settings are part of it too
    # The encoder depth changes the checkpoint built for a recipe, and the answers with it.
    from semoe.experts.translator import recipe_key

    depths = [dyprag.model_copy(update={"params": {"experts": {"translator": {"encoder_layers": n}}}}) for n in (4, 8)]
    shallow, deeper = (SemoeConfig(methods=[d]) for d in depths)
    assert identity.answer_scope(shallow, depths[0], "c", shallow.datasets[0], "ckpt-a") != identity.answer_scope(
        deeper, depths[1], "c", deeper.datasets[0], "ckpt-a"
    )
    recipes = {
        recipe_key("m", "c", {}, ExpertConfig(source="translator", translator={"encoder_layers": n}))
        for n in (None, 4, 8)
    }
    assert len(recipes) == 3


@pytest.mark.slow
def test_methods_answer_with_a_built_translator_and_rekey_when_it_changes(tmp_path, tiny_lm_dir):
    """The provider builds the translator from the PRAG experts of corpus passages (seeded
    augmentations: a tiny model writes no usable QA pairs), dyprag / dyprag-combine / SEMoE
    answer with translated experts, and the answer keys follow the checkpoint."""
    from semoe.data import DataContext
    from semoe.data.loading import load_examples
    from semoe.evaluation.answer_chunks import answer_chunk, expert_provider, load_lm
    from semoe.evaluation.passage_experts import (
        expert_settings,
        translator_keys,
        translator_passages,
        translator_settings,
    )
    from semoe.evaluation.planning import WorkItem, plan_work
    from semoe.generation.methods.parametric import ExpertParams
    from semoe.indexing import build_index, open_retriever
    from tests.support.helpers import seed_augmentations

    semoe_t = {"name": "semoe", "label": "semoe-translator", "params": {"experts": {"source": "translator"}}}
    cfg = SemoeConfig.model_validate(
        {
            "synthetic": {"seed": 5, "n_entities": 10, "n_questions": 2},
            "methods": ["dyprag", "dyprag-combine", semoe_t],
            "model": {"spec": tiny_lm_dir},
            "generation": {"max_new_tokens": 6, "few_shot": 0},
            "trigger": {"hallucination_threshold": 0.0, "max_retrievals": 1},
            "retrieval": {"top_k": 2},
            "experts": {"lr": 1e-2, "measure_loss": False, "translator": {"passages": 4, "hidden": 4, "epochs": 1}},
            "augment": {"n_qa": 1},
            "cache": {"root": str(tmp_path / "cache")},
        }
    )
    seed_augmentations(cfg)
    info = build_index(cfg)
    retriever = open_retriever(cfg, info.corpus_key)
    examples = load_examples(cfg.datasets[0], DataContext.of(cfg))
    with pytest.raises(TranslatorError, match="no translator was built"):
        translator_keys(cfg, info.corpus_key)
    assert translator_keys(cfg, info.corpus_key, required=False)["dyprag"].startswith("recipe:")

    (params,) = translator_settings(cfg)
    assert expert_settings(cfg) == []  # no PRAG experts of the questions' passages needed
    provider = expert_provider(cfg, load_lm(cfg), params, info.corpus_key)
    chosen = translator_passages(cfg, params.experts.translator)
    record = provider.build_translator(lambda: chosen)
    rows = provider.drain_rows()
    assert record.trained and record.pairs == 4 == len(rows["experts"])
    assert len(rows["translator_training"]) == 4 and {r["checkpoint_key"] for r in rows["translator_training"]} == {
        record.key
    }
    again = expert_provider(cfg, load_lm(cfg), params, info.corpus_key)
    assert again.build_translator(lambda: pytest.fail("a built translator reads no passages")).key == record.key

    keys = translator_keys(cfg, info.corpus_key)
    assert set(keys.values()) == {record.key} and set(keys) == {"dyprag", "dyprag-combine", "semoe-translator"}
    for label in keys:
        outputs, catalogue = answer_chunk(cfg, WorkItem("synthetic", label, examples), retriever)
        assert len(outputs) == len(examples) and all(o.retrievals for o in outputs)
        assert catalogue["experts"] == [] and catalogue["augmentations"] == []  # nothing trained to answer
        if label.startswith("dyprag"):
            assert all(o.extra["experts"] == 2 for o in outputs)

    planned = plan_work(cfg, {"synthetic": examples}, set(), info.corpus_key)
    # Another translator (a different hidden size) gives other answer keys for the same question.
    retuned = cfg.model_copy(
        update={
            "experts": cfg.experts.model_copy(
                update={"translator": params.experts.translator.model_copy(update={"hidden": 6})}
            )
        }
    )
    (params2,) = translator_settings(retuned)
    expert_provider(retuned, load_lm(cfg), params2, info.corpus_key).build_translator(lambda: chosen)
    replanned = plan_work(retuned, {"synthetic": examples}, set(), info.corpus_key)
    assert {k for i in planned for k in i.answer_keys}.isdisjoint(k for i in replanned for k in i.answer_keys)
    assert isinstance(params, ExpertParams)


@pytest.mark.slow
def test_pipeline_builds_the_translator_and_stores_every_row(tmp_path, tiny_lm_dir, prefect_api):
    from semoe.flows.pipeline import pipeline
    from semoe.storage.results import ResultStore
    from tests.support.helpers import seed_augmentations

    cfg = SemoeConfig.model_validate(
        {
            "synthetic": {"seed": 3, "n_entities": 8, "n_questions": 3},
            "model": {"spec": tiny_lm_dir},
            "generation": {"max_new_tokens": 6, "few_shot": 0},
            "retrieval": {"top_k": 2},
            "methods": ["prag", "dyprag"],
            "experts": {"measure_loss": False, "translator": {"passages": 3, "hidden": 4, "epochs": 1}},
            "augment": {"n_qa": 1},
            "store": {"path": str(tmp_path / "results.duckdb")},
            "cache": {"root": str(tmp_path / "cache")},
            "report": {"write": False},
        }
    )
    seed_augmentations(cfg)
    first = pipeline(cfg)
    store = ResultStore(cfg.store.path)
    assert first["produced"] == 6
    assert store.query("select method, count(*) n from predictions group by 1 order by 1") == [
        {"method": "dyprag", "n": 3},
        {"method": "prag", "n": 3},
    ]
    files = store.query("select method, count(base_model) n from predictions group by 1 order by 1")
    assert files == [{"method": "dyprag", "n": 0}, {"method": "prag", "n": 3}]  # translated experts are no files
    curve = store.query("select checkpoint_key, count(*) n, min(step) s from translator_training group by 1")
    assert len(curve) == 1 and curve[0]["n"] == 3 and curve[0]["s"] == 0
    assert store.query("select status from runs") == [{"status": "finished"}]
    again = pipeline(cfg)
    assert (again["produced"], again["reused"], again["run_id"]) == (0, 0, first["run_id"])
