"""Prompt templates (semoe.generation.templates): each registered template renders its exemplars,
the question, the passages and an instruction without a copyable placeholder; a dataset gets
its own template by default, another by name, an unknown name is a config error; the template's
content is part of every answer's key and nothing else about it is; each prediction records
whether its reply had the answer marker."""

from __future__ import annotations

import dataclasses
import re

import pytest

from semoe import identity
from semoe.checks import check_config
from semoe.config import ConfigError, MethodSpec, SemoeConfig
from semoe.data.schema import Example, Passage
from semoe.evaluation.answer_chunks import answer_chunk
from semoe.evaluation.planning import WorkItem
from semoe.evaluation.scoring import to_rows
from semoe.generation.answer import ANSWER_MARKER, extract_answer, has_answer_marker
from semoe.generation.dummy import DummyChatLM
from semoe.generation.prompts import PromptBudget, build_messages, fit_messages
from semoe.generation.templates import TEMPLATES, template_for, template_named

QUESTION = "Which city hosts the Brannic Observatory?"
PASSAGES = [Passage("p1", "Brannic Observatory", "The Brannic Observatory stands on a hill above Solmere.")]
# A stand-in for an answer the model should fill in: "X", "Y", "<answer>", "[answer]", "{answer}", "...".
PLACEHOLDER = re.compile(r"\b[XYZ]\b|<[^>]*>|\[answer\]|\{[^}]*\}|\.\.\.|…")


@pytest.mark.parametrize("name", TEMPLATES.names())
@pytest.mark.parametrize("cot", [False, True], ids=["direct", "cot"])
@pytest.mark.parametrize("passages", [None, PASSAGES], ids=["closed-book", "retrieving"])
def test_every_template_renders_exemplars_question_passages_and_an_instruction_without_placeholder(name, cot, passages):
    template = template_named(name)
    messages = build_messages(QUESTION, passages, few_shot=8, cot=cot, template=template)
    shots = template.exemplars[:8]
    assert [m["role"] for m in messages] == ["user", "assistant"] * len(shots) + ["user"]
    last = messages[-1]["content"]
    assert last.startswith(template.task) and last.endswith(f"Question: {QUESTION}")
    assert (PASSAGES[0].text in last) == bool(passages)
    if template.with_passages:
        assert (template.with_passages in last) == bool(passages)
    lead = "So the answer is" if cot else "The answer is"
    assert f'starts with "{lead}" and {template.answer_format}.' in last
    for turn, shot in zip(messages[0:-1:2], shots):
        assert turn["content"].endswith(f"Question: {shot.question}")
        assert all((p.text in turn["content"]) == bool(passages) for p in shot.passages)
    for m in messages:
        assert not PLACEHOLDER.search(m["content"]), (m["content"], PLACEHOLDER.search(m["content"]))
    # every exemplar reply carries the marker and extracts to its own answer
    for reply, shot in zip(messages[1:-1:2], shots):
        assert has_answer_marker(reply["content"]) and extract_answer(reply["content"]) == shot.answer
        assert (shot.reasoning in reply["content"]) == cot
    assert ANSWER_MARKER.fullmatch(lead.removeprefix("So "))


def test_dataset_templates_have_the_exemplars_their_dataset_needs():
    strategy = [s.answer for s in template_named("strategyqa").exemplars]
    assert set(strategy) == {"yes", "no"} and set(strategy[:2]) == {"yes", "no"}  # both within the first two
    for name in ("2wikimultihopqa", "hotpotqa", "iirc"):
        answers = [s.answer for s in template_named(name).exemplars]
        assert {"yes", "no"} & set(answers) and len(answers) >= 5, name
        assert all(s.reasoning and not s.passages for s in template_named(name).exemplars), name  # DRAGIN's CoT style
    assert all(s.passages for s in template_named("generic").exemplars)  # today's shots, with their passages
    assert template_named("popqa").exemplars == template_named("cwq").exemplars == ()  # PRAG: zero-shot


def test_a_zero_shot_template_drops_no_shots_it_does_not_have():
    count = lambda messages: sum(len(m["content"].split()) for m in messages)  # noqa: E731
    ends = lambda text: [m.end() for m in re.finditer(r"\S+", text)]  # noqa: E731
    out = fit_messages(QUESTION, PASSAGES, 4, False, PromptBudget(None, 10_000), count, ends, template_named("popqa"))
    assert not out.truncation and len(out.messages) == 1


def _cfg(*datasets: dict, **extra) -> SemoeConfig:
    return SemoeConfig.model_validate({"datasets": list(datasets), "model": {"spec": "dummy"}, **extra})


def test_a_dataset_gets_its_own_template_unless_the_config_names_another():
    cfg = _cfg(
        {"name": "hotpotqa", "path": "h.json"},
        {"name": "custom", "path": "c.json"},
        {"name": "synthetic"},
        {"name": "custom", "label": "yesno", "path": "y.json", "prompt": "strategyqa"},
        {"name": "2wikimultihopqa", "label": "plain", "path": "w.json", "prompt": "generic"},
    )
    check_config(cfg)
    assert [template_for(d).name for d in cfg.datasets] == ["hotpotqa", "generic", "generic", "strategyqa", "generic"]


def test_an_unknown_template_is_a_config_error_at_validation():
    cfg = _cfg({"name": "synthetic"}, {"name": "custom", "label": "mine", "path": "c.json", "prompt": "hotpot"})
    with pytest.raises(
        ConfigError, match=r"datasets\.1\.prompt: unknown prompt template 'hotpot' \(dataset 'mine'\); "
    ):
        check_config(cfg)


def _scope(cfg: SemoeConfig, method: str = "single-retrieval", i: int = 0) -> str:
    return identity.answer_scope(cfg, MethodSpec(name=method), "corpus", cfg.datasets[i])


def test_the_template_content_is_part_of_every_answer_key_and_nothing_else_about_it(monkeypatch):
    base = _cfg({"name": "hotpotqa", "path": "h.json"}, {"name": "custom", "path": "c.json"})
    for method in ("no-retrieval", "single-retrieval", "dragin", "prag"):
        changed = _cfg(
            {"name": "hotpotqa", "path": "h.json", "prompt": "2wikimultihopqa"}, base.datasets[1].model_dump()
        )
        assert _scope(changed, method) != _scope(base, method), method
    # naming the default explicitly, relabelling or moving the dataset, or changing another
    # dataset's template answers nothing again
    same = [
        _cfg({"name": "hotpotqa", "path": "h.json", "prompt": "hotpotqa"}),
        _cfg({"name": "hotpotqa", "label": "hp", "path": "elsewhere/h.json", "sample": 5}),
    ]
    assert all(_scope(cfg) == _scope(base) for cfg in same)
    other = _cfg(base.datasets[0].model_dump(), {"name": "custom", "path": "c.json", "prompt": "strategyqa"})
    assert _scope(other) == _scope(base) and _scope(other, i=1) != _scope(base, i=1)
    # the same text under another name is the same prompt: popqa and cwq are both PRAG's zero-shot one
    assert _scope(_cfg({"name": "popqa", "path": "p.json"})) == _scope(_cfg({"name": "cwq", "path": "q.json"}))

    # one exemplar's text edited: that template's answers are keyed anew, the others' are not
    before = {name: _scope(_cfg({"name": "custom", "path": "c.json", "prompt": name})) for name in TEMPLATES.names()}
    hotpot = template_named("hotpotqa")
    edited = dataclasses.replace(
        hotpot, exemplars=(dataclasses.replace(hotpot.exemplars[0], answer="the Seine"), *hotpot.exemplars[1:])
    )
    monkeypatch.setitem(TEMPLATES._items, "hotpotqa", edited)
    after = {name: _scope(_cfg({"name": "custom", "path": "c.json", "prompt": name})) for name in TEMPLATES.names()}
    assert {n for n in before if before[n] != after[n]} == {"hotpotqa"}
    # the run identity follows its settings: a named template is a setting of the dataset
    assert identity.qa_run_id(base, {}, "c") != identity.qa_run_id(changed, {}, "c")


def test_template_modules_are_data_outside_the_code_identity(tmp_path):
    """Editing a template's text changes no code digest (its content keys the answers of its
    datasets only), while the package's ``__init__`` and the rendering are code."""
    import shutil
    from pathlib import Path

    import semoe

    root = tmp_path / "semoe"
    shutil.copytree(Path(semoe.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__"))

    def digests():
        return {kind: identity.source_digest(root, parts) for kind, parts in identity.CODE_PARTS.items()}

    before = digests()
    path = root / "generation/templates/multihop.py"
    path.write_text(path.read_text(encoding="utf-8").replace('answer="Seine"', 'answer="the Seine"'), encoding="utf-8")
    (root / "generation/templates/extra.py").write_text("X = 1\n", encoding="utf-8")
    assert digests() == before
    for rel in ("generation/templates/__init__.py", "generation/prompts.py"):
        (root / rel).write_text((root / rel).read_text(encoding="utf-8") + "\nK = 2\n", encoding="utf-8")
        after = digests()
        assert after["answers"] != before["answers"] and after["routing"] != before["routing"], rel
        before = after


def test_routing_qa_is_keyed_by_its_datasets_template():
    routing = {"models": [{"spec": "m"}], "policies": [{"name": "topk"}], "qa": {"dataset": "hotpotqa"}}
    base = _cfg({"name": "hotpotqa", "path": "h.json"}, routing=routing)
    other = _cfg({"name": "hotpotqa", "path": "h.json", "prompt": "generic"}, routing=routing)
    assert identity.routing_settings(base)["qa"]["prompt"] == template_named("hotpotqa").identity()
    assert identity.routing_config_hash(base) != identity.routing_config_hash(other)


class ScriptedLM(DummyChatLM):
    """The dummy model with a fixed reply per question (the text after "Question: "), and the
    rendered prompts it was given."""

    def __init__(self, replies: dict[str, str]):
        super().__init__()
        self.replies = replies
        self.prompts: list[str] = []

    def reply(self, prompt: str, salt: str = "") -> str:
        self.prompts.append(prompt)
        return self.replies[prompt.rsplit("Question: ", 1)[-1].split("\n", 1)[0]]


def test_each_prediction_records_whether_its_reply_had_the_answer_marker(monkeypatch, tmp_path):
    from semoe.storage.results import ResultStore

    examples = [
        Example("q1", "Where was Tor Brekke born?", ["Oslo"], "bridge"),
        Example("q2", "Where was Amelie Varon born?", ["Lyon"], "bridge"),
        Example("q3", "Who founded the Brannic Institute?", ["Wilhelmine Oster"], "bridge"),
    ]
    lm = ScriptedLM(
        {
            examples[0].question: "The answer is Oslo.",
            examples[1].question: "Lyon, I believe. She painted there.",  # no marker: the first sentence is taken
            examples[2].question: "I wonder what the answer is. Maybe Oster.",  # a phrase that introduces nothing
        }
    )
    monkeypatch.setattr("semoe.evaluation.answer_chunks.load_lm", lambda cfg: lm)
    cfg = _cfg(
        {"name": "custom", "label": "mine", "path": "c.json", "prompt": "strategyqa"},
        generation={"few_shot": 1, "max_new_tokens": 16},
        methods=["no-retrieval"],
    )
    item = WorkItem("mine", "no-retrieval", examples)
    outputs, _ = answer_chunk(cfg, item)
    # the dataset's template reached the model: its instruction and its first exemplar
    strategy = template_named("strategyqa")
    assert lm.prompts and all(strategy.task in p and strategy.exemplars[0].question in p for p in lm.prompts)

    rows = to_rows("r", "mine", "no-retrieval", examples, outputs, experts=None)["predictions"]
    assert [r["prediction"] for r in rows] == ["Oslo", "Lyon, I believe", "I wonder what the answer is"]
    assert [r["answer_marker_found"] for r in rows] == [True, False, False]
    failed = to_rows("r", "mine", "no-retrieval", examples[:1], [outputs[0].failed("too long")], experts=None)[
        "predictions"
    ]
    assert failed[0]["answer_marker_found"] is None  # no reply: nothing to record

    store = ResultStore(tmp_path / "s.duckdb")
    store.start_run("r", "t", "h", "v", "{}")
    store.write_predictions({"predictions": rows})
    store.compute_metrics("r")
    (board,) = store.leaderboard("r")
    assert (board["n"], board["answer_marker_missing"], board["em"]) == (3, 2, round(1 / 3, 4))
    stored = store.query("select example_id, answer_marker_found from predictions order by example_id")
    assert [r["answer_marker_found"] for r in stored] == [True, False, False]


def test_more_shots_than_the_template_has_is_said(caplog):
    from semoe.checks import check_config

    cfg = SemoeConfig.model_validate(
        {"datasets": [{"name": "synthetic", "prompt": "popqa"}], "generation": {"few_shot": 3}}
    )
    with caplog.at_level("WARNING", logger="semoe.checks"):
        check_config(cfg)
    assert "generation.few_shot is 3 but its prompt template 'popqa' has 0 exemplars" in caplog.text
