"""Triggered retrieval (semoe.generation.triggered, methods/dynamic.py).

Decisions and queries are checked on hand-made probabilities, entropies and attention;
the loop on a scripted model (a forward hook that emits a chosen token with a chosen
probability); KV-cache reuse and attention recording on a tiny random Llama against full
recomputation; the methods end to end on the real model (slow)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from semoe.config import ConfigError, GenerationConfig, MethodSpec, RetrievalConfig, SemoeConfig, TriggerConfig
from semoe.evaluation.scoring import trigger_event_rows
from semoe.generation import METHODS
from semoe.generation.answer import sentence_complete, split_sentences
from semoe.generation.base import MethodContext, build_method
from semoe.generation.triggered.attention import LastLayerAttention
from semoe.generation.triggered.engine import Knowledge, Settings, TriggeredGenerator
from semoe.generation.triggered.kv_session import KVSession
from semoe.generation.triggered.query import QueryInputs, formulate_query, qfs_query
from semoe.generation.triggered.triggers import (
    FixLengthTrigger,
    FixSentenceTrigger,
    RindTrigger,
    TokenProbabilityTrigger,
    Trigger,
    later_token_attention,
    rind_scores,
    rind_trigger,
    token_probability_trigger,
)
from semoe.generation.triggered.words import is_content_word, word_spans
from semoe.retrieval.base import Hit
from semoe.storage.results import migrate
from tests.support.helpers import CORPUS

# --------------------------------------------------------------------------- text units


@pytest.mark.parametrize(
    "text, nxt, done",
    [
        ("The answer is Kelloway.", " Then", True),
        ("The answer is Kelloway.", "", True),
        ("It costs 3.", "5", False),  # a decimal point
        ("Written by J.", " R", False),  # an initial
        ('He said "yes."', " Next", True),
        ("Born in 1931 (in Orvania).", " He", True),
        ("No end yet", " here", False),
        ("A list:\n", "1", True),
        ("\n", "The", False),
        ("Really?", " Yes", True),
        # abbreviations, initials and acronyms: an end only once the next word shows it
        ("The answer is St.", " Louis", False),
        ("Brown v.", " Board", False),
        ("It is No.", " 5", False),
        ("The answer is no.", " The", True),
        ("So the answer is Washington, D.C.", " He", False),  # " He" may be " Helena"
        ("So the answer is Washington, D.C.", "", True),
        ("Born at 5 p.m.", " on", False),
        ('"Why?"', " asked", False),
        ("Well...", " Then", True),
    ],
)
def test_sentence_complete(text, nxt, done):
    assert sentence_complete(text, nxt) is done


def test_word_spans_merge_subwords_with_their_punctuation():
    pieces = ["The", " answer", " is", " Kel", "low", "ay", ".", "\n", "Next"]
    assert word_spans(pieces) == [(0, 1), (1, 2), (2, 3), (3, 7), (7, 8), (8, 9)]


def test_content_words_and_sentences():
    assert [is_content_word(w) for w in ["the", " Was", "Kelloway.", ",", "1931", "born", "'s"]] == [
        False,
        False,
        True,
        False,
        True,
        True,
        False,
    ]
    assert split_sentences("He was born in 1931. J. R. Smith wrote it! Where? The answer is 3.5") == [
        "He was born in 1931.",
        "J. R. Smith wrote it!",
        "Where?",
        "The answer is 3.5",
    ]
    assert split_sentences("Gen. Lee was born in St. Louis, Mo. in 1807. He met Mr. Smith.") == [
        "Gen. Lee was born in St. Louis, Mo. in 1807.",
        "He met Mr. Smith.",
    ]


# --------------------------------------------------------------------------- decisions


def test_token_probability_trigger_fires_on_improbable_tokens_only():
    t = token_probability_trigger([0.99, 0.98, 0.2], threshold=0.1)
    assert t is not None and t.token_index == 2 and t.token_end == 3 and t.hit == [False, False, True]
    assert t.score == pytest.approx((0.01 + 0.02 + 0.8) / 3)
    assert token_probability_trigger([0.99, 0.98, 0.97], threshold=0.1) is None
    assert token_probability_trigger([], threshold=0.1) is None
    # the solver decides how one bad token counts
    assert token_probability_trigger([0.99, 0.5], 0.3, "max") is not None
    assert token_probability_trigger([0.99, 0.5], 0.3, "min") is None
    assert token_probability_trigger([0.99, 0.5], 0.3, "avg") is None


def test_later_token_attention_is_max_over_later_rows_then_mean_over_heads():
    h0 = [[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]]
    h1 = [[1, 0, 0], [0.9, 0.1, 0], [0.1, 0.1, 0.8]]
    assert later_token_attention(np.array([h0, h1])) == pytest.approx([1.0, 0.3, 0.65])


PIECES = ["The", " answer", " is", " Kel", "low", "ay", "."]


def test_rind_fires_on_an_uncertain_attended_content_word():
    entropies = [0.1, 0.2, 0.1, 3.0, 2.0, 1.0, 0.1]
    attention = [0.1, 0.2, 0.1, 0.2, 0.1, 0.1, 0.2]
    spans, scores = rind_scores(PIECES, entropies, attention)
    # words: The, answer, is, Kelloway. -> attention 0.1, 0.2, 0.1, 0.6 (normalised to mean 1)
    assert spans == [(0, 1), (1, 2), (2, 3), (3, 7)]
    norm = np.array([0.1, 0.2, 0.1, 0.6]) / 1.0 * 4
    assert scores == pytest.approx([0.0, norm[1] * 0.2, 0.0, norm[3] * np.mean([3.0, 2.0, 1.0, 0.1])])
    t = rind_trigger(PIECES, entropies, attention, threshold=1.2)
    assert t is not None and (t.token_index, t.token_end) == (3, 7)
    assert t.hit == [False, False, False, True, True, True, True]


def test_rind_stays_silent_when_confident_or_unattended():
    attention = [0.1, 0.2, 0.1, 0.2, 0.1, 0.1, 0.2]
    assert rind_trigger(PIECES, [0.1] * 7, attention, threshold=1.2) is None
    # uncertain but ignored by what follows: attention on the word is tiny
    low = [0.3, 0.3, 0.3, 0.001, 0.001, 0.001, 0.001]
    assert rind_trigger(PIECES, [0.1, 0.1, 0.1, 3.0, 3.0, 3.0, 0.1], low, threshold=1.2) is None
    assert rind_trigger([], [], [], threshold=1.2) is None


def test_rind_content_word_filter():
    entropies = [0.1, 0.1, 5.0, 0.1, 0.1, 0.1, 0.1]  # only "is" is uncertain
    attention = [0.1, 0.1, 0.5, 0.1, 0.1, 0.1, 0.1]
    assert rind_trigger(PIECES, entropies, attention, 1.2, check_real_words=True) is None
    t = rind_trigger(PIECES, entropies, attention, 1.2, check_real_words=False)
    assert t is not None and t.token_index == 2


def test_triggers():
    unit = SimpleNamespace(probs=[0.9, 0.1], pieces=PIECES, entropies=[0.1] * 7, attention=None)
    assert TokenProbabilityTrigger(threshold=0.1).check(unit) is not None
    assert Trigger().check(unit) is None and FixSentenceTrigger().check(unit) is None
    assert FixLengthTrigger(step_tokens=4).before_step and FixLengthTrigger(step_tokens=4).step_tokens == 4
    with pytest.raises(ValueError, match="attention"):
        RindTrigger().check(unit)


# --------------------------------------------------------------------------- queries

Q = QueryInputs(
    question="Where was Teodric Almsvane born?",
    previous="Teodric Almsvane is an engineer. He was born in 1931.",
    current=[" He", " was", " born", " in", " Kel", "loway", "."],
    hit=[False, False, False, False, True, True, False],
    words=["Where", " was", " Teodric", " Almsvane", " born?", "Teodric", " Almsvane", " is", " an", " engineer."],
    word_scores=[0.01, 0.5, 0.3, 0.4, 0.05, 0.2, 0.1, 0.9, 0.0, 0.25],
)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("direct", "Where was Teodric Almsvane born?"),
        ("forward_all", "Where was Teodric Almsvane born? Teodric Almsvane is an engineer. He was born in 1931."),
        ("current", "He was born in Kelloway."),
        ("current_wo_wrong", "He was born in"),
        ("last_sentence", "He was born in 1931."),
        ("last_n_tokens", "born in 1931."),
        ("real_words", "Teodric Almsvane Teodric engineer"),
    ],
)
def test_query_formulations(kind, expected):
    assert formulate_query(kind, Q, keep_top_k=4, last_n=3) == expected


def test_query_fallbacks_and_qfs():
    nothing_left = QueryInputs("Who?", current=[" Kel", "loway"], hit=[True, True])
    assert formulate_query("current_wo_wrong", nothing_left) == "Who?"
    masked_answer = QueryInputs("Who?", current=["The", " answer", " is", " Kel", "loway", "."], hit=[0, 0, 0, 1, 1, 0])
    assert formulate_query("current_wo_wrong", masked_answer) == "Who?"  # format words only
    assert formulate_query("current", masked_answer) == "Kelloway."
    assert formulate_query("current", QueryInputs("Who?")) == "Who?"  # no step yet
    with pytest.raises(ValueError, match="unknown"):
        formulate_query("psychic", Q)
    # most attended first, original order kept, stopwords and punctuation never kept
    assert (
        qfs_query(["The", " bell", " is", " in", " Quorvanthe", "."], [0.9, 0.2, 0.8, 0.7, 0.3, 0.9], 5)
        == "bell Quorvanthe"
    )
    assert qfs_query(["The", " bell", " is"], [0.9, 0.2, 0.8], 1, check_real_words=False) == "The"


# --------------------------------------------------------------------------- config, storage, registry


def test_trigger_params_default_from_the_trigger_section_per_method():
    assert METHODS.get("dragin")().params == TriggerConfig()
    cfg = SemoeConfig(trigger={"query_formulation": "last_sentence", "fix_length": 8})
    dragin = build_method(MethodSpec(name="dragin", params={"hallucination_threshold": 1.5}), cfg)
    assert (dragin.params.hallucination_threshold, dragin.params.fix_length) == (1.5, 8)
    assert build_method(MethodSpec(name="token"), cfg).params == cfg.trigger
    with pytest.raises(ConfigError, match=r"methods: 'strict' \(dragin\) params: hallucination_thresold: Extra"):
        build_method(MethodSpec(name="dragin", label="strict", params={"hallucination_thresold": 1}), cfg)
    with pytest.raises(ValueError):
        TriggerConfig(nonsense=1)
    with pytest.raises(ValueError):
        TriggerConfig(query_formulation="psychic")


def test_methods_are_registered():
    for name in ["fix-length-retrieval", "fix-sentence-retrieval", "token", "dragin"]:
        assert METHODS.get(name).uses_retrieval


def test_trigger_event_rows_fit_the_ddl():
    import duckdb

    extra = {
        "trigger_events": [
            {
                "step": 0,
                "token_index": 3,
                "token": "Kelloway",
                "score": 2.5,
                "query": "q one",
                "passage_ids": ["p1", "p2"],
            },
            {"step": 1, "token_index": 9, "token": "", "score": None, "query": "q two", "passage_ids": []},
        ]
    }
    rows = trigger_event_rows("run", "ds", "ex1", "dragin", extra)
    assert trigger_event_rows("run", "ds", "ex1", "no-retrieval", {}) == []
    con = duckdb.connect()
    migrate(con)
    cols = list(rows[0])
    con.executemany(
        f"insert into trigger_events ({', '.join(cols)}) values ({', '.join('?' * len(cols))})",
        [[r[c] for c in cols] for r in rows],
    )
    assert con.execute("select step, token, score, passage_ids from trigger_events order by step").fetchall() == [
        (0, "Kelloway", 2.5, ["p1", "p2"]),
        (1, "", None, []),
    ]
    with pytest.raises(duckdb.ConstraintException):
        con.execute(
            "insert into trigger_events (run_id, dataset, example_id, method, step) "
            "values ('run', 'ds', 'ex1', 'dragin', 0)"
        )


# --------------------------------------------------------------------------- the loop, on a scripted model


class WordRetriever:
    """Word-overlap ranking over the shared small corpus; records the queries."""

    def __init__(self):
        self.queries: list[str] = []

    def search(self, queries, k):
        out = []
        for q in queries:
            self.queries.append(q)
            words = set(q.lower().split())
            ranked = sorted(CORPUS, key=lambda p: -len(words & set(f"{p.title} {p.text}".lower().split())))
            out.append([Hit(p, float(len(ranked) - i), i + 1) for i, p in enumerate(ranked[:k])])
        return out


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semoe.generation.lm import ChatLM

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()
    return ChatLM(model, tok)


def make_engine(lm, trigger, retriever=None, knowledge=None, **settings):
    s = Settings(**{"query_formulation": "current", "retrieve_topk": 2, "generate_max_length": 40, **settings})
    retriever = retriever or WordRetriever()
    return TriggeredGenerator(lm, trigger, s, lambda q, k: retriever.search([q], k)[0], knowledge=knowledge)


def script(engine, text_without, text_with=None, p_without=0.99, p_with=0.99):
    """Make ``engine`` emit ``text_without`` (or ``text_with`` once passages are in the
    prompt) token by token, each with the given probability, then EOS; ``p_*`` may be a
    function of the token's index."""
    import torch

    tok = engine.tokenizer
    header = tok("<|im_start|>assistant\n", add_special_tokens=False).input_ids
    scripts = {
        False: tok(text_without, add_special_tokens=False).input_ids,
        True: tok(text_with if text_with is not None else text_without, add_special_tokens=False).input_ids,
    }
    vocab = len(tok)

    def forward(model, input_ids, cache):
        ids = engine.kv.ids
        start = max(i for i in range(len(ids) - len(header) + 1) if ids[i : i + len(header)] == header) + len(header)
        with_context = "Context:" in tok.decode(ids[:start])
        n = len(ids) - start
        target = scripts[with_context]
        token = target[n] if n < len(target) else tok.eos_token_id
        p = p_with if with_context else p_without
        p = p(n) if callable(p) else p
        logits = torch.zeros(vocab)
        logits[token] = math.log(p * (vocab - 1) / (1 - p))
        return logits

    engine.kv.forward = forward
    return engine


def test_stops_after_the_answer_sentence(tiny):
    out = script(make_engine(tiny, Trigger()), "The answer is Quorvanthe. Then it rambles on.").answer("Where?")
    assert out.raw_output == "The answer is Quorvanthe." and out.prediction == "Quorvanthe"
    assert out.retrievals == [] and out.extra["hallucination_events"] == 0


def test_abbreviations_do_not_end_the_answer_sentence(tiny):
    out = script(make_engine(tiny, Trigger()), "So the answer is St. Louis, Missouri. Then more.").answer("Where?")
    assert out.raw_output == "So the answer is St. Louis, Missouri." and out.prediction == "St. Louis, Missouri"
    # "D.C." ends a sentence only before "He", so the step runs on to the next sentence end
    out = script(make_engine(tiny, Trigger()), "So the answer is Washington, D.C. He died there. More.").answer("Who?")
    assert out.raw_output == "So the answer is Washington, D.C. He died there." and out.prediction == "Washington, D.C."


def test_answer_phrase_must_be_words_and_introduce_an_answer(tiny):
    text = "The answer isn't clear. I wonder what the answer is. So the answer is Orvania. More words."
    out = script(make_engine(tiny, Trigger()), text).answer("Where?")
    assert out.raw_output == text.removesuffix(" More words.") and out.prediction == "Orvania"


def test_finishes_the_answer_sentence_after_a_fixed_window(tiny):
    retriever = WordRetriever()
    engine = make_engine(tiny, FixLengthTrigger(step_tokens=3), retriever)
    out = script(engine, "So the answer is Meridel Abbey. More words follow here.").answer("Who?")
    assert out.raw_output == "So the answer is Meridel Abbey."
    # one retrieval before each 3-token window: "So the answer" | " is Meridel Abbey." was finished as a sentence
    assert len(out.retrievals) == 2 and retriever.queries == ["Who?", "So the answer"]
    assert [e["token_index"] for e in out.extra["trigger_events"]] == [0, 3]


def test_stops_on_length_and_on_no_growth(tiny):
    long = script(
        make_engine(tiny, Trigger(), generate_max_length=6), "one two three four five six seven eight nine ten"
    )
    out = long.answer("Count?")
    assert out.generated_tokens == 6 and out.raw_output == "one two three four five six"
    empty = script(make_engine(tiny, Trigger()), "").answer("Silence?")
    assert empty.raw_output == "" and empty.generated_tokens == 0 and empty.generation_count == 1


def test_eos_after_a_sentence_ends_the_answer(tiny):
    out = script(make_engine(tiny, FixSentenceTrigger(), max_retrievals=1), "It is Quorvanthe. Yes.").answer("Where?")
    assert out.raw_output == "It is Quorvanthe. Yes."
    assert len(out.retrievals) == 1  # max_retrievals caps the per-sentence retrievals
    assert out.generation_count == 2


def test_token_trigger_retrieves_and_regenerates_the_sentence(tiny):
    retriever = WordRetriever()
    engine = make_engine(tiny, TokenProbabilityTrigger(threshold=0.1), retriever, query_formulation="current_wo_wrong")
    tok = engine.tokenizer
    first, second = "Tobin Ashcroft painted harbours.", " He was born in Meridel."
    n_first = len(tok(first, add_special_tokens=False).input_ids)
    pieces = [tok.decode([t]) for t in tok(second, add_special_tokens=False).input_ids]
    flagged = n_first + 4  # the first token of "Meridel": unsure without passages, sure with them

    def p_without(i):
        return 0.05 if i == flagged else 0.99

    out = script(engine, first + second, first + " He lived in Quorvanthe.", p_without).answer("Who is Tobin?")
    assert out.raw_output == "Tobin Ashcroft painted harbours. He lived in Quorvanthe."
    assert out.extra["hallucination_events"] == 1 and len(out.retrievals) == 1
    (event,) = out.extra["trigger_events"]
    assert event["token_index"] == flagged and event["token"] == pieces[4].strip()
    assert event["query"] == "He was born in"  # the word holding the flagged token is left out
    assert retriever.queries == [event["query"]] and event["score"] > 0.1
    assert event["passage_ids"] == [h.passage.id for h in out.retrievals[0].hits]
    # discarded sentence counted as generated work
    assert out.generation_count == 3 and out.extra["tokens"] == out.generated_tokens > len(
        tok(out.raw_output).input_ids
    )


def test_silent_trigger_never_retrieves(tiny):
    engine = make_engine(tiny, TokenProbabilityTrigger(threshold=0.3))
    out = script(engine, "Tobin Ashcroft painted harbours. The answer is Tobin.").answer("Who?")
    assert out.retrievals == [] and out.extra["hallucination_events"] == 0
    assert out.raw_output == "Tobin Ashcroft painted harbours. The answer is Tobin."


def test_max_retrievals_zero_accepts_flagged_sentences(tiny):
    engine = make_engine(tiny, TokenProbabilityTrigger(threshold=0.3), max_retrievals=0)
    out = script(engine, "Maybe Quorvanthe.", p_without=0.1).answer("Where?")
    assert out.raw_output == "Maybe Quorvanthe." and out.retrievals == []
    assert out.extra["hallucination_events"] == 1


class Recorder(Knowledge):
    """A knowledge insertion that changes "the model" on each trigger (here: nothing, but
    it must invalidate the cache) and shows no passages in the prompt."""

    def __init__(self):
        self.calls = []

    def start(self, engine, question):
        self.calls.append(("start", question))

    def insert(self, engine, hits):
        self.calls.append(("insert", [h.passage.id for h in hits]))
        engine.invalidate_cache()
        return None


def test_knowledge_hook_replaces_passages_and_invalidates_the_cache(tiny):
    def answers(knowledge):
        engine = script(
            make_engine(tiny, FixSentenceTrigger(), knowledge=knowledge, max_retrievals=1), "The answer is Quorvanthe."
        )
        return [engine.answer(q) for q in ["Where is the winter market?", "Who copied star charts?"]]

    knowledge = Recorder()
    outs = answers(knowledge)
    assert [o.raw_output for o in outs] == ["The answer is Quorvanthe."] * 2
    assert [c[0] for c in knowledge.calls] == ["start", "insert", "start", "insert"]
    assert knowledge.calls[0] == ("start", "Where is the winter market?")
    assert [o.extra["reused_tokens"] for o in outs] == [0, 0]  # the cache is dropped after each insertion
    assert answers(None)[1].extra["reused_tokens"] > 0  # passages in the prompt: the chat prefix is reused


# --------------------------------------------------------------------------- KV reuse and attention, tiny model


def test_kv_reuse_equals_recomputation(tiny):
    import torch

    tok, model = tiny.tokenizer, tiny.model
    shared = tok(
        "A shared few-shot prefix that both prompts start with, word for word.", add_special_tokens=False
    ).input_ids
    p1 = shared + tok(" First question and its continuation", add_special_tokens=False).input_ids
    p2 = shared + tok(" Second, different question", add_special_tokens=False).input_ids

    def greedy(session, prompt, n=6):
        logits, out = session.sync(prompt), []
        first = logits.clone()
        for _ in range(n):
            out.append(int(torch.argmax(logits)))
            logits = session.step(out[-1])
        return first, out

    with torch.inference_mode():
        reused = KVSession(model)
        greedy(reused, p1)
        l_reuse, t_reuse = greedy(reused, p2)
        l_fresh, t_fresh = greedy(KVSession(model), p2)
        assert t_reuse == t_fresh and torch.allclose(l_reuse, l_fresh, atol=1e-4)
        assert reused.reused == len(shared) and reused.prefilled == len(p1) + len(p2) - len(shared)
        # the generated tokens themselves are reused when the prompt only grows
        grown = reused.ids + tok(" more", add_special_tokens=False).input_ids
        before = reused.prefilled
        reused.sync(grown)
        assert reused.prefilled - before == 1
        # a target that is a prefix of what is cached recomputes only its last token
        reused.sync(p2)
        assert torch.allclose(reused.logits, l_fresh, atol=1e-4)


def test_remembered_prefix_is_reused_after_the_cache_moved_on(tiny):
    import torch

    tok, model = tiny.tokenizer, tiny.model
    shots = tok("System prompt and few-shot turns, identical for every question.", add_special_tokens=False).input_ids
    q1 = shots + tok(" Question one?", add_special_tokens=False).input_ids
    q2 = shots + tok(" Question two, longer?", add_special_tokens=False).input_ids
    other = tok("A prompt with passages in it that shares nothing.", add_special_tokens=False).input_ids
    with torch.inference_mode():
        session = KVSession(model)
        session.sync(q1)
        session.remember(len(shots))
        session.remember(len(shots))  # kept once
        session.sync(other)
        before = session.reused
        logits = session.sync(q2)
        assert session.reused - before == len(shots) and len(session.snapshots) == 1
        assert torch.allclose(logits, KVSession(model).sync(q2), atol=1e-4)
        session.invalidate()
        assert session.snapshots == [] and session.ids == []


@pytest.mark.parametrize(
    "trigger", [TokenProbabilityTrigger(threshold=0.5), RindTrigger(threshold=1.2)], ids=["token", "dragin"]
)
def test_engine_with_cache_reuse_matches_recomputation(tiny, trigger):
    def run(recompute: bool):
        engine = make_engine(tiny, trigger, query_formulation="real_words", generate_max_length=24)
        if recompute:
            sync = engine.kv.sync
            engine.kv.sync = lambda target: (engine.kv.invalidate(), sync(target))[1]
        return [engine.answer(q) for q in ["Where is Quorvanthe?", "Who painted Harbour Lights?"]]

    reuse, recompute = run(False), run(True)
    assert reuse[1].extra["reused_tokens"] > 0 and all(o.extra["reused_tokens"] == 0 for o in recompute)
    for a, b in zip(reuse, recompute):
        assert a.raw_output == b.raw_output and a.generated_tokens == b.generated_tokens
        assert [(e["token_index"], e["query"]) for e in a.extra["trigger_events"]] == [
            (e["token_index"], e["query"]) for e in b.extra["trigger_events"]
        ]
        assert a.extra["hallucination_events"] >= 1  # random weights are never sure


def test_engine_decoding_equals_model_generate(tiny):
    engine = make_engine(tiny, Trigger(), generate_max_length=20)
    out = engine.answer("Who painted Harbour Lights?")
    (ref,) = tiny.generate(
        [[{"role": "user", "content": _user_turn("Who painted Harbour Lights?")}]], max_new_tokens=20
    )
    assert out.raw_output == ref.text and out.generated_tokens == ref.new_tokens


def _user_turn(question):
    from semoe.generation.prompts import user_turn

    return user_turn(question, None, False)


def test_recorded_attention_matches_eager_attention(tiny_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM

    sdpa = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, attn_implementation="sdpa").eval()
    eager = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, attn_implementation="eager").eval()
    ids = list(range(100, 140))
    recorder = LastLayerAttention(sdpa)
    with torch.inference_mode():
        session = KVSession(sdpa)
        plain = session.sync(ids[:30])
        with recorder.recording() as rows:
            stepped = [session.step(t) for t in ids[30:]]
        full = eager(input_ids=torch.tensor([ids]), output_attentions=True)
    reference = full.attentions[-1][0]  # (heads, 40, 40)
    assert len(rows) == 10
    for i, row in enumerate(rows):
        assert torch.allclose(row, reference[:, 30 + i, : 31 + i], atol=1e-5)
    assert torch.allclose(stepped[-1], full.logits[0, -1], atol=1e-4)  # recording changes no output
    assert torch.allclose(plain, full.logits[0, 29], atol=1e-4)
    assert sdpa.model.layers[-1].self_attn.config is sdpa.config  # restored after recording


def test_method_runs_on_a_context_without_trigger_section(tiny):
    ctx = MethodContext(
        generation=GenerationConfig(max_new_tokens=8, few_shot=1),
        lm=tiny,
        retrieval=RetrievalConfig(top_k=2),
        retriever=WordRetriever(),
    )
    examples = [
        SimpleNamespace(question="Where is Quorvanthe?"),
        SimpleNamespace(question="Who founded Meridel Abbey?"),
    ]
    outs = METHODS.get("dragin")().run(examples, ctx)
    assert len(outs) == 2 and all(0 < o.generated_tokens == o.extra["tokens"] <= 16 for o in outs)
    assert all(len(o.retrievals) == len(o.extra["trigger_events"]) >= 1 for o in outs)
    assert all(len(step.hits) <= 2 for o in outs for step in o.retrievals)
    assert set(outs[0].latency) == {"retrieve", "generate"}
    (out,) = METHODS.get("fix-sentence-retrieval")(TriggerConfig(max_retrievals=0, generate_max_length=5)).run(
        examples[:1], ctx
    )
    assert out.retrievals == [] and 0 < out.generated_tokens <= 5


# --------------------------------------------------------------------------- real model, end to end


@pytest.mark.slow
def test_dragin_and_token_end_to_end(model_cache_root, tmp_path):
    from semoe.config import SyntheticConfig
    from semoe.data.encyclopedia import build_encyclopedia
    from semoe.evaluation.scoring import to_rows
    from semoe.generation.lm import ChatLM
    from semoe.models.loading import load_model
    from semoe.retrieval import RETRIEVERS

    enc = build_encyclopedia(SyntheticConfig(n_entities=20, n_questions=3))
    retriever = RETRIEVERS.get("tantivy")(RetrievalConfig(), tmp_path / "index", "trig-test")
    retriever.build(enc.passages)
    model, tok = load_model("smollm2-135m-instruct", model_cache_root)
    ctx = MethodContext(
        generation=GenerationConfig(), lm=ChatLM(model, tok), retrieval=RetrievalConfig(), retriever=retriever
    )
    for method in ["dragin", "token"]:
        outs = METHODS.get(method)().run(enc.questions, ctx)
        tables = to_rows("run", "synthetic", method, enc.questions, outs, experts=None)
        assert len(tables["predictions"]) == 3
        for ex, out, row in zip(enc.questions, outs, tables["predictions"]):
            assert out.raw_output and row["prediction"] and row["generated_tokens"] > 0
            events = [e for e in tables["trigger_events"] if e["example_id"] == ex.id]
            assert row["retrieval_count"] == len(out.extra["trigger_events"]) == len(events)
            assert "trigger_events" not in json.loads(row["extra"])  # stored once: in trigger_events
            assert row["latency_s"] > 0 and out.prompt_tokens > 0
            assert out.extra["prefill_tokens"] > 0 and out.extra["tokens"] == out.generated_tokens
        # the answers come in the few-shot format, and the triggers retrieve
        assert sum("answer is" in o.raw_output.lower() for o in outs) >= 2
        assert tables["retrievals"] and all(r["query"] for r in tables["retrievals"])
        assert len(tables["trigger_events"]) == sum(len(o.retrievals) for o in outs)
