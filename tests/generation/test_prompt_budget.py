"""Prompts longer than the model's context (semoe.generation.prompts.fit_messages, ChatLM.fit).

The fitting order is checked with a word tokenizer (exact sizes, no model); the methods on a
tiny random Llama whose ``max_position_embeddings`` is set small, with a hook on the rotary
embedding recording every position the model is run at: no method may exceed the context."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from semoe.config import ConfigError, GenerationConfig, RetrievalConfig, config_from_dict
from semoe.data.schema import Example, Passage
from semoe.generation import METHODS
from semoe.generation.base import MethodContext
from semoe.generation.methods.dynamic import TriggeredMethod
from semoe.generation.prompts import (
    MIN_PASSAGE_TOKENS,
    TRUNCATION_MARK,
    PromptBudget,
    PromptTooLongError,
    build_messages,
    fit_messages,
)
from semoe.retrieval.base import Hit

# --------------------------------------------------------------------------- fitting order (word tokens)


def count_words(messages) -> int:
    return sum(len(m["content"].split()) for m in messages)


def word_ends(text: str) -> list[int]:
    return [m.end() for m in re.finditer(r"\S+", text)]


def words(tag: str, n: int) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


Q = "Who built the tall tower?"
A, B, C = (
    Passage("A", "Alpha", words("a", 100)),
    Passage("B", "Beta", words("b", 10)),
    Passage("C", "Gamma", words("c", 60)),
)


def cut(p: Passage, n: int) -> Passage:
    return Passage(p.id, p.title, words(p.text[0], n) + TRUNCATION_MARK)


def fit(budget: PromptBudget, passages=(A, B, C), few_shot=2, cot=False):
    return fit_messages(Q, list(passages) or None, few_shot, cot, budget, count_words, word_ends)


@pytest.mark.parametrize("passages, few_shot, cot", [((A, B, C), 2, False), ((), 2, True), ((B,), 0, False)])
def test_prompt_within_budget_is_unchanged(passages, few_shot, cot):
    expected = build_messages(Q, list(passages) or None, few_shot=few_shot, cot=cot)
    for budget in (PromptBudget(None, None), PromptBudget(100, count_words(expected))):
        out = fit(budget, passages, few_shot, cot)
        assert out.messages == expected and out.prompt_tokens == count_words(expected)
        assert not out.truncation and out.truncation.as_dict() == {
            "cut_passages": [],
            "dropped_passages": [],
            "dropped_shots": 0,
        }


def test_each_passage_is_cut_to_the_passage_budget():
    out = fit(PromptBudget(50, None))
    assert out.messages == build_messages(Q, [cut(A, 50), B, cut(C, 50)], few_shot=2)
    assert out.truncation.cut_passages == ["A", "C"] and not out.truncation.dropped_passages


def test_over_the_total_budget_passages_shrink_evenly_to_the_largest_cap_that_fits():
    budget = count_words(build_messages(Q, [cut(A, 40), B, cut(C, 40)], few_shot=2))
    out = fit(PromptBudget(50, budget))
    assert out.messages == build_messages(Q, [cut(A, 40), B, cut(C, 40)], few_shot=2)  # cap 41 would not fit
    assert out.prompt_tokens == budget and out.truncation.dropped_shots == 0


def test_then_few_shot_turns_are_dropped_then_passages_lowest_ranked_first():
    floor = MIN_PASSAGE_TOKENS
    one_shot = count_words(build_messages(Q, [cut(A, floor), B, cut(C, floor)], few_shot=1))
    out = fit(PromptBudget(None, one_shot))
    assert out.messages == build_messages(Q, [cut(A, floor), B, cut(C, floor)], few_shot=1)
    assert out.truncation.dropped_shots == 1 and out.truncation.cut_passages == ["A", "C"]

    two_passages = count_words(build_messages(Q, [cut(A, 45), B], few_shot=0))
    out = fit(PromptBudget(None, two_passages))
    assert out.messages == build_messages(Q, [cut(A, 45), B], few_shot=0)  # C dropped, the rest grows back
    assert out.truncation.as_dict() == {"cut_passages": ["A"], "dropped_passages": ["C"], "dropped_shots": 2}

    alone = count_words(build_messages(Q, None, few_shot=0))
    out = fit(PromptBudget(None, alone))
    assert out.messages == build_messages(Q, None, few_shot=0)
    assert out.truncation.dropped_passages == ["A", "B", "C"]


def test_question_that_cannot_fit_alone_is_an_error_not_a_cut_question():
    alone = count_words(build_messages(Q, None, few_shot=0))
    with pytest.raises(
        PromptTooLongError, match=rf"budget of {alone - 1} tokens \(ctx\): .* prompt is {alone} tokens$"
    ):
        fit(PromptBudget(512, alone - 1, "ctx"))


def test_budget_settings_are_validated():
    g = GenerationConfig()
    assert (g.max_passage_tokens, g.max_prompt_tokens) == (512, None)
    for field in ("max_passage_tokens", "max_prompt_tokens"):
        with pytest.raises(ConfigError, match=rf"generation\.{field}: Input should be greater than or equal to 1"):
            config_from_dict({"generation": {field: 0}})


# --------------------------------------------------------------------------- tiny model

CONTEXT = 408  # max_position_embeddings the tests give the tiny model
NEW = 8


@pytest.fixture(scope="module")
def lm(tiny_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semoe.generation.lm import ChatLM

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()
    lm = ChatLM(model, tok)
    lm.positions = []  # the largest position of every forward pass
    model.model.rotary_emb.register_forward_hook(
        lambda mod, args, kwargs, out: lm.positions.append(int(kwargs["position_ids"].max())), with_kwargs=True
    )
    return lm


@pytest.fixture
def small_context(lm, monkeypatch):
    monkeypatch.setattr(lm.model.config, "max_position_embeddings", CONTEXT)
    lm.positions.clear()
    return lm


class FixedRetriever:
    """Returns the same passages for every query."""

    def __init__(self, passages):
        self.passages = passages

    def search(self, queries, k):
        return [[Hit(p, 1.0 / r, r) for r, p in enumerate(self.passages[:k], 1)] for _ in queries]


def prose(tag: str, n_words: int) -> str:
    return " ".join(f"{tag} tower stood near the river bank and" for _ in range(n_words // 8))


LONG = [Passage(f"p{i}", f"Tower {i}", prose(f"Tower{i}", 160)) for i in range(3)]  # ~200 tokens each
SHORT = [
    Passage("s1", "Quorvanthe", "Quorvanthe is a river town famous for glass bells."),
    Passage("s2", "Meridel Abbey", "Meridel Abbey was founded by monks who copied star charts."),
]


def context(lm, passages, few_shot=2, template=None, **generation):
    experts = SimpleNamespace(experts_for=lambda passages: [])  # prag/combine: no expert (as when augmentation fails)
    return MethodContext(
        generation=GenerationConfig(max_new_tokens=NEW, few_shot=few_shot, batch_size=2, **generation),
        lm=lm,
        retrieval=RetrievalConfig(top_k=3),
        retriever=FixedRetriever(passages),
        experts=experts,
        template=template,
    )


def make_method(name: str):
    """``name`` with one retrieval at most (triggered methods)."""
    cls = METHODS.get(name)
    return cls(cls.Params(max_retrievals=1)) if issubclass(cls, TriggeredMethod) else cls()


def example(question: str, i: int = 0) -> Example:
    return Example(f"q{i}", question, ["x"], "test")


def test_context_length_and_budget_resolution(lm, monkeypatch):
    g = GenerationConfig()
    assert lm.context_length == 2048
    assert lm.prompt_budget(g, 32) == PromptBudget(512, 2016, "context of 2048 tokens minus 32 new tokens")
    monkeypatch.setattr(lm.model, "config", SimpleNamespace())  # a config without position embeddings
    monkeypatch.setattr(lm.tokenizer, "model_max_length", 1000)
    assert lm.context_length == 1000
    monkeypatch.setattr(lm.tokenizer, "model_max_length", int(1e30))  # transformers' "unknown"
    assert lm.context_length is None and lm.prompt_budget(g, 32).prompt_tokens is None
    monkeypatch.setattr(lm.model, "config", SimpleNamespace(max_position_embeddings=300))
    assert lm.prompt_budget(GenerationConfig(max_prompt_tokens=250), 50).prompt_tokens == 250
    with pytest.raises(ConfigError, match="max_prompt_tokens=251 plus 50 new tokens exceed the model's context of 300"):
        lm.prompt_budget(GenerationConfig(max_prompt_tokens=251), 50)
    with pytest.raises(ConfigError, match="300 new tokens leave no room"):
        lm.prompt_budget(g, 300)


def test_huge_passage_is_cut_to_the_passage_budget_on_a_token_boundary(lm):
    huge = Passage("huge", "Huge", prose("Huge", 20_000)[:100_000])
    assert len(huge.text) == 100_000
    budget = lm.prompt_budget(GenerationConfig(max_passage_tokens=40), NEW)
    out = lm.fit("Who built the tower?", [SHORT[0], huge], few_shot=2, cot=False, budget=budget)
    shown = out.messages[-1]["content"]
    kept = shown[shown.index("[2] Huge: ") + len("[2] Huge: ") :].split("\n\nQuestion:")[0]
    assert kept.endswith(TRUNCATION_MARK) and huge.text.startswith(kept[: -len(TRUNCATION_MARK)])
    assert len(lm.tokenizer(kept[: -len(TRUNCATION_MARK)], add_special_tokens=False).input_ids) == 40
    assert SHORT[0].text in shown and out.truncation.as_dict()["cut_passages"] == ["huge"]

    ctx = context(lm, [huge, *SHORT])  # the default budget: 512 tokens a passage, context 2048
    lm.positions.clear()
    (res,) = make_method("single-retrieval").run([example("Who built the tower?")], ctx)
    assert res.truncated and res.extra["truncation"]["cut_passages"] == ["huge"] and res.error is None
    assert 512 < res.prompt_tokens <= 2048 - NEW and max(lm.positions) < 2048


@pytest.mark.parametrize("method", ["single-retrieval", "fix-sentence-retrieval", "combine"])
def test_every_method_fits_its_prompt_to_the_total_budget(small_context, method):
    lm = small_context
    (out,) = make_method(method).run([example("Who built the tall tower?")], context(lm, LONG))
    assert out.error is None and out.generated_tokens > 0 and out.truncated
    # the three passages cut to fit, and the second shot dropped (the instruction of every turn
    # names the answer sentence, so two shots no longer fit 400 tokens beside three cut passages)
    assert out.extra["truncation"] == {"cut_passages": ["p0", "p1", "p2"], "dropped_passages": [], "dropped_shots": 1}
    assert max(lm.positions) < CONTEXT  # prompt and reply within the model's context


def test_without_passages_few_shot_turns_are_dropped(small_context):
    lm = small_context
    question = "Which tower " + prose("Tall", 240) + "?"  # ~300 tokens alone, ~376 with one shot, ~452 with two
    for method in ["no-retrieval", "prag", "fix-sentence-retrieval"]:
        (out,) = make_method(method).run([example(question)], context(lm, []))
        assert out.error is None and out.truncated and out.extra["truncation"]["dropped_shots"] == 1, method
    assert max(lm.positions) < CONTEXT


@pytest.mark.parametrize("method", ["single-retrieval", "no-retrieval", "prag", "fix-sentence-retrieval", "dragin"])
def test_question_that_cannot_fit_is_an_error_row_without_generation(small_context, method, tmp_path):
    from semoe.evaluation.scoring import to_rows
    from semoe.storage.results import ResultStore

    lm = small_context
    examples = [example("Who built the tall tower?", 0), example("Which " + prose("Tower", 5000) + "?", 1)]
    ctx = context(lm, LONG)
    alone = make_method(method).run(examples[:1], ctx)[0]
    lm.positions.clear()
    ok, bad = make_method(method).run(examples, ctx)
    assert max(lm.positions) < CONTEXT  # the long question never reached the model
    assert (ok.raw_output, ok.prompt_tokens, ok.error) == (alone.raw_output, alone.prompt_tokens, None)
    assert bad.error.startswith(
        f"the question does not fit the prompt budget of {CONTEXT - NEW} tokens "
        f"(context of {CONTEXT} tokens minus {NEW} new tokens): without passages"
    )
    assert (bad.raw_output, bad.generated_tokens, bad.generation_count) == ("", 0, 0)

    rows = to_rows("run", "test", method, examples, [ok, bad], experts=None)["predictions"]
    assert (rows[1]["prediction"], rows[1]["raw_output"], rows[1]["em"], rows[1]["f1"]) == (None, None, 0.0, 0.0)
    assert rows[1]["error"] == bad.error and rows[0]["error"] is None
    assert [r["truncated"] for r in rows] == [ok.truncated, False]
    store = ResultStore(tmp_path / "s.duckdb")
    store.start_run("run", "t", "h", "v", "{}")
    store.write_predictions({"predictions": rows})
    store.compute_metrics("run")
    (board,) = store.leaderboard("run")
    assert (board["n"], board["errors"], board["truncated"]) == (2, 1, int(ok.truncated))
    assert board["em"] == pytest.approx(rows[0]["em"] / 2)  # the error counts as wrong, n stays honest


@pytest.mark.parametrize(
    "few_shot, cot, template_name", [(2, False, "generic"), (0, True, "generic"), (2, True, "strategyqa")]
)
def test_prompts_under_budget_are_unchanged_token_for_token(lm, monkeypatch, few_shot, cot, template_name):
    """The default budget (context 2048) changes nothing for ordinary passages: every method
    renders exactly what build_messages gives with the context's prompt template."""
    from semoe.generation.templates import template_named

    template = template_named(template_name)
    rendered = []
    render = lm.render
    monkeypatch.setattr(lm, "render", lambda messages: rendered.append(list(messages)) or render(messages))
    question = "Where is Quorvanthe?"
    expected = [build_messages(question, ps, few_shot=few_shot, cot=cot, template=template) for ps in (SHORT, None)]
    sizes = [len(lm.tokenizer(render(m), add_special_tokens=False).input_ids) for m in expected]
    # triggered methods measure the question alone before starting
    alone = build_messages(question, None, few_shot=0, cot=cot, template=template)
    for method in ["no-retrieval", "single-retrieval", "fix-sentence-retrieval", "dragin", "combine", "prag"]:
        rendered.clear()
        ctx = context(lm, SHORT, few_shot, template, chain_of_thought=cot)
        (out,) = make_method(method).run([example(question)], ctx)
        assert not out.truncated and out.error is None and "truncation" not in out.extra
        assert rendered and all(m in expected or m == alone for m in rendered), method
        assert out.prompt_tokens in (sizes[0], sizes[1], sum(sizes)), method  # what the model was fed
    # and the reply is the one generated from the unfitted prompt
    rendered.clear()
    (out,) = make_method("single-retrieval").run(
        [example(question)], context(lm, SHORT, few_shot, template, chain_of_thought=cot)
    )
    (direct,) = lm.generate([expected[0]], NEW)
    assert (out.raw_output, out.prompt_tokens) == (direct.text, direct.prompt_tokens)


def test_migration_adds_the_columns_to_an_existing_store():
    import duckdb

    from semoe.storage.results import migrate
    from semoe.storage.schema import MIGRATIONS

    con = duckdb.connect()
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    version = next(i for i, (v, stmts) in enumerate(MIGRATIONS) if any("truncated BOOLEAN" in s for s in stmts))
    for v, statements in MIGRATIONS[:version]:
        for stmt in statements:
            con.execute(stmt)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [v])
    con.execute(
        "INSERT INTO runs (run_id, config_hash, code_version, config_json, status, finished_at)"
        " VALUES ('r', 'h', 'v', '{}', 'finished', now())"
    )
    con.execute("INSERT INTO predictions (run_id, dataset, example_id, method, em) VALUES ('r', 'd', 'e', 'm', 1)")
    con.execute("INSERT INTO metrics (run_id, dataset, method, n, em) VALUES ('r', 'd', 'm', 1, 1)")
    assert migrate(con) == MIGRATIONS[-1][0]
    assert con.execute("SELECT truncated, error FROM predictions").fetchall() == [(None, None)]
    for view in ("leaderboard", "leaderboard_latest"):
        assert con.execute(f"SELECT n, em, errors, truncated FROM {view}").fetchall() == [(1, 1.0, None, None)]
