"""Reflection-token adaptive retrieval (Self-RAG / Open-RAG), Open-RAG's JSONL with per-question
contexts, the provided-contexts retriever, and the routing flow's QA path running the method.

Models: tiny random Llama / OLMoE with SmolLM2's tokenizer extended by the reflection tokens."""

from __future__ import annotations

import json
import math

import pytest
import torch

from semoe.config import (
    ConfigError,
    CorpusConfig,
    DatasetConfig,
    GenerationConfig,
    RetrievalConfig,
    SemoeConfig,
    SyntheticConfig,
)
from semoe.data import DataContext
from semoe.data.loading import iter_passages, load_examples
from semoe.data.schema import DataFormatError, Example, Passage
from semoe.generation.base import MethodContext
from semoe.generation.lm import ChatLM, ScoredGeneration
from semoe.generation.methods.reflection import (
    GROUNDING,
    NO_RETRIEVE,
    OPENRAG_PROMPT,
    REFLECTION_TOKENS,
    RELEVANCE,
    RETRIEVE,
    UTILITY,
    ReflectionParams,
    ReflectionRetrieval,
    reflection_token_ids,
    score_answer,
)
from semoe.retrieval.base import RetrievalError
from semoe.retrieval.provided import ProvidedContexts

GEN = GenerationConfig(max_new_tokens=4, few_shot=0, batch_size=4)
RETRIEVAL = RetrievalConfig(top_k=2)


@pytest.fixture(scope="module")
def reflection_lm(tmp_path_factory, model_cache_root):
    """A tiny random Llama whose tokenizer has the reflection tokens."""
    from semoe.models.loading import load_model
    from tests.support.helpers import make_tiny_lm

    path = make_tiny_lm(tmp_path_factory.mktemp("tiny-reflection-llama"), REFLECTION_TOKENS)
    return ChatLM(*load_model(path, model_cache_root))


def _example(i: int, n_contexts: int = 3) -> Example:
    contexts = [
        Passage(f"q{i}-p{j}", f"Title {j}", f"Passage {j} of question {i} says {'x ' * j}.") for j in range(n_contexts)
    ]
    return Example(f"q{i}", f"Who founded place number {i}?", [f"founder {i}"], "openrag", contexts=contexts)


def _run(lm, examples, **params):
    method = ReflectionRetrieval(ReflectionParams(**params))
    ctx = MethodContext(generation=GEN, lm=lm, retrieval=RETRIEVAL, retriever=ProvidedContexts(examples, "openrag"))
    return method.run(examples, ctx)


# ------------------------------------------------------------------ decision and modes


def test_decision_probability_equals_the_first_position_softmax(reflection_lm):
    lm, tok = reflection_lm, reflection_lm.tokenizer
    examples = [_example(0), _example(1)]
    ids = reflection_token_ids(tok)
    expected = []
    for ex in examples:
        prompt = OPENRAG_PROMPT.format(question=ex.question)  # SmolLM2's tokenizer adds no BOS
        with torch.no_grad():
            logits = lm.model(torch.tensor([tok(prompt, add_special_tokens=False).input_ids])).logits[0, -1]
        p = torch.softmax(logits.double(), dim=-1)
        expected.append(float(p[ids[RETRIEVE]] / (p[ids[RETRIEVE]] + p[ids[NO_RETRIEVE]])))
    outs = _run(lm, examples, mode="adaptive_retrieval", threshold=0.0)
    got = [o.extra["retrieval"]["probability"] for o in outs]
    assert got == pytest.approx(expected, abs=1e-6)

    # The threshold splits the two questions: one retrieves, the other does not.
    low, high = sorted(expected)
    outs = _run(lm, examples, mode="adaptive_retrieval", threshold=(low + high) / 2)
    decided = {ex.id: o.extra["retrieval"]["decision"] for ex, o in zip(examples, outs)}
    assert sorted(decided.values()) == [False, True]
    for ex, o, prob in zip(examples, outs, expected):
        retrieved = prob > (low + high) / 2
        assert decided[ex.id] is retrieved and bool(o.retrievals) is retrieved
        assert ("trigger_events" in o.extra) is retrieved
        assert ("chosen_passage" in o.extra) is retrieved
        assert o.generation_count == 2 and o.generated_tokens > 1
    event = next(o for o in outs if o.retrievals).extra["trigger_events"][0]
    assert event["token"] == RETRIEVE and event["score"] == pytest.approx(high, abs=1e-6)
    assert event["passage_ids"] == [h.passage.id for h in next(o for o in outs if o.retrievals).retrievals[0].hits]


def test_fixed_modes(reflection_lm):
    examples = [_example(0)]
    always = _run(reflection_lm, examples, mode="always_retrieve", k=3)[0]
    assert always.extra["retrieval"] == {"mode": "always_retrieve", "decision": True, "probability": None}
    assert [h.passage.id for h in always.retrievals[0].hits] == ["q0-p0", "q0-p1", "q0-p2"]
    assert [p["passage_id"] for p in always.extra["passages"]] == ["q0-p0", "q0-p1", "q0-p2"]
    assert always.generation_count == 1  # the three passages in one batched generate
    never = _run(reflection_lm, examples, mode="no_retrieval")[0]
    assert never.extra["retrieval"]["decision"] is False and not never.retrievals
    assert never.generation_count == 1 and "passages" not in never.extra
    # The no-retrieval answer is the reply to prompt + [No Retrieval].
    prompt = OPENRAG_PROMPT.format(question=examples[0].question) + NO_RETRIEVE
    alone = reflection_lm.generate_scored([prompt], GEN.max_new_tokens, [])[0]
    assert never.raw_output == alone.text


def test_missing_reflection_tokens_is_one_clear_error(tiny_lm_dir, model_cache_root):
    from semoe.models.loading import load_model

    model, tok = load_model(tiny_lm_dir, model_cache_root)
    with pytest.raises(ConfigError, match=r"lacks the reflection tokens \['\[Retrieval\]', '\[No Retrieval\]'"):
        _run(ChatLM(model, tok), [_example(0)])


# ------------------------------------------------------------------ scoring


def _logps(probs):
    return [math.log(p) for p in probs]


def _scripted(ids, tokens, relevance, grounding, utility, token_logprobs):
    """A reply whose watched distributions are given: relevance at position 0, grounding and
    utility at the positions where their tokens appear."""
    col = {t: i for i, t in enumerate(REFLECTION_TOKENS)}
    rows = [[math.log(1e-3)] * len(REFLECTION_TOKENS) for _ in tokens]
    for name, p in zip(RELEVANCE, relevance):
        rows[0][col[name]] = math.log(p)
    for names, probs in ((GROUNDING, grounding), (UTILITY, utility)):
        j = next(j for j, t in enumerate(tokens) if t in {ids[n] for n in names})
        for name, p in zip(names, probs):
            rows[j][col[name]] = math.log(p)
    return ScoredGeneration(tokens, "", token_logprobs, rows, 10, 0.0)


def test_passage_score_equals_a_hand_computation(reflection_lm):
    ids = reflection_token_ids(reflection_lm.tokenizer)
    word = reflection_lm.tokenizer("Paris", add_special_tokens=False).input_ids[0]
    tokens = [ids["[Relevant]"], word, ids["[Partially supported]"], ids["[Utility:4]"], word]
    gen = _scripted(ids, tokens, (0.6, 0.2), (0.5, 0.3, 0.2), (0.1, 0.1, 0.2, 0.2, 0.4), [-0.5, -1.0, -1.5, -1.0, -1.0])
    rel = 0.6 / (0.6 + 0.2)
    grd = (0.5 + 0.5 * 0.3) / (0.5 + 0.3 + 0.2)
    use = (-1 * 0.1 - 0.5 * 0.1 + 0 * 0.2 + 0.5 * 0.2 + 1 * 0.4) / 1.0
    params = ReflectionParams(w_rel=1.0, w_sup=2.0, w_use=0.5)
    s = score_answer(gen, ids, params, "Paris", "p")
    assert (s.relevance, s.grounding, s.utility) == pytest.approx((rel, grd, use))
    assert s.score == pytest.approx(1.0 * rel + 2.0 * grd + 0.5 * use)
    assert s.seq_logprob == pytest.approx(-1.0)
    with_seq = score_answer(gen, ids, params.model_copy(update={"use_seq_score": True}), "Paris", "p")
    assert with_seq.score == pytest.approx(math.exp(-1.0) + 1.0 * rel + 2.0 * grd + 0.5 * use)
    # No grounding / utility token generated: those scores are 0; an empty answer scores -1.
    bare = ScoredGeneration([word], "", [-1.0], [gen.watched[0]], 10, 0.0)
    s = score_answer(bare, ids, params, "Paris", "p")
    assert (s.grounding, s.utility, s.score) == (0.0, 0.0, pytest.approx(rel))
    assert score_answer(bare, ids, params, "", "p").score == -1.0


class ScriptedLM(ChatLM):
    """The tiny model's tokenizer and budget; replies scripted per passage in the prompt."""

    def __init__(self, lm, replies):
        super().__init__(lm.model, lm.tokenizer)
        self.replies, self.calls = replies, []

    def generate_scored(self, prompts, max_new_tokens, watch, batch_size=8):
        self.calls.append(list(prompts))
        return [next(gen for key, gen in self.replies.items() if key in p) for p in prompts]


def test_the_best_scored_passage_answers(reflection_lm):
    ids = reflection_token_ids(reflection_lm.tokenizer)
    ex = _example(0, n_contexts=2)
    word = reflection_lm.tokenizer("Paris", add_special_tokens=False).input_ids[0]
    tokens = [ids["[Relevant]"], word, ids["[Fully supported]"], ids["[Utility:5]"]]
    weak = _scripted(ids, tokens, (0.3, 0.7), (0.2, 0.2, 0.6), (0.2,) * 5, [-1.0] * 4)
    strong = _scripted(ids, tokens, (0.9, 0.1), (0.8, 0.1, 0.1), (0.0625,) * 4 + (0.75,), [-1.0] * 4)
    weak.text, strong.text = "[Relevant]Lyon[Fully supported]", "[Relevant]Paris[Fully supported][Utility:5]"
    lm = ScriptedLM(reflection_lm, {ex.contexts[0].text: weak, ex.contexts[1].text: strong})
    out = _run(lm, [ex], mode="always_retrieve")[0]
    assert [len(c) for c in lm.calls] == [2]  # both passages in one generate
    assert out.prediction == "Paris" and out.extra["chosen_passage"] == "q0-p1"
    scores = {p["passage_id"]: p for p in out.extra["passages"]}
    assert scores["q0-p0"]["answer"] == "Lyon"
    assert scores["q0-p1"]["relevance"] == pytest.approx(0.9)
    assert scores["q0-p1"]["grounding"] == pytest.approx(0.8 + 0.5 * 0.1)
    assert scores["q0-p1"]["utility"] == pytest.approx(-0.0625 - 0.5 * 0.0625 + 0.5 * 0.0625 + 0.75)


def test_passages_are_cut_to_the_budget(reflection_lm):
    ids = reflection_token_ids(reflection_lm.tokenizer)
    big, small = Passage("big", "Big", "word " * 500), Passage("small", "Small", "a short passage.")
    ex = Example("q0", "Who built the tower?", ["x"], "d", contexts=[big, small])
    reply = ScoredGeneration([ids["[Relevant]"]], "Paris", [-1.0], [[0.0] * len(REFLECTION_TOKENS)], 10, 0.0)
    lm = ScriptedLM(reflection_lm, {"": reply})
    base = len(reflection_lm.tokenizer(OPENRAG_PROMPT.format(question=ex.question)).input_ids)
    g = GenerationConfig(max_new_tokens=2, max_passage_tokens=64, max_prompt_tokens=base + 40)
    ctx = MethodContext(generation=g, lm=lm, retrieval=RETRIEVAL, retriever=ProvidedContexts([ex], "d"))
    out = ReflectionRetrieval(ReflectionParams(mode="always_retrieve")).run([ex], ctx)[0]
    assert out.truncated and out.extra["truncation"]["cut_passages"] == ["big"]
    (prompts,) = lm.calls
    assert [len(reflection_lm.tokenizer(p).input_ids) <= base + 40 for p in prompts] == [True, True]
    assert prompts[1].endswith(f"{RETRIEVE}<paragraph>{small.text}</paragraph>")
    tight = GenerationConfig(max_new_tokens=2, max_prompt_tokens=base - 1)
    ctx = MethodContext(generation=tight, lm=lm, retrieval=RETRIEVAL, retriever=ProvidedContexts([ex], "d"))
    (failed,) = ReflectionRetrieval(ReflectionParams(mode="always_retrieve")).run([ex], ctx)
    assert failed.error.startswith(f"the question does not fit the prompt budget of {base - 1} tokens")


def test_batched_answers_equal_one_at_a_time(reflection_lm):
    ex = _example(0)
    watch = list(reflection_token_ids(reflection_lm.tokenizer).values())
    base = OPENRAG_PROMPT.format(question=ex.question)
    prompts = [f"{base}{RETRIEVE}<paragraph>{p.text}</paragraph>" for p in ex.contexts]
    assert len({len(reflection_lm.tokenizer(p).input_ids) for p in prompts}) == 3  # padding is exercised
    batched = reflection_lm.generate_scored(prompts, 6, watch, batch_size=3)
    for prompt, b in zip(prompts, batched):
        alone = reflection_lm.generate_scored([prompt], 6, watch)[0]
        assert b.tokens == alone.tokens and b.text == alone.text and b.prompt_tokens == alone.prompt_tokens
        assert b.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-4)
        assert torch.allclose(torch.tensor(b.watched), torch.tensor(alone.watched), atol=1e-4)


# ------------------------------------------------------------------ data


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


SELF_RAG_ROWS = [  # Self-RAG's ctxs (Contriever output: id, title, text, score)
    {
        "id": "a1",
        "question": "Who wrote Kelloway?",
        "answers": ["Teodric", "T. Almsvane"],
        "ctxs": [
            {"id": "9", "title": "Kelloway", "text": "Kelloway was written by Teodric.", "score": "1.5"},
            {"id": "3", "title": "Orvania", "text": "Orvania is a country.", "score": "1.2"},
        ],
    }
]
OPEN_RAG_ROWS = [  # Open-RAG's top_contexts without ids, a string answer
    {
        "question": "Where is Solmere?",
        "answer": "Varossia",
        "top_contexts": [{"title": "Solmere", "text": "In Varossia."}],
    },
    {"question": "Is Fennick a town?", "answer": True, "top_contexts": []},
]


def test_loader_reads_ctxs_and_top_contexts(tmp_path):
    ctx = DataContext(synthetic=SyntheticConfig())
    a = load_examples(DatasetConfig(name="openrag", path=_write_jsonl(tmp_path / "a.jsonl", SELF_RAG_ROWS)), ctx)
    assert a[0].id == "a1" and a[0].answers == ["Teodric", "T. Almsvane"]
    assert a[0].contexts == [
        Passage("9", "Kelloway", "Kelloway was written by Teodric."),
        Passage("3", "Orvania", "Orvania is a country."),
    ]
    b = load_examples(DatasetConfig(name="openrag", path=_write_jsonl(tmp_path / "b.jsonl", OPEN_RAG_ROWS)), ctx)
    assert [e.id for e in b] == ["0", "1"] and b[1].answers == ["yes"] and b[1].contexts == []
    assert b[0].contexts == [Passage("0#0", "Solmere", "In Varossia.")]
    assert Example.from_dict(b[0].as_dict()) == b[0]  # contexts survive the task boundary


def test_contexts_of_an_openrag_file_are_a_corpus(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", SELF_RAG_ROWS + OPEN_RAG_ROWS + SELF_RAG_ROWS)
    cfg = CorpusConfig(format="dataset-contexts", dataset="openrag", path=str(path))
    passages = list(iter_passages(cfg, DataContext(synthetic=SyntheticConfig())))
    assert passages == [  # each context once, however many rows show it; ids are the titles
        Passage("Kelloway", "Kelloway", "Kelloway was written by Teodric."),
        Passage("Orvania", "Orvania", "Orvania is a country."),
        Passage("Solmere", "Solmere", "In Varossia."),
    ]


def test_loader_names_a_bad_context(tmp_path):
    rows = [{"question": "Q?", "answers": ["a"], "ctxs": [{"title": "T", "text": ""}]}]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataFormatError, match=r"bad\.jsonl: line 1: ctxs\[0\]: field 'text' is missing, empty"):
        load_examples(DatasetConfig(name="openrag", path=path), DataContext(synthetic=SyntheticConfig()))


def test_provided_contexts_in_order_and_only_for_the_questions():
    ex = _example(0)
    hits = ProvidedContexts([ex], "d").search([ex.question], 2)[0]
    assert [(h.passage.id, h.rank) for h in hits] == [("q0-p0", 1), ("q0-p1", 2)]
    with pytest.raises(RetrievalError, match="not the query 'a generated query'"):
        ProvidedContexts([ex], "d").search(["a generated query"], 2)
    with pytest.raises(DataFormatError, match="question 'q1' has no contexts"):
        ProvidedContexts([_example(1, n_contexts=0)], "d")


# ------------------------------------------------------------------ routing flow


@pytest.fixture(scope="module")
def tiny_reflection_olmoe(tmp_path_factory, model_cache_root) -> str:
    from tests.support.helpers import make_tiny_olmoe

    return make_tiny_olmoe(tmp_path_factory.mktemp("tiny-reflection-olmoe"), REFLECTION_TOKENS)


@pytest.mark.slow
def test_routing_flow_answers_with_reflection_from_provided_contexts(tmp_path, tiny_reflection_olmoe, prefect_api):
    from pathlib import Path

    from semoe.flows.routing import evaluate_routing
    from semoe.storage.results import ResultStore

    torch.set_num_threads(1)
    data = _write_jsonl(tmp_path / "hotpot.jsonl", SELF_RAG_ROWS + OPEN_RAG_ROWS[:1])
    cfg = SemoeConfig.model_validate(
        {
            "name": "reflection-routing",
            "synthetic": {"seed": 1, "n_entities": 8, "n_questions": 3},
            "datasets": [{"name": "openrag", "path": data, "label": "hotpot"}],
            "generation": {"max_new_tokens": 3, "few_shot": 0, "batch_size": 4},
            "store": {"path": str(tmp_path / "results.duckdb")},
            "cache": {"root": str(tmp_path / "cache")},
            "routing": {
                "models": [{"spec": tiny_reflection_olmoe, "label": "tiny"}],
                "policies": [{"name": "roe", "params": {"samples": 2, "tau": 1.0}}],
                "eval_texts": 2,
                "calibration_texts": 0,
                "max_tokens": 16,
                "decode": {"prompt_tokens": 8, "max_new_tokens": 2},
                "heatmaps": False,
                "qa": {
                    "dataset": "hotpot",
                    "method": {"name": "reflection", "label": "open-rag", "params": {"threshold": 0.0, "k": 2}},
                },
            },
        }
    )
    result = evaluate_routing(cfg)
    rows = ResultStore(cfg.store.path).query("SELECT * FROM routing_by_k ORDER BY policy_label")
    assert [r["policy_label"] for r in rows] == ["baseline", "roe"]
    for r in rows:
        assert r["qa_n"] == 2 and r["qa_method"] == "open-rag" and 0 <= r["qa_f1"] <= 1
        assert r["qa_retrieval_rate"] == 1.0  # threshold 0: every positive p(Retrieval) retrieves
        assert r["qa_tokens_per_s"] > 0
    assert result["produced"] == 2
    assert not (Path(cfg.cache.root) / "indexes").exists()  # the contexts came from the file


def test_routing_qa_method_params_are_checked():
    from semoe.checks import check_config

    cfg = SemoeConfig.model_validate(
        {
            "datasets": [{"name": "synthetic"}],
            "routing": {
                "models": ["x"],
                "qa": {"dataset": "synthetic", "method": {"name": "reflection", "params": {"mode": "sometimes"}}},
            },
        }
    )
    with pytest.raises(ConfigError, match=r"methods: 'reflection' \(reflection\) params: mode"):
        check_config(cfg)
