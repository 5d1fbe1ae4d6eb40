"""The weightless ``dummy`` model (semoe.generation.dummy): the ChatLM interface without torch,
deterministic replies drawn from the prompt, real token counts, batch APIs honoured, and a
clear refusal for methods that need model internals."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from semoe.config import ConfigError, GenerationConfig, SemoeConfig
from semoe.data.schema import Passage
from semoe.generation.dummy import CONTEXT_LENGTH, DummyChatLM
from semoe.generation.loading import load_chat_lm
from semoe.generation.prompts import PromptBudget
from semoe.models.loading import ModelLoadError, check_model_spec, dummy_seed, load_model

PASSAGES = [
    Passage("p1", "Quorvanthe", "Quorvanthe is a river town famous for glass bells."),
    Passage("p2", "Meridel Abbey", "Meridel Abbey was founded by monks who copied star charts."),
]
QUESTIONS = [f"Which town is famous for glass bells number {i}?" for i in range(7)]


def _conversation(lm: DummyChatLM, question: str, passages=PASSAGES, few_shot: int = 1):
    budget = PromptBudget(None, None)
    return lm.fit(question, passages, few_shot=few_shot, cot=False, budget=budget).messages


def test_dummy_specs_and_their_seeds():
    assert dummy_seed("dummy") == 0 and dummy_seed("dummy:7") == 7 and dummy_seed("dummy:-2") == -2
    assert dummy_seed("smollm2-135m-instruct") is None and dummy_seed("./dummy") is None
    assert dummy_seed("dummyish") is None
    for bad in ("dummy:x", "dummy:"):
        with pytest.raises(
            ModelLoadError, match=re.escape(f"model spec {bad!r}: the dummy model's seed must be an integer")
        ):
            check_model_spec(bad)
    check_model_spec("dummy:3")
    assert load_chat_lm("dummy:3", "unused-cache").seed == 3


def test_loading_the_dummy_imports_no_torch_or_transformers():
    code = (
        "import sys\n"
        "from semoe.generation.loading import load_chat_lm\n"
        "lm = load_chat_lm('dummy', 'unused')\n"
        "print(lm.generate([[{'role': 'user', 'content': 'Who rang the bells?'}]], 8)[0].text)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'prefect'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert re.fullmatch(r"The answer is (Who|rang|the|bells)\.", out[0])
    assert out[1] == "[]"


def test_reply_is_a_hash_chosen_word_of_the_question_and_its_passages():
    lm = DummyChatLM()
    conversations = [_conversation(lm, q) for q in QUESTIONS]
    gens = lm.generate(conversations, max_new_tokens=16, batch_size=3)
    last_turn_words = set(re.findall(r"\w+", conversations[0][-1]["content"])) | {"number", *map(str, range(7))}
    answers = []
    for gen in gens:
        word = re.fullmatch(r"The answer is (\w+)\.", gen.text).group(1)
        assert word in last_turn_words  # from the question or a passage, never from a few-shot turn
        answers.append(word)
    assert len(set(answers)) > 1  # the choice depends on the question
    # the same replies in any batch size and order, in another instance; another seed differs somewhere
    assert [g.text for g in DummyChatLM().generate(conversations[::-1], 16, batch_size=1)] == [g.text for g in gens][
        ::-1
    ]
    assert [g.text for g in DummyChatLM(1).generate(conversations, 16)] != [g.text for g in gens]


def test_token_counts_budget_and_cut_replies():
    lm = DummyChatLM(system_prompt="Be brief.")
    conversation = _conversation(lm, QUESTIONS[0])
    rendered = lm.render(conversation)
    assert rendered.startswith("<|system|>\nBe brief.\n") and rendered.endswith("<|assistant|>\n")
    (gen,) = lm.generate([conversation], max_new_tokens=16)
    assert gen.prompt_tokens == lm.count_tokens(conversation) == len(lm.tokens(rendered)) > 50
    assert gen.new_tokens == 5  # "The", " answer", " is", " W", "."
    (cut,) = lm.generate([conversation], max_new_tokens=2)
    assert (cut.text, cut.new_tokens) == ("The answer", 2)
    text = 'Ünïcödé  "quoted", x-y\tz\n\n end  '
    assert "".join(lm.tokens(text)) == text
    assert lm.token_ends(text) == [len("".join(lm.tokens(text)[: i + 1])) for i in range(len(lm.tokens(text)))]
    assert lm.context_length == CONTEXT_LENGTH
    budget = lm.prompt_budget(GenerationConfig(max_new_tokens=48), 48)
    assert budget.prompt_tokens == CONTEXT_LENGTH - 48
    with pytest.raises(ConfigError, match=f"model's context of {CONTEXT_LENGTH} tokens"):
        lm.prompt_budget(GenerationConfig(), CONTEXT_LENGTH)


def test_batch_apis_are_honoured():
    lm = DummyChatLM()
    prompts = [lm.render([{"role": "user", "content": "word " * n}]) for n in (5, 1, 3, 2, 4)]
    batches: list[list[int]] = []
    gens = lm.generate_rendered(prompts, 16, batch_size=2, on_batch=batches.append)
    assert batches == [[1, 3], [2, 4], [0]]  # in order of prompt length, as ChatLM batches
    assert [g.prompt_tokens for g in gens] == [len(lm.tokens(p)) for p in prompts]
    stopped = lm.generate_rendered(prompts[:1], 16, stop_when=lambda text: text.endswith("answer"))
    assert (stopped[0].text, stopped[0].new_tokens) == ("The answer", 2)
    assert all(g.text == "The answer is word." for g in gens)
    # sampling is seeded: the same seed gives the same replies, and differs from greedy somewhere
    varied = [lm.render([{"role": "user", "content": q}]) for q in QUESTIONS]

    def texts(**mode):
        return [g.text for g in lm.generate_rendered(varied, 16, batch_size=len(varied), **mode)]

    assert texts(temperature=0.7, seed=3) == texts(temperature=0.7, seed=3) != texts()


def test_methods_that_need_weights_are_refused_with_the_dummy():
    from semoe.checks import check_config

    check_config(
        SemoeConfig.model_validate({"model": {"spec": "dummy"}, "methods": ["no-retrieval", "single-retrieval"]})
    )
    for method in ("dragin", "token", "prag", "semoe"):
        cfg = SemoeConfig.model_validate({"model": {"spec": "dummy:2"}, "methods": [{"name": method, "label": "m1"}]})
        with pytest.raises(ConfigError, match=re.escape(f"methods: 'm1' ({method}) needs a real LM")):
            check_config(cfg)
    lm = DummyChatLM()
    with pytest.raises(ModelLoadError, match="model 'dummy' has no weights: .* needs a real LM"):
        lm.model  # noqa: B018
    with pytest.raises(ModelLoadError, match="model 'dummy:4' has no weights"):
        load_model("dummy:4", "unused")
