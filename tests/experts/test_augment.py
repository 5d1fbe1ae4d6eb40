"""PRAG-style augmentation: the lenient QA parser on the ways small models break JSON, the
retry loop (greedy, then seeded sampling, then a recorded failure), the per-passage cache
and, with the real embedded model, what share of passages come out usable."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from semoe.config import AugmentConfig, SyntheticConfig
from semoe.data.encyclopedia import build_encyclopedia
from semoe.data.schema import Passage
from semoe.experts import augment, augment_prompts, lenient_json
from semoe.experts.augment import Augmentation, augment_passages
from semoe.experts.augment_checks import qa_reply_complete, rewrite_complete
from semoe.experts.augment_prompts import QA_PREFIX
from semoe.experts.qa_reply import QAPair, QAParseError, parse_qa_pairs
from semoe.generation.lm import ChatLM
from semoe.metrics import normalize_answer
from semoe.storage.artifacts import ArtifactCache
from semoe.storage.results import migrate

# --------------------------------------------------------------------------- parser

AB = [QAPair("A?", "B", "C")]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[{"question": "A?", "answer": "B", "full_answer": "C"},]', AB),
        ("[{'question': 'A?', 'answer': 'B', 'full_answer': 'C'}]", AB),
        ('```json\n[{"question": "A?", "answer": "B", "full_answer": "C"}]\n```', AB),
        (
            '[{"question": "A?", "answer": "B", "full_answer": "C"}, {"question": "D?", "answer": "E", "full_ans',
            AB + [QAPair("D?", "E", "E")],
        ),
        # a model looping on a key never closes the object: the finished fields count
        ('[{"question": "A?", "answer": "B", "full_answer": "C", "full_answer": "C C", "full_answer": "C C C', AB),
        ('[{"question": "A?", "answer": "B", "full_answer": "C"}', AB),
        ('Sure! Here they are: [{"question": "A?", "answer": "B", "full_answer": "C"}] Hope this helps [1].', AB),
        (
            '{"question": "A?", "answer": "B", "full_answer": "C"}\n{"question": "D?", "answer": "E"}',
            AB + [QAPair("D?", "E", "E")],
        ),
        ('[{question: "A?", answer: "B", full_answer: "C",}]', AB),
        ("[{“question”: “A?”, “answer”: “B”, “full_answer”: “C”}]", AB),
        ('[{"question": "A?", "answer": "B"}]', [QAPair("A?", "B", "B")]),
        ('[{"question": "A?", "answer": "B", "full_answer": "C", "full_answer": "C, C, C"}]', AB),
        ('[{"Question": "A?", "Answer": "B", "Full answer": "C"}]', AB),
        ('[{"question": "When?", "answer": 1973}]', [QAPair("When?", "1973", "1973")]),
        ('[{"question": "A?"}, {"question": "A?", "answer": "B", "full_answer": "C"}]', AB),
        # an apostrophe inside a single-quoted string does not end it
        (
            "[{'question': 'Who taught Zorell's pupils?', 'answer': 'Marn'}]",
            [QAPair("Who taught Zorell's pupils?", "Marn", "Marn")],
        ),
        # a malformed list still yields its well-formed objects
        ('[{"question": "A?", "answer": "B", "full_answer": "C"}, {"question" "broken"}]', AB),
    ],
)
def test_parser_repairs_what_small_models_break(text, expected):
    assert parse_qa_pairs(text) == expected


LOOM = [QAPair("Who ruled?", "“the Loom Queen”", "She was “the Loom Queen”.")]
GRIN = [QAPair("Which face?", "\U0001f600", "\U0001f600")]


@pytest.mark.parametrize(
    "text, expected",
    [
        # valid JSON is read as written: typographic quotes inside strings are content
        (
            '[{"question": "Who ruled?", "answer": "“the Loom Queen”", "full_answer": "She was “the Loom Queen”."}]',
            LOOM,
        ),
        # ... and stay content where the JSON needs repair (trailing commas)
        (
            '[{"question": "Who ruled?", "answer": "“the Loom Queen”", "full_answer": "She was “the Loom Queen”.",},]',
            LOOM,
        ),
        (
            "[{“question”: “Who ruled?”, “answer”: “‘the Loom Queen’”, “full_answer”: “She was “the Loom Queen”.”}]",
            [QAPair("Who ruled?", "‘the Loom Queen’", "She was “the Loom Queen”.")],
        ),
        (
            "[{‘question’: ‘Who taught O’Brien’s pupils?’, ‘answer’: ‘Marn’}]",
            [QAPair("Who taught O’Brien’s pupils?", "Marn", "Marn")],
        ),
        # an escaped surrogate pair is one character, strict or repaired
        ('[{"question": "Which face?", "answer": "\\ud83d\\ude00"}]', GRIN),
        ('[{"question": "Which face?", "answer": "\\ud83d\\ude00",}]', GRIN),
        ("[{'question': 'Which face?', 'answer': '\\ud83d\\ude00'}]", GRIN),
        # a lone surrogate cannot be stored as UTF-8: it becomes U+FFFD
        ('[{"question": "Which face?", "answer": "x\\ud83d"}]', [QAPair("Which face?", "x\ufffd", "x\ufffd")]),
        # strict JSON keeps the last of repeated keys; the first (the sane one) must win here too
        ('[{"question": "A?", "answer": "B", "full_answer": "C", "full_answer": "C C"}]', AB),
        # a markdown fence inside a string is content
        (
            '```json\n[{"question": "A?", "answer": "B", "full_answer": "See ```C```"}]\n```',
            [QAPair("A?", "B", "See ```C```")],
        ),
    ],
)
def test_parser_reads_valid_json_strictly(text, expected):
    assert parse_qa_pairs(text) == expected


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, '[{"question": "A?", "answer": ' + "[" * 100_000, '[{"a": ' * 50_000, '{"a": [' * 50_000],
)
def test_deep_nesting_is_a_parse_error_not_a_recursion_error(text):
    with pytest.raises(QAParseError, match=f"nested deeper than {lenient_json.MAX_DEPTH} levels"):
        parse_qa_pairs(text)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "no JSON"),
        ("I am sorry, I cannot help with that.", "no JSON"),
        ("Question:\nWhat is the answer to the question:\nQuestion:", "no JSON"),
        ("[]", "empty"),
        ('[{"question": "A?"}, {"answer": "B"}, "text"]', "1 no answer, 1 no question, 1 not an object"),
        ('[{"question": "A?", "answer": "Fal', "1 no answer"),
    ],
)
def test_parser_explains_why_nothing_is_usable(text, reason):
    with pytest.raises(QAParseError, match=reason):
        parse_qa_pairs(text)


def test_qa_prompt_shows_one_worked_example_and_asks_for_n_pairs():
    msgs = augment_prompts.qa_messages("Some passage.", 2)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert "two different questions" in msgs[2]["content"] and msgs[2]["content"].endswith("Some passage.")
    assert len(parse_qa_pairs(msgs[1]["content"])) == 2
    assert "one question " in augment_prompts.qa_messages("x", 1)[2]["content"]


# --------------------------------------------------------------------------- models

PASSAGE = Passage(
    "p1",
    "Tamine Zorell",
    "Tamine Zorell was a composer born in Falvik in 1973. Contemporaries described Zorell as reserved "
    "in public but warm in private. Zorell recorded for Galdathal Music for many years.",
)
GOOD_REWRITE = (
    "Born in Falvik in 1973, Tamine Zorell became a composer. Zorell made records with Galdathal Music "
    "for a long time. People of the time saw Zorell as reserved in public yet warm in private."
)


class ScriptedModel:
    """Stands in for a causal LM: each row's continuation is ``reply(prompt, do_sample)``,
    returned as ChatLM's decoding loop returns it (the new tokens of each row, EOS included);
    records the ``do_sample`` flag of every generate call."""

    def __init__(self, tokenizer, reply):
        import torch
        from transformers import LlamaConfig

        self.tok, self.reply, self.calls = tokenizer, reply, []
        self.anchor = torch.zeros(1)
        self.config = LlamaConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=1, vocab_size=len(tokenizer))

    def parameters(self):
        yield self.anchor

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, do_sample, **_):
        self.calls.append(do_sample)
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            reply = self.reply(self.tok.decode(ids[mask.bool()]), do_sample)
            rows.append(
                self.tok(reply, add_special_tokens=False).input_ids[: max_new_tokens - 1] + [self.tok.eos_token_id]
            )
        return rows


@pytest.fixture(scope="module")
def tokenizer(tiny_lm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tok.padding_side = "left"
    return tok


@pytest.fixture
def tiny_lm(tiny_lm_dir, tokenizer):
    """The random tiny Llama, with every model.generate call counted in ``lm.calls``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    lm = ChatLM(model, tokenizer)
    lm.calls = []
    generate = model.generate

    def counted(**kw):
        lm.calls.append(kw["do_sample"])
        return generate(**kw)

    model.generate = counted
    return lm


FAST = dict(rewrite_max_new_tokens=12, qa_max_new_tokens=12, batch_size=4)  # the random model: speed only


# --------------------------------------------------------------------------- retries


def test_scripted_model_greedy_failure_then_sampled_success(tokenizer, tmp_path):
    def reply(prompt, sampled):
        if not prompt.endswith(QA_PREFIX):
            return GOOD_REWRITE
        if not sampled:
            return 'Where?", "answer": "Fal'  # cut off: nothing complete
        return (
            'Where was Tamine Zorell born?", "answer": "Falvik", "full_answer": "In Falvik."}, '
            '{"question": "Where was Osric Pellane born?", "answer": "Tarrowmere"}, '
            '{"question": "Who was Zorell\'s teacher?", "answer": "Marn Ostrava"}, '
            '{"question": "Who is Tamine Zorell?", "answer": "Tamine Zorell"}, '
            '{"question": "Where was Tailor Zorell born?", "answer": "Falvik"}, '
            '{"question": "Which label did Zorell record for?", "answer": "Galdathal Music", '
            '"full_answer": "Zorell recorded for Galdathal Music in Paris."}]'
        )

    model = ScriptedModel(tokenizer, reply)
    cfg = AugmentConfig()
    [rec] = augment_passages([PASSAGE], cfg, ChatLM(model, tokenizer), ArtifactCache(tmp_path), model_spec="scripted")
    assert rec.status == "ok" and rec.reason is None and rec.attempts == 2
    assert rec.rewrites == [GOOD_REWRITE]
    # dropped: the example copy, an answer absent from the passage, an answer given in the
    # question, a question about an invented name; an invented full answer becomes the answer
    assert rec.qa == [
        QAPair("Where was Tamine Zorell born?", "Falvik", "In Falvik."),
        QAPair("Which label did Zorell record for?", "Galdathal Music", "Galdathal Music"),
    ]
    assert model.calls == [False, False, True]  # rewrite greedy, QA greedy, QA sampled retry


@pytest.mark.parametrize(
    "rewrite, reason",
    [
        (PASSAGE.text, "copies the passage"),
        ("Tamine Zorell was a composer.", "too short"),
        ("Zorell was a composer born in Falvik in 1973. " * 4, "too short"),  # repeats dropped: one sentence
        (
            "Born in a northern town long ago, the composer was known for being shy among strangers and "
            "kind among friends, and made many records with a small label over a long career.",
            "drops names",
        ),
        (GOOD_REWRITE.replace("for a long time", "in Paris from 2001"), "adds names or numbers (2001, Paris)"),
        (
            'Premise: "Tamine Zorell"\n\nEntities: Zorell, Drehrenstein\n\n' + GOOD_REWRITE,
            "adds names or numbers (Drehrenstein)",
        ),
        (
            "Born in Falvik in 1973, Tamine Zorell became a composer. Zorell made records with Galdathal Music "
            "for a long time. People of the time saw Zorell as reserved in",
            None,
        ),
    ],
)
def test_rewrites_are_checked_against_the_passage(tokenizer, tmp_path, rewrite, reason):
    qa = 'Where was Tamine Zorell born?", "answer": "Falvik"}]'
    model = ScriptedModel(tokenizer, lambda prompt, _: qa if prompt.endswith(QA_PREFIX) else rewrite)
    cfg = AugmentConfig(max_attempts=2, min_rewrites=1)
    [rec] = augment_passages([PASSAGE], cfg, ChatLM(model, tokenizer), ArtifactCache(tmp_path), model_spec="scripted")
    if reason is None:  # an unfinished last sentence is cut, the rest kept
        assert rec.status == "ok" and rec.rewrites == [rewrite[: rewrite.rindex(".") + 1]]
    else:
        assert (
            rec.status == "failed"
            and rec.rewrites == []
            and rec.qa == [QAPair("Where was Tamine Zorell born?", "Falvik", "Falvik")]
        )
        assert rec.reason.startswith("rewrite failed after 2 attempts") and reason in rec.reason


def test_repeated_sentences_are_dropped_and_a_failed_rewrite_keeps_the_qa(tokenizer, tmp_path):
    qa = 'Where was Tamine Zorell born?", "answer": "Falvik"}]'
    looping = GOOD_REWRITE + " Zorell made records with Galdathal Music for a long time."
    model = ScriptedModel(tokenizer, lambda prompt, _: qa if prompt.endswith(QA_PREFIX) else looping)
    [rec] = augment_passages(
        [PASSAGE], AugmentConfig(), ChatLM(model, tokenizer), ArtifactCache(tmp_path / "a"), model_spec="scripted"
    )
    assert rec.status == "ok" and rec.rewrites == [GOOD_REWRITE] and rec.reason is None

    model = ScriptedModel(tokenizer, lambda prompt, _: qa if prompt.endswith(QA_PREFIX) else PASSAGE.text)
    [rec] = augment_passages(
        [PASSAGE],
        AugmentConfig(max_attempts=2),
        ChatLM(model, tokenizer),
        ArtifactCache(tmp_path / "b"),
        model_spec="scripted",
    )
    assert (
        rec.status == "ok"
        and rec.rewrites == []
        and rec.qa == [QAPair("Where was Tamine Zorell born?", "Falvik", "Falvik")]
    )
    assert rec.reason.startswith("rewrite failed after 2 attempts") and "copies the passage" in rec.reason


def test_qa_replies_stop_when_complete_or_looping():
    complete = qa_reply_complete(2)
    assert not complete('Where?", "answer": "X"}, {"question": "Who?", "answer": "Y"}')
    assert complete('Where?", "answer": "X"}]')
    assert complete('Where?", "answer": "X", "full_answer": "X", "full_answer": "X"')
    assert complete('Q?", "answer": "A"}, ' + '{"question": "Q?", "answer": "A"}, ' * 3)
    assert rewrite_complete("Zorell was born in Falvik.\n\nNote: this is a rewrite.")
    assert not rewrite_complete("Here is the rewrite:\n\nZorell was born")


def test_second_rewrite_must_differ_from_the_first(tokenizer, tmp_path):
    qa = 'Where was Tamine Zorell born?", "answer": "Falvik"}]'
    model = ScriptedModel(tokenizer, lambda prompt, _: qa if prompt.endswith(QA_PREFIX) else GOOD_REWRITE)
    cfg = AugmentConfig(n_rewrites=2, min_rewrites=2, max_attempts=2)
    [rec] = augment_passages([PASSAGE], cfg, ChatLM(model, tokenizer), ArtifactCache(tmp_path), model_spec="scripted")
    assert rec.status == "failed" and rec.rewrites == [GOOD_REWRITE] and "same as another rewrite" in rec.reason


LOOM_PASSAGE = Passage(
    "loom", "Ada Verrin", "Ada Verrin, known as “the Loom Queen”, ran the Verrin Weaving Mill in Caldmoor."
)
GRIN_PASSAGE = Passage("grin", "Grin Stone", "The Grin Stone of Pellow is carved as the \U0001f600 emoji by Lorn Ashe.")
LOOM_PAIR = QAPair("What was Ada Verrin known as?", "“the Loom Queen”", "Ada Verrin was known as “the Loom Queen”.")
GRIN_PAIR = QAPair("Which emoji is the Grin Stone carved as?", "\U0001f600", "\U0001f600")
QA_REPLIES = {  # valid JSON, continuing QA_PREFIX
    LOOM_PASSAGE.text: 'What was Ada Verrin known as?", "answer": "“the Loom Queen”", '
    '"full_answer": "Ada Verrin was known as “the Loom Queen”."}]',
    GRIN_PASSAGE.text: 'Which emoji is the Grin Stone carved as?", "answer": "\\ud83d\\ude00"}]',
}
QA_ONLY = dict(n_rewrites=0, batch_size=1)  # one row per batch: the scripted model shares no prefix


def qa_model(tokenizer) -> ScriptedModel:
    return ScriptedModel(tokenizer, lambda prompt, _: next(r for text, r in QA_REPLIES.items() if text in prompt))


@pytest.mark.parametrize("grounded", [True, False])
def test_valid_json_with_typographic_quotes_and_escapes_gives_usable_pairs(tokenizer, tmp_path, grounded):
    model, cache, cfg = qa_model(tokenizer), ArtifactCache(tmp_path), AugmentConfig(grounded=grounded, **QA_ONLY)
    passages = [LOOM_PASSAGE, GRIN_PASSAGE]
    recs = augment_passages(passages, cfg, ChatLM(model, tokenizer), cache, model_spec="scripted")
    assert [(r.status, r.reason, r.qa) for r in recs] == [("ok", None, [LOOM_PAIR]), ("ok", None, [GRIN_PAIR])]
    model.calls.clear()
    assert augment_passages(passages, cfg, ChatLM(model, tokenizer), cache, model_spec="scripted") == recs
    assert model.calls == []  # read back from the cache, emoji included


def test_an_exception_checking_one_passage_is_its_recorded_uncached_failure(tokenizer, tmp_path, monkeypatch):
    model, cache, cfg = qa_model(tokenizer), ArtifactCache(tmp_path), AugmentConfig(max_attempts=2, **QA_ONLY)
    checked = augment.usable_pairs

    def buggy(text, passage, cfg):
        if passage == LOOM_PASSAGE.text:
            raise TypeError("boom")
        return checked(text, passage, cfg)

    monkeypatch.setattr(augment, "usable_pairs", buggy)
    passages = [LOOM_PASSAGE, GRIN_PASSAGE]
    recs = augment_passages(passages, cfg, ChatLM(model, tokenizer), cache, model_spec="scripted")
    assert [(r.status, r.reason, r.qa) for r in recs] == [
        ("failed", "qa failed after 2 attempts: TypeError: boom", []),
        ("ok", None, [GRIN_PAIR]),
    ]
    monkeypatch.undo()  # the bug fixed, the next run augments only the passage it hit
    model.calls.clear()
    again = augment_passages(passages, cfg, ChatLM(model, tokenizer), cache, model_spec="scripted")
    assert [(r.status, r.qa) for r in again] == [("ok", [LOOM_PAIR]), ("ok", [GRIN_PAIR])] and model.calls == [False]


def test_a_passage_that_cannot_be_cached_fails_alone(tokenizer, tmp_path, monkeypatch):
    model, cache, cfg = qa_model(tokenizer), ArtifactCache(tmp_path), AugmentConfig(**QA_ONLY)
    to_json = Augmentation.to_json

    def disk_full_for_loom(record):
        if record.passage_id == LOOM_PASSAGE.id:
            raise OSError(28, "No space left on device")
        return to_json(record)

    monkeypatch.setattr(Augmentation, "to_json", disk_full_for_loom)
    passages = [LOOM_PASSAGE, GRIN_PASSAGE]
    recs = augment_passages(passages, cfg, ChatLM(model, tokenizer), cache, model_spec="scripted")
    assert [(r.status, r.reason, r.qa) for r in recs] == [
        ("failed", "not cached: OSError: [Errno 28] No space left on device", []),
        ("ok", None, [GRIN_PAIR]),
    ]
    monkeypatch.undo()
    model.calls.clear()
    again = augment_passages(passages, cfg, ChatLM(model, tokenizer), cache, model_spec="scripted")
    assert [(r.status, r.qa) for r in again] == [("ok", [LOOM_PAIR]), ("ok", [GRIN_PAIR])] and model.calls == [False]


def test_an_unreadable_cache_entry_is_generated_again(tokenizer, tmp_path):
    model, cache, cfg = qa_model(tokenizer), ArtifactCache(tmp_path), AugmentConfig(**QA_ONLY)
    [rec] = augment_passages([LOOM_PASSAGE], cfg, ChatLM(model, tokenizer), cache, model_spec="scripted")
    key = augment.augmentation_key(augment.passage_hash(LOOM_PASSAGE.text), "scripted", cfg.n_qa, cfg.n_rewrites)
    (cache.path(augment.CACHE_KIND, key) / augment.CACHE_FILE).write_text('{"passage_id": "lo')
    model.calls.clear()
    [again] = augment_passages([LOOM_PASSAGE], cfg, ChatLM(model, tokenizer), cache, model_spec="scripted")
    assert replace(again, seconds=rec.seconds) == rec and rec.status == "ok" and model.calls == [False]


def test_garbage_model_fails_every_attempt_and_is_recorded(tiny_lm, tmp_path):
    passages = build_encyclopedia(SyntheticConfig(n_entities=8)).passages[:3]
    cfg = AugmentConfig(max_attempts=3, **FAST)
    recs = augment_passages(passages, cfg, tiny_lm, ArtifactCache(tmp_path), model_spec="tiny")
    assert [r.passage_id for r in recs] == [p.id for p in passages]
    for r in recs:
        assert r.status == "failed" and r.attempts == 3 and r.qa == [] and r.rewrites == []
        assert "rewrite failed after 3 attempts" in r.reason and "qa failed after 3 attempts" in r.reason
        assert r.seconds > 0 and r.model == "tiny" and r.prompt_version == augment.PROMPT_VERSION
    # 3 passages fit one batch: per attempt one rewrite call and one QA call, greedy first
    assert tiny_lm.calls == [False, False, True, True, True, True]


def test_sampled_retries_are_seeded(tiny_lm):
    prompts = [tiny_lm.render([{"role": "user", "content": f"Say something {i}"}]) for i in range(3)]

    def texts(temperature, seed):
        return [g.text for g in tiny_lm.generate_rendered(prompts, 12, 2, temperature=temperature, seed=seed)]

    sampled = texts(1.0, 5)
    assert sampled == texts(1.0, 5) and sampled != texts(1.0, 6)
    assert texts(0.0, 5) == texts(0.0, 6)


# --------------------------------------------------------------------------- cache


def test_cache_hit_skips_the_model_and_keys_change_invalidate(tiny_lm, tmp_path, monkeypatch):
    passages = build_encyclopedia(SyntheticConfig(n_entities=8)).passages[:2]
    cache = ArtifactCache(tmp_path)
    cfg = AugmentConfig(max_attempts=1, **FAST)

    def run(cfg=cfg, spec="tiny", ps=passages):
        tiny_lm.calls.clear()
        recs = augment_passages(ps, cfg, tiny_lm, cache, model_spec=spec)
        return recs, len(tiny_lm.calls)

    first, calls = run()
    assert calls == 2
    again, calls = run()
    assert calls == 0 and again == first  # failures are cached too
    assert run(cfg.model_copy(update={"retry_failed": True}))[1] == 2
    assert run(spec="other-model")[1] == 2
    assert run(cfg.model_copy(update={"n_qa": 2}))[1] == 2
    assert run(cfg.model_copy(update={"model": "tiny"}), spec=None)[1] == 0  # cfg.model is the spec
    monkeypatch.setattr(augment, "PROMPT_VERSION", "test-version")
    recs, calls = run()
    assert calls == 2 and {r.prompt_version for r in recs} == {"test-version"}
    assert run()[1] == 0


def test_same_text_is_augmented_once_and_keeps_each_id(tiny_lm, tmp_path):
    twin = Passage("p2", PASSAGE.title, PASSAGE.text)
    recs = augment_passages(
        [PASSAGE, twin], AugmentConfig(max_attempts=1, **FAST), tiny_lm, ArtifactCache(tmp_path), model_spec="tiny"
    )
    assert [r.passage_id for r in recs] == ["p1", "p2"] and recs[0].passage_text_hash == recs[1].passage_text_hash
    assert tiny_lm.calls == [False, False]


def test_empty_input_and_missing_spec(tiny_lm, tmp_path):
    assert augment_passages([], AugmentConfig(), tiny_lm, ArtifactCache(tmp_path), model_spec="tiny") == []
    assert tiny_lm.calls == []
    with pytest.raises(ValueError, match="model_spec"):
        augment_passages([PASSAGE], AugmentConfig(), tiny_lm, ArtifactCache(tmp_path))


def test_config_validation():
    assert AugmentConfig().augmenting_model("gen") == "gen"
    assert AugmentConfig(model="aug").augmenting_model("gen") == "aug"
    with pytest.raises(ValueError, match="min_qa"):
        AugmentConfig(n_qa=2, min_qa=3)
    with pytest.raises(ValueError):
        AugmentConfig(n_qas=2)


# --------------------------------------------------------------------------- storage


def test_rows_fit_the_table_and_records_round_trip():
    import duckdb
    import polars as pl

    rec = Augmentation("p1", "h1", "m", "v1", "ok", ["a rewrite"], [QAPair("Q?", "A", "It is A.")], 1, None, 1.5)
    failed = Augmentation("p2", "h2", "m", "v1", "failed", [], [], 3, "qa failed after 3 attempts: ...", 4.0)
    assert Augmentation.from_json(rec.to_json()) == rec
    con = duckdb.connect()
    migrate(con)
    df = pl.DataFrame([rec.to_row(), failed.to_row()], infer_schema_length=None)  # noqa: F841 (used by SQL)
    for _ in range(2):  # keyed: a rewrite of the same rows replaces them
        con.execute("INSERT OR REPLACE INTO augmentations BY NAME SELECT * FROM df")
    rows = con.execute(
        "SELECT passage_hash, status, rewrites, qa, qa_count, created_at FROM augmentations ORDER BY 1"
    ).fetchall()
    assert len(rows) == 2 and rows[0][:3] == ("h1", "ok", ["a rewrite"]) and rows[0][4] == 1
    assert json.loads(rows[0][3]) == [{"question": "Q?", "answer": "A", "full_answer": "It is A."}]
    assert rows[1][3] == "[]" and rows[0][5] is not None


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_real_model_augments_synthetic_passages(model_cache_root, tmp_path):
    from semoe.models.loading import load_model

    model, tok = load_model("smollm2-135m-instruct", model_cache_root)
    passages = [build_encyclopedia(SyntheticConfig()).passages[i] for i in (0, 2)]
    # Two attempts (greedy, then one sampled retry) cover the retry on real output: syn-000000
    # passes greedily, syn-000002 on the retry (half the CPU of the first four passages; on those
    # a third attempt turned no further rewrite usable). Outcomes depend on which passages share
    # a batch (padding, the seeded sampling): with syn-000001 added, that one fails its QA.
    recs = augment_passages(
        passages,
        AugmentConfig(batch_size=4, max_attempts=2),
        ChatLM(model, tok),
        ArtifactCache(tmp_path),
        model_spec="smollm2-135m-instruct",
    )
    ok = [r for r in recs if r.status == "ok"]
    print(
        "\n"
        + "\n".join(
            f"{r.passage_id} {r.status} attempts={r.attempts} {r.seconds:.1f}s qa={len(r.qa)} {r.reason or ''}"
            for r in recs
        )
    )
    # SmolLM2-135M's QA lists pass the grounding checks on most passages, its rewrites on
    # about half; a passage without a usable rewrite still trains on its QA pairs.
    assert len(ok) >= 2 and any(r.rewrites for r in ok), [r.reason for r in recs]
    assert any(r.attempts > 1 for r in ok), [r.attempts for r in recs]  # a sampled retry succeeded
    assert all(r.reason for r in recs if r.status == "failed")
    text = {p.id: normalize_answer(p.text) for p in passages}
    for r in ok:
        assert r.qa and all(normalize_answer(q.answer) in text[r.passage_id] for q in r.qa)
        assert len(r.rewrites) <= 1 and passages[recs.index(r)].text not in r.rewrites


def test_rewrite_sentences_follow_the_package_sentence_rule():
    """Abbreviations end no sentence here either: no name is lost from the checked terms and
    no sentence is cut or deduplicated at "Dr." or "St." (semoe.generation.answer)."""
    from semoe.experts.augment_checks import _key_terms, clean_rewrite

    assert _key_terms("Dr. Smith lives in St. Louis. He was born in 1950.") == {"Smith", "St", "Louis", "1950"}
    text = "Dr. Smith was born in St. Louis. He moved to Mt. Vernon. He moved to Mt. Vernon. Later he"
    assert clean_rewrite(text) == "Dr. Smith was born in St. Louis. He moved to Mt. Vernon."
    assert clean_rewrite("Here is the rewrite:\nJ. R. R. Tolkien wrote it in Oxford.") == (
        "J. R. R. Tolkien wrote it in Oxford."
    )
