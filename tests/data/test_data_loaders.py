"""Dataset loaders: the real shared files (skipped when ../shared is absent), hand-made
fixtures in each native format, every bad-input message, and shuffle/sample."""

import csv
import json
import re
import sys
import types
from pathlib import Path

import pytest

from semoe.config import ConfigError, DatasetConfig, SyntheticConfig
from semoe.data import DATASETS, DataContext
from semoe.data.loading import load_examples
from semoe.data.schema import DataFormatError
from semoe.registry import UnknownNameError
from tests.support.helpers import shared_file  # noqa: E402

CTX = DataContext(synthetic=SyntheticConfig())


def load(name: str, path, **kw):
    return load_examples(DatasetConfig(name=name, path=str(path), **kw), CTX)


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_registered_names():
    assert {"2wikimultihopqa", "hotpotqa", "popqa", "cwq", "custom"} <= set(DATASETS.names())
    with pytest.raises(UnknownNameError, match="unknown dataset 'nope'"):
        load("nope", "x.json")


# --- real shared data ----------------------------------------------------------------


def test_real_2wiki_dev_sample():
    exs = load("2wikimultihopqa", shared_file("2wikimultihopqa/dev_random500_with_context.json"), label="2wiki-dev")
    assert len(exs) == 500 and len({e.id for e in exs}) == 500
    assert {e.type for e in exs} == {"compositional", "bridge_comparison", "comparison", "inference"}
    first = exs[0]
    assert first.id == "298f23b8088a11ebbd6eac1f6bf848b6" and first.dataset == "2wiki-dev"
    assert first.answers == ["El Extraño Viaje"]
    assert first.gold_titles == [
        "El extraño viaje",
        "Love in Pawn",
        "Fernando Fernán Gómez",
        "Charles Saunders (director)",
    ]
    assert first.meta["answer_id"] == "Q5352428"
    assert all(e.gold_titles for e in exs)


def test_real_2wiki_open_questions_include_aliases():
    exs = load("2wikimultihopqa", shared_file("2wikimultihopqa/open_1000_questions.json"))
    assert len(exs) == 1000
    assert exs[0].answers == ["Detroit", "Detroit, Michigan", "Detroiter", "Motor City"]
    assert exs[0].gold_titles == ["Aretha Franklin", "I Can't See Myself Leaving You"]
    assert all(len(e.answers) == len(set(e.answers)) for e in exs)
    assert sum(len(e.answers) > 1 for e in exs) > 500


def test_real_popqa_json():
    exs = load("popqa", shared_file("popqa/first1000_with_paragraphs.json"))
    assert len(exs) == 1000
    assert {e.type for e in exs} == {"occupation", "place of birth"}
    first = exs[0]
    assert first.id == "0" and first.question == "What is George Rankin's occupation?"
    assert first.answers == ["politician", "political leader", "political figure", "polit.", "pol"]
    assert first.gold_titles == ["George Rankin", "Politician"]
    assert first.meta == {"subj": "George Rankin", "obj": "politician", "s_pop": 142, "o_pop": 25692}
    # other valid objects of a multi-valued relation (possible_answers) come after the aliases
    extra = next(e for e in exs if e.answers[:1] == ["mathematician"] and "economist" in e.answers)
    assert extra.answers.index("economist") > 0


def test_real_cwq_shared_variant():
    exs = load("cwq", shared_file("cwq/dev1000_qa.json"))
    assert len(exs) == 1000 and exs[0].id == "0"
    assert exs[0].answers == ["Muhammad Zia-ul-Haq"]
    assert max(len(e.answers) for e in exs) > 50


def test_real_nq_open_as_custom_jsonl():
    exs = load("custom", shared_file("nq_open/test_3610.jsonl"), label="nq")
    assert len(exs) == 3610 and exs[0].id == "0" and exs[-1].id == "3609"
    assert exs[0].answers == ["14 December 1972 UTC", "December 1972"] and exs[0].dataset == "nq"


# --- native formats (hand-made fixtures) ---------------------------------------------


def twowiki_record(_id="a1", answer="Paris", answer_id="Q90", **kw):
    return {
        "_id": _id,
        "type": "compositional",
        "question": f"Where was the director of film {_id} born?",
        "answer": answer,
        "answer_id": answer_id,
        "context": [["Film A", ["Film A is a film.", "It was directed by Bob."]], ["Bob", ["Bob was born in Paris."]]],
        "supporting_facts": [["Film A", 1], ["Bob", 0], ["Film A", 0]],
        "evidences": [["Film A", "director", "Bob"], ["Bob", "place of birth", "Paris"]],
        **kw,
    }


def test_2wiki_native_with_aliases_next_to_dev(tmp_path):
    dev = write_json(tmp_path / "dev.json", [twowiki_record(), twowiki_record("a2", "Lyon", "Q456")])
    write_jsonl(
        tmp_path / "id_aliases.json",
        [
            {"Q_id": "Q90", "aliases": ["City of Light", "Paris"], "demonyms": ["Parisian"]},
            {"Q_id": "Q1", "aliases": ["unused"], "demonyms": []},
        ],
    )
    a1, a2 = load("2wikimultihopqa", dev)
    assert a1.answers == ["Paris", "City of Light", "Parisian"]
    assert a1.gold_titles == ["Film A", "Bob"] and a1.type == "compositional"
    assert a1.meta["evidences"][0] == ["Film A", "director", "Bob"]
    assert a2.answers == ["Lyon"]


def test_2wiki_aliases_path_option(tmp_path):
    dev = write_json(tmp_path / "dev.json", [twowiki_record()])
    aliases = write_jsonl(tmp_path / "elsewhere.jsonl", [{"Q_id": "Q90", "aliases": ["Paname"], "demonyms": []}])
    (ex,) = load("2wikimultihopqa", dev, options={"aliases_path": str(aliases)})
    assert ex.answers == ["Paris", "Paname"]
    missing = tmp_path / "nope.json"
    with pytest.raises(DataFormatError, match=f"dataset file not found: {re.escape(str(missing))}"):
        load("2wikimultihopqa", dev, options={"aliases_path": str(missing)})


def test_hotpotqa_distractor(tmp_path):
    rec = {
        "_id": "5a8b57f25542995d1e6f1371",
        "question": "Were Scott Derrickson and Ed Wood of the same nationality?",
        "answer": "yes",
        "type": "comparison",
        "level": "hard",
        "supporting_facts": [["Scott Derrickson", 0], ["Ed Wood", 0]],
        "context": [["Ed Wood", ["Edward Davis Wood Jr. was an American filmmaker."]]],
    }
    (ex,) = load("hotpotqa", write_json(tmp_path / "hotpot_dev_distractor_v1.json", [rec]))
    assert ex.answers == ["yes"] and ex.type == "comparison" and ex.meta == {"level": "hard"}
    assert ex.gold_titles == ["Scott Derrickson", "Ed Wood"]


POPQA_COLUMNS = (
    "id subj prop obj subj_id prop_id obj_id s_aliases o_aliases s_uri o_uri "
    "s_wiki_title o_wiki_title s_pop o_pop question possible_answers"
).split()


def popqa_row(i, subj, obj, o_aliases, possible):
    return [
        str(i),
        subj,
        "occupation",
        obj,
        "1",
        "22",
        "2",
        json.dumps([subj + " Jr."]),
        json.dumps(o_aliases),
        "http://www.wikidata.org/entity/Q1",
        "http://www.wikidata.org/entity/Q2",
        subj,
        obj.capitalize(),
        "142",
        "25692",
        f"What is {subj}'s occupation?",
        json.dumps(possible),
    ]


def test_popqa_tsv_pandas_quoted(tmp_path):
    path = tmp_path / "popQA.tsv"
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")  # quotes JSON cells with "" escapes, as pandas.to_csv does
        w.writerow(POPQA_COLUMNS)
        w.writerow(
            popqa_row(
                4222362,
                "George Rankin",
                "politician",
                ["political leader", "pol"],
                ["politician", "political leader", "pol"],
            )
        )
        w.writerow(popqa_row(7, 'Al "Weird" Smith', "mathematician", [], ["mathematician", "economist"]))
    a, b = load("popqa", path)
    assert a.id == "4222362" and a.type == "occupation"
    assert a.answers == ["politician", "political leader", "pol"]
    assert a.gold_titles == ["George Rankin", "Politician"]
    assert a.meta["s_pop"] == 142
    assert b.question == 'What is Al "Weird" Smith\'s occupation?'
    assert b.answers == ["mathematician", "economist"]


def test_popqa_tsv_raw_json_cells(tmp_path):
    path = tmp_path / "popQA.tsv"
    rows = [POPQA_COLUMNS, popqa_row(1, "Ann Lee", "poet", ["poetess"], ["poet", "poetess"])]
    path.write_text("".join("\t".join(r) + "\n" for r in rows))
    (ex,) = load("popqa", path)
    assert ex.answers == ["poet", "poetess"]


def test_popqa_tsv_bad_cells(tmp_path):
    path = tmp_path / "popQA.tsv"
    row = popqa_row(1, "Ann Lee", "poet", [], ["poet"])
    row[POPQA_COLUMNS.index("o_aliases")] = "[not json"
    path.write_text("\t".join(POPQA_COLUMNS) + "\n" + "\t".join(row) + "\n")
    with pytest.raises(DataFormatError, match=r"popQA\.tsv: line 2: field 'o_aliases' is not valid JSON"):
        load("popqa", path)
    path.write_text("\t".join(POPQA_COLUMNS) + "\n" + "\t".join(row[:5]) + "\n")
    with pytest.raises(DataFormatError, match=r"popQA\.tsv: line 2: expected 17 tab-separated columns"):
        load("popqa", path)


def test_cwq_native(tmp_path):
    rec = {
        "ID": "WebQTrn-3513_7c4117891abf63781b892537979054c6",
        "question": "What state is home to the university represented in sports by George Washington Colonials?",
        "answers": [
            {"answer": "Washington, D.C.", "answer_id": "m.0rh6k", "aliases": ["Washington", "DC", "D.C."]},
            {"answer": "District of Columbia", "answer_id": "m.0rh6x", "aliases": ["DC"]},
        ],
        "compositionality_type": "composition",
        "webqsp_ID": "WebQTrn-3513",
        "sparql": "SELECT ...",
    }
    (ex,) = load("cwq", write_json(tmp_path / "ComplexWebQuestions_dev.json", [rec]))
    assert ex.id == rec["ID"] and ex.type == "composition"
    assert ex.answers == ["Washington, D.C.", "District of Columbia", "Washington", "DC", "D.C."]
    assert ex.meta == {"webqsp_id": "WebQTrn-3513"}


def test_custom_json_and_jsonl(tmp_path):
    rows = [
        {"id": "q1", "question": "Capital of France?", "answer": "Paris"},
        {"id": 2, "question": "2+2?", "answer": [4, "four"]},
    ]
    a, b = load("custom", write_json(tmp_path / "qa.json", rows))
    assert (a.id, a.answers, b.id, b.answers) == ("q1", ["Paris"], "2", ["4", "four"])
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "Is water wet?", "answer": true}\n\n{"question": "Sky?", "answers": ["blue"]}\n')
    a, b = load("custom", path)
    assert (a.id, a.answers, b.id, b.answers) == ("0", ["yes"], "1", ["blue"])


def test_answers_keep_the_text_the_file_wrote(tmp_path):
    """JSON numbers as written (3 → "3", 3.0 → "3.0", 1e3 → "1e3", 0.10 → "0.10": Python's
    float repr would print "1000.0" and "0.1"); booleans as yes/no, as StrategyQA is scored."""
    rows = [
        '{"question": "a?", "answer": 3}',
        '{"question": "b?", "answer": 3.0}',
        '{"question": "c?", "answers": [1e3, 0.10, -2.50E-1]}',
        '{"question": "d?", "answer": true}',
        '{"question": "e?", "answer": false}',
        '{"id": 7.0, "question": "f?", "answer": [3, "3", 3.0]}',
    ]
    want = [["3"], ["3.0"], ["1e3", "0.10", "-2.50E-1"], ["yes"], ["no"], ["3", "3.0"]]
    for path in (
        write_text(tmp_path / "qa.json", f"[{', '.join(rows)}]"),
        write_text(tmp_path / "qa.jsonl", "\n".join(rows)),
    ):
        examples = load("custom", path)
        assert [e.answers for e in examples] == want and examples[-1].id == "7.0"


def test_popqa_answer_json_cells_keep_numbers_as_written(tmp_path):
    path = tmp_path / "popQA.tsv"
    row = popqa_row(1, "Ann Lee", "1990", ["1990.0"], [])
    row[POPQA_COLUMNS.index("possible_answers")] = "[1990, 2.50]"
    row[POPQA_COLUMNS.index("s_pop")] = "142.7"  # not a count: kept as written, never truncated
    path.write_text("\t".join(POPQA_COLUMNS) + "\n" + "\t".join(row) + "\n")
    (ex,) = load("popqa", path)
    assert ex.answers == ["1990", "1990.0", "2.50"]
    assert ex.meta["s_pop"] == "142.7" and ex.meta["o_pop"] == 25692 and ex.meta["subj"] == "Ann Lee"


def test_real_strategyqa_booleans_as_yes_no():
    path = shared_file("strategyqa/train.json")
    exs = load("custom", path, label="strategyqa")
    raw = json.loads(path.read_text())
    assert len(exs) == len(raw) == 2290
    assert [e.answers for e in exs] == [["yes" if r["answer"] else "no"] for r in raw]
    assert {a for e in exs for a in e.answers} == {"yes", "no"}


@pytest.mark.parametrize("suffix", ["json", "jsonl", "tsv"])
def test_bom_and_crlf_do_not_matter(tmp_path, suffix):
    rows = [
        {"id": "q1", "question": "Capital of France?", "answer": "Paris"},
        {"id": "q2", "question": "b?", "answer": "B"},
    ]
    if suffix == "tsv":
        text = "answer\tquestion\tid\r\n" + "".join(f"{r['answer']}\t{r['question']}\t{r['id']}\r\n" for r in rows)
    elif suffix == "jsonl":
        text = "".join(json.dumps(r) + "\r\n" for r in rows)
    else:
        text = json.dumps(rows, indent=1).replace("\n", "\r\n")
    path = tmp_path / f"qa.{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    got = load("custom", path)
    assert [(e.id, e.question, e.answers) for e in got] == [
        ("q1", "Capital of France?", ["Paris"]),
        ("q2", "b?", ["B"]),
    ]


def test_popqa_tsv_any_column_order_and_long_cells(tmp_path):
    """Columns by header name; a 150,000-character cell is read (csv's limit is 131,072)."""
    order = list(reversed(POPQA_COLUMNS))
    row = dict(zip(POPQA_COLUMNS, popqa_row(1, "Ann Lee", "poet", ["poetess"], ["poet", "poetess"])))
    row["s_uri"] = 'long "quoted" ' + "x" * 150_000
    path = tmp_path / "popQA.tsv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(order)
        w.writerow([row[c] for c in order])
    (ex,) = load("popqa", path)
    assert ex.id == "1" and ex.answers == ["poet", "poetess"] and ex.question == "What is Ann Lee's occupation?"


def test_tsv_unbalanced_quote_and_repeated_header(tmp_path):
    path = tmp_path / "qa.tsv"
    path.write_text('id\tquestion\tanswer\n1\t"Who is\tX\n2\tWhat" else?\tY\n')
    with pytest.raises(
        DataFormatError,
        match=rf"^{re.escape(str(path))}: line 2: column 2 opens a quote that is not closed on this line",
    ):
        load("custom", path)
    path.write_text("id\tquestion\tid\n1\tq?\t2\n")
    with pytest.raises(DataFormatError, match=r"qa\.tsv: line 1: header repeats column 'id'"):
        load("custom", path)


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["2wikimultihopqa", "hotpotqa", "popqa", "cwq", "custom"])
def test_missing_file(tmp_path, name):
    missing = tmp_path / "dev.json"
    with pytest.raises(DataFormatError, match=f"^dataset file not found: {re.escape(str(missing))}$"):
        load(name, missing)


def test_no_path_or_hub_id():
    with pytest.raises(ConfigError, match="needs `path`"):
        load_examples(DatasetConfig(name="custom"), CTX)


def test_malformed_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text('[\n {"question": "a", "answer": "b"},\n {"question": "c" "answer": "d"}\n]\n')
    with pytest.raises(
        DataFormatError, match=rf"^{re.escape(str(path))}: invalid JSON at line 3, column 19: Expecting ','"
    ):
        load("custom", path)


def test_malformed_jsonl_names_line(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n{"question": "c", \n')
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}: line 2: invalid JSON"):
        load("custom", path)


def test_json_lines_under_a_json_name_are_read(tmp_path):
    path = write_jsonl(tmp_path / "qa.json", [{"question": "a", "answer": "b"}, {"question": "c", "answer": "d"}])
    assert [e.answers for e in load("custom", path)] == [["b"], ["d"]]


@pytest.mark.parametrize(
    "name, rows, problem",
    [
        ("custom", [{"question": "a", "answer": "b"}, {"answer": "x"}], r"index 1: missing field 'question'"),
        ("custom", [{"question": "a"}], r"index 0: missing field 'answer' or 'answers'"),
        ("custom", [{"question": "a", "answer": ["", None]}], r"index 0: no usable answer"),
        ("custom", [{"question": "  ", "answer": "b"}], r"index 0: field 'question' is empty"),
        ("custom", [["a", "b"]], r"index 0: expected a JSON object, got list"),
        ("2wikimultihopqa", [{"question": "a", "answer": "b"}], r"index 0: missing field '_id' or 'id'"),
        ("hotpotqa", [twowiki_record(supporting_facts=[42])], r"index 0: supporting fact 42 is neither"),
        ("popqa", [{"id": 1, "question": "q"}], r"index 0: missing field 'obj'"),
        ("cwq", [{"ID": "x", "question": "q"}], r"index 0: missing field 'answers' or 'answer'"),
        ("custom", [{"question": "a", "answer": {"text": "b"}}], r"index 0: answer: expected text, .*got dict"),
        ("custom", [{"question": "a", "answer": ["b", ["c"]]}], r"index 0: answer: expected text, .*got list"),
        ("custom", [{"id": ["x"], "question": "a", "answer": "b"}], r"index 0: id: expected text, .*got list"),
        (
            "cwq",
            [{"ID": "x", "question": "q", "answers": [{"answer": "A", "aliases": [{"a": 1}]}]}],
            r"index 0: answer: .*got dict",
        ),
        ("2wikimultihopqa", [twowiki_record(supporting_facts=[[["t"], 0]])], r"index 0: gold title: .*got list"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, name, rows, problem):
    path = write_json(tmp_path / "data.json", rows)
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}: {problem}"):
        load(name, path)


def test_top_level_must_be_a_list(tmp_path):
    path = write_json(tmp_path / "data.json", {"data": []})
    with pytest.raises(DataFormatError, match="expected a JSON list of records at the top level, got dict"):
        load("custom", path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b'[{"question": "caf\xe9", "answer": "x"}]')
    with pytest.raises(DataFormatError, match=rf"{re.escape(str(path))}: not valid UTF-8 \(bad byte at offset 18\)"):
        load("custom", path)


def test_duplicate_ids_are_rejected(tmp_path):
    path = write_json(tmp_path / "qa.json", [{"id": "q1", "question": "a", "answer": "b"}] * 2)
    with pytest.raises(DataFormatError, match="duplicate example id 'q1'"):
        load("custom", path)


# --- shuffle and sample --------------------------------------------------------------


@pytest.fixture
def qa50(tmp_path):
    return write_json(tmp_path / "qa.json", [{"question": f"q{i}?", "answer": str(i)} for i in range(50)])


def ids(examples):
    return [e.id for e in examples]


def test_sample_keeps_first_n_in_file_order(qa50):
    assert ids(load("custom", qa50, sample=5)) == ["0", "1", "2", "3", "4"]
    assert len(load("custom", qa50, sample=-1)) == len(load("custom", qa50)) == 50
    assert len(load("custom", qa50, sample=500)) == 50


def test_shuffle_is_seeded_and_sample_takes_first_after_shuffle(qa50):
    full = ids(load("custom", qa50, shuffle=True, seed=3))
    assert full == ids(load("custom", qa50, shuffle=True, seed=3))
    assert full != ids(load("custom", qa50, shuffle=True, seed=4))
    assert sorted(full, key=int) == [str(i) for i in range(50)] and full != sorted(full, key=int)
    assert ids(load("custom", qa50, shuffle=True, seed=3, sample=7)) == full[:7]


@pytest.mark.parametrize("sample", [0, -2])
def test_invalid_sample(qa50, sample):
    with pytest.raises(ConfigError, match="sample must be a positive number"):
        load("custom", qa50, sample=sample)


# --- HF hub rows (the hub itself is not reachable offline; its row shapes are) -----------


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace ``datasets.load_dataset`` with a table of rows keyed by (id, config, split)."""
    tables: dict = {}
    module = types.ModuleType("datasets")
    module.load_dataset = lambda hf_id, config=None, split=None: tables[(hf_id, config, split)]
    monkeypatch.setitem(sys.modules, "datasets", module)
    return tables


def test_hub_rows_map_to_the_same_examples(fake_hub):
    fake_hub[("hotpotqa/hotpot_qa", "distractor", "validation")] = [
        {
            "id": "5a8b57f25542995d1e6f1371",
            "question": "Were Scott Derrickson and Ed Wood of the same nationality?",
            "answer": "yes",
            "type": "comparison",
            "level": "hard",
            "supporting_facts": {"title": ["Scott Derrickson", "Ed Wood"], "sent_id": [0, 0]},
            "context": {"title": ["Ed Wood"], "sentences": [["Edward Davis Wood Jr. was an American filmmaker."]]},
        }
    ]
    fake_hub[("drt/complex_web_questions", None, "validation")] = [
        {"ID": "x", "question": "q?", "answers": {"answer": ["A", "B"], "aliases": [["a1"], []]}}
    ]
    cfg = DatasetConfig(name="hotpotqa", hf_id="hotpotqa/hotpot_qa", options={"hf_config": "distractor"})
    (hp,) = load_examples(cfg, CTX)
    assert hp.id == "5a8b57f25542995d1e6f1371" and hp.gold_titles == ["Scott Derrickson", "Ed Wood"]
    (cwq,) = load_examples(DatasetConfig(name="cwq", hf_id="drt/complex_web_questions"), CTX)
    assert cwq.answers == ["A", "B", "a1"]
    fake_hub[("drt/complex_web_questions", None, "validation")] = [{"ID": "x", "answers": ["A"]}]
    with pytest.raises(DataFormatError, match=r"^hf:drt/complex_web_questions\[validation\]: index 0: missing field"):
        load_examples(DatasetConfig(name="cwq", hf_id="drt/complex_web_questions"), CTX)
