"""The shared multi-hop formats (IRCoT/Adaptive-RAG JSONL, FlashRAG JSONL, StrategyQA, IIRC): each
loads from a fixture in its native shape (tests/support/formats/) and the real files under
../shared/data (skipped when absent), each with paragraphs is a ``dataset-contexts`` corpus, and a
malformed file is one error from ``semoe validate`` before Prefect is imported."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semoe.checks import check_config
from semoe.config import ConfigError, CorpusConfig, DatasetConfig, SemoeConfig, SyntheticConfig
from semoe.data import DATASETS, PARAGRAPHS, DataContext
from semoe.data.loading import check_corpus_head, corpus_key, iter_passages, load_examples
from semoe.data.schema import DataFormatError, Passage
from semoe.registry import UnknownNameError
from tests.support.helpers import shared_file

FORMATS = Path(__file__).resolve().parents[1] / "support" / "formats"
REPO = Path(__file__).resolve().parents[2]
CTX = DataContext(synthetic=SyntheticConfig())


def load(name: str, path, **kw):
    return load_examples(DatasetConfig(name=name, path=str(path), **kw), CTX)


def corpus(dataset: str | None, path) -> list[Passage]:
    return list(iter_passages(CorpusConfig(format="dataset-contexts", dataset=dataset, path=str(path)), CTX))


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_registered():
    assert {"ircot", "flashrag", "strategyqa", "iirc"} <= set(DATASETS.names())
    # every dataset format that carries paragraphs is a corpus too; StrategyQA's facts are not passages
    assert set(PARAGRAPHS.names()) == {"2wikimultihopqa", "flashrag", "hotpotqa", "iirc", "ircot", "openrag", "popqa"}


# --- IRCoT / Adaptive-RAG -----------------------------------------------------------


def test_ircot_answers_types_and_gold_titles():
    first, second, third = load("ircot", FORMATS / "ircot.jsonl")
    assert first.id == "2hop__1" and first.question.startswith("Who is the mother of the director")
    assert first.answers == ["Małgorzata Braunek", "Malgorzata Braunek", "Braunek"]
    assert first.type == "compositional"
    assert first.gold_titles == ["Polish-Russian War (film)", "Xawery Żuławski"]
    assert second.answers == ["31"] and second.type == ""  # a DROP-style number where spans are empty
    assert second.gold_titles == ["Andrzej Żuławski", "Xawery Żuławski"]
    assert third.gold_titles == ["Thomas Bain (Orange)", "University of Geneva"]  # pinned context first


def test_ircot_as_corpus_dedups_paragraphs_across_questions():
    passages = corpus("ircot", FORMATS / "ircot.jsonl")
    # 3 + 2 + 2 paragraphs, of which Andrzej Żuławski's is shown with two questions
    assert [p.id for p in passages] == [
        "Polish-Russian War (film)",
        "Xawery Żuławski",
        "Andrzej Żuławski",
        "Xawery Żuławski#2",
        "Thomas Bain (Orange)",
        "University of Geneva",
    ]
    assert passages[3] == Passage(
        "Xawery Żuławski#2", "Xawery Żuławski", "Xawery Żuławski was born in 1971 to Andrzej Żuławski, born in 1940."
    )
    assert corpus("ircot", FORMATS / "ircot.jsonl") == passages  # stable ids


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"question_text": "Q?", "answers_objects": [{"spans": ["a"]}]}, "line 1: missing field 'question_id'"),
        (
            {"question_id": "1", "question_text": "Q?", "answers_objects": {"spans": ["a"]}},
            "line 1: field 'answers_objects' should be a list, got dict",
        ),
        (
            {"question_id": "1", "question_text": "Q?", "answers_objects": [{"spans": "a"}]},
            "line 1: answers_objects[0]: field 'spans' is not valid JSON",
        ),
        (
            {"question_id": "1", "question_text": "Q?", "answers_objects": [{"spans": ["a"]}], "contexts": [{"t": 1}]},
            "line 1: contexts[0]: missing field 'paragraph_text'",
        ),
        ({"question_id": "1", "question_text": "Q?", "answers_objects": [{"spans": []}]}, "line 1: no usable answer"),
    ],
)
def test_ircot_bad_rows_name_line_and_field(tmp_path, row, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DataFormatError, match=re.escape(f"bad.jsonl: {problem}")):
        load("ircot", path)


# --- FlashRAG -----------------------------------------------------------------------


def test_flashrag_golden_answers_metadata_type_and_titles():
    first, second = load("flashrag", FORMATS / "flashrag.jsonl")
    assert first.id == "test_0" and first.answers == ["Arthur's Magazine"] and first.type == "comparison"
    assert first.gold_titles == ["Arthur's Magazine", "First for Women"]
    assert first.meta["level"] == "medium" and first.meta["supporting_facts"]["sent_id"] == [0, 0]
    assert second.answers == ["New Delhi", "Delhi"] and second.type == "bridge"
    assert second.gold_titles == ["Taj Mahal", "India"]


def test_flashrag_without_metadata_context(tmp_path):
    path = write_jsonl(tmp_path / "nq.jsonl", [{"id": "test_0", "question": "who sang it?", "golden_answers": ["X"]}])
    (ex,) = load("flashrag", path)
    assert ex.answers == ["X"] and ex.type == "" and ex.gold_titles == [] and ex.meta == {}
    with pytest.raises(DataFormatError, match=r"nq.jsonl: line 1: metadata: missing field 'context' or 'paragraphs'"):
        corpus("flashrag", path)


def test_flashrag_as_corpus():
    passages = corpus("flashrag", FORMATS / "flashrag.jsonl")
    assert [p.id for p in passages] == ["Arthur's Magazine", "First for Women", "Taj Mahal", "India"]
    assert (
        passages[0].text
        == "Arthur's Magazine (1844–1846) was an American literary periodical published in Philadelphia."
    )


# --- StrategyQA ---------------------------------------------------------------------


def test_strategyqa_original_shape_with_evidence():
    first, second = load("strategyqa", FORMATS / "strategyqa_train.json")
    assert first.id == "b8677742616fef051f00" and first.answers == ["yes"] and first.type == "yes-no"
    # the first annotator's paragraphs, as DRAGIN reads them; "operation" is no paragraph
    assert first.gold_titles == ["Julius Caesar", "Genghis Khan"]
    assert first.meta["evidence_paragraphs"] == ["Julius Caesar-75", "Genghis Khan-17"]
    assert first.meta["facts"] == ["Julius Caesar had three children.", "Genghis Khan had sixteen children."]
    assert second.answers == ["no"] and second.gold_titles == ["The Police"]


def test_strategyqa_answer_must_be_boolean(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"qid": "a", "question": "Q?", "answer": "True"}]))
    with pytest.raises(DataFormatError, match=r"s.json: index 0: field 'answer' should be true or false, got 'True'"):
        load("strategyqa", path)


def test_strategyqa_is_not_a_corpus():
    cfg = SemoeConfig(corpus={"format": "dataset-contexts", "dataset": "strategyqa", "path": "x.json"})
    with pytest.raises(UnknownNameError, match="unknown dataset format with paragraphs 'strategyqa'"):
        check_config(cfg)


def test_real_strategyqa():
    path = shared_file("strategyqa/train.json")
    raw = json.loads(path.read_text())
    exs = load("strategyqa", path)
    assert [e.id for e in exs] == [r["qid"] for r in raw]
    assert [e.answers for e in exs] == [["yes" if r["answer"] else "no"] for r in raw]
    assert exs[0].question == "Are more people today related to Genghis Khan than Julius Caesar?"
    assert exs[0].meta["facts"] == raw[0]["facts"] and exs[0].meta["term"] == "Genghis Khan"
    assert {e.type for e in exs} == {"yes-no"} and all(e.gold_titles == [] for e in exs)  # this copy has no evidence


# --- IIRC ---------------------------------------------------------------------------


def test_iirc_answer_types(caplog):
    with caplog.at_level(logging.INFO, logger="semoe"):
        span, value, binary = load("iirc", FORMATS / "iirc_dev.json")
    assert (span.id, span.type, span.answers) == ("q_1", "span", ["Switzerland", "Swiss Confederation"])
    assert span.gold_titles == ["Thomas Bain (Orange)", "University of Geneva"]
    assert (value.type, value.answers, value.meta["answer_unit"]) == ("value", ["195"], "years")
    assert (binary.type, binary.answers) == ("binary", ["yes"])
    assert binary.gold_titles == ["Thomas Bain (Orange)", "University of Geneva", "Orange Order"]
    assert "skipped 1 unanswerable questions" in caplog.text  # q_4, answer type none


def test_iirc_as_corpus():
    passages = corpus("iirc", FORMATS / "iirc_dev.json")
    assert [p.id for p in passages] == ["Thomas Bain (Orange)", "University of Geneva", "Orange Order"]
    assert passages[2].text == "The Orange Order was founded in 1795."
    assert passages[0].text.startswith("Bain was born in London.")


def test_iirc_unknown_answer_type(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps([{"title": "T", "text": "x", "questions": [{"qid": "q", "answer": {"type": "odd"}}]}]))
    with pytest.raises(DataFormatError, match=r"dev.json: index 0: questions\[0\]: answer: unknown answer type 'odd'"):
        load("iirc", path)


def test_real_iirc():
    path = shared_file("iirc/dev.json")
    raw = json.loads(path.read_text())
    questions = [q for p in raw for q in p["questions"]]
    answerable = [q for q in questions if q["answer"]["type"] != "none"]
    exs = load("iirc", path)
    assert [e.id for e in exs] == [q["qid"] for q in answerable]
    assert {e.type for e in exs} == {"span", "value", "binary"}
    first = exs[0]
    assert first.id == "q_10839" and first.answers == ["Switzerland"]
    assert first.gold_titles == ["Thomas Bain (Orange)", "University of Geneva"]
    values = [e for e, q in zip(exs, answerable, strict=True) if q["answer"]["type"] == "value"]
    assert values[0].answers == ["4"] and values[0].meta["answer_unit"] == "years"

    passages = corpus("iirc", path)
    assert len({p.id for p in passages}) == len(passages) >= len(raw)
    assert passages[0] == Passage("Thomas Bain (Orange)", "Thomas Bain (Orange)", raw[0]["text"])
    assert passages[1] == Passage(
        "University of Geneva",
        "University of Geneva",
        "The University of Geneva (French: Université de Genève) is a public research university located in "
        "Geneva, Switzerland.",
    )


# --- config, corpus key, preflight --------------------------------------------------


def test_corpus_dataset_is_checked_and_keys_the_corpus(tmp_path):
    path = FORMATS / "ircot.jsonl"
    with pytest.raises(ConfigError, match="corpus.dataset 'ircot' is read by corpus.format 'dataset-contexts' only"):
        check_config(SemoeConfig(corpus={"format": "jsonl", "dataset": "ircot", "path": str(path)}))
    with pytest.raises(UnknownNameError, match="unknown dataset format with paragraphs 'cwq'; registered: 2wiki"):
        check_config(SemoeConfig(corpus={"format": "dataset-contexts", "dataset": "cwq", "path": str(path)}))
    keys = {
        d: corpus_key(CorpusConfig(format="dataset-contexts", dataset=d, path=str(path)), CTX) for d in (None, "ircot")
    }
    assert keys[None] != keys["ircot"]


def test_corpus_head_check_reads_only_the_head(tmp_path):
    """A bad row past the head is left to the indexing stream."""
    rows = [{"id": str(i), "text": f"passage {i}"} for i in range(5)] + [{"id": "x"}]
    cfg = CorpusConfig(format="jsonl", path=str(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert check_corpus_head(cfg, CTX, n=5) == 5
    with pytest.raises(DataFormatError, match=r"p.jsonl: line 6: expected an object with 'text'"):
        check_corpus_head(cfg, CTX, n=6)


def _validate(tmp_path: Path, **sections) -> subprocess.CompletedProcess:
    """``semoe validate`` in a fresh interpreter, which prints whether Prefect got imported."""
    config = {
        "model": {"spec": "dummy"},
        "methods": ["single-retrieval"],
        "store": {"path": str(tmp_path / "r.duckdb")},
        "cache": {"root": str(tmp_path / "cache")},
        **sections,
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    code = (
        f"import sys; from semoe.cli import main; code = main(['validate', {str(path)!r}]); "
        "print('prefect imported:', 'prefect' in sys.modules); sys.exit(code)"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_validate_catches_a_malformed_dataset_line_without_prefect(tmp_path):
    good = (FORMATS / "ircot.jsonl").read_text().splitlines()
    path = tmp_path / "dev.jsonl"
    path.write_text(good[0] + "\n" + good[1].replace('"question_text"', '"question"') + "\n")
    done = _validate(tmp_path, datasets=[{"name": "ircot", "path": str(path)}])
    assert done.returncode == 2
    assert done.stderr == f"semoe: error: {path}: line 2: missing field 'question_text'\n"
    assert done.stdout.strip() == "prefect imported: False"

    path.write_text(good[0] + "\n" + good[1][:-1] + "\n")  # a line cut short
    done = _validate(tmp_path, datasets=[{"name": "ircot", "path": str(path)}])
    assert done.returncode == 2 and f"semoe: error: {path}: line 2: invalid JSON at column " in done.stderr


def test_validate_catches_a_malformed_corpus_without_prefect(tmp_path):
    rows = [json.loads(line) for line in (FORMATS / "ircot.jsonl").read_text().splitlines()]
    del rows[1]["contexts"][1]["paragraph_text"]
    path = write_jsonl(tmp_path / "contexts.jsonl", rows)
    done = _validate(
        tmp_path,
        datasets=[{"name": "ircot", "path": str(FORMATS / "ircot.jsonl")}],
        corpus={"format": "dataset-contexts", "dataset": "ircot", "path": str(path)},
    )
    assert done.returncode == 2
    assert done.stderr == f"semoe: error: {path}: line 2: contexts[1]: missing field 'paragraph_text'\n"
    assert done.stdout.strip() == "prefect imported: False"


def test_validate_passes_for_good_files(tmp_path):
    done = _validate(
        tmp_path,
        datasets=[{"name": "ircot", "path": str(FORMATS / "ircot.jsonl")}],
        corpus={"format": "dataset-contexts", "dataset": "ircot", "path": str(FORMATS / "ircot.jsonl")},
    )
    assert done.returncode == 0, done.stderr
    assert "# preflight passed: run id " in done.stdout and "prefect imported: False" in done.stdout


def test_validate_fails_for_a_missing_dataset_file(tmp_path):
    done = _validate(tmp_path, datasets=[{"name": "custom", "path": str(tmp_path / "nope.json")}])
    assert done.returncode == 2
    assert done.stderr == f"semoe: error: dataset file not found: {tmp_path / 'nope.json'}\n"


# --- 2Wiki without id_aliases.json ----------------------------------------------------


def test_2wiki_dev_without_aliases_warns_once(tmp_path, caplog):
    row = {"_id": "a1", "type": "comparison", "question": "Q?", "answer": "Paris", "answer_id": "Q90"}
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps([row]))
    with caplog.at_level(logging.WARNING, logger="semoe"):
        assert load("2wikimultihopqa", dev)[0].answers == ["Paris"]
        load("2wikimultihopqa", dev)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{dev}: no {tmp_path / 'id_aliases.json'} beside it, so the answers have no aliases "
        "(the official 2Wiki scorer uses them); put the file there or set the dataset's options.aliases_path"
    ]

    caplog.clear()
    aliases = [{"Q_id": "Q90", "aliases": ["City of Light"]}, {"Q_id": "Q142", "aliases": ["French Republic"]}]
    write_jsonl(tmp_path / "id_aliases.json", aliases)  # JSON Lines, as 2Wiki ships it
    other = tmp_path / "open" / "open.json"  # the open-retrieval question file has no answer_id: no warning
    other.parent.mkdir()
    other.write_text(json.dumps([{"id": "b", "question": "Q?", "answer": "x", "answer_aliases": ["y"]}]))
    with caplog.at_level(logging.WARNING, logger="semoe"):
        assert load("2wikimultihopqa", dev)[0].answers == ["Paris", "City of Light"]
        assert load("2wikimultihopqa", other)[0].answers == ["x", "y"]
    assert not caplog.records
