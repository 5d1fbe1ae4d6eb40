"""Corpus readers: DPR TSV streaming and quoting, wiki18 JSONL, JSON passage lists, dataset
contexts, bad rows, and the corpus content key."""

import csv
import gzip
import io
import json
import logging
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from semoe.config import CorpusConfig, SyntheticConfig
from semoe.data import CORPORA, DataContext
from semoe.data.loading import corpus_key, iter_passages
from semoe.data.schema import DataFormatError, Passage
from tests.support.helpers import shared_file  # noqa: E402

CTX = DataContext(synthetic=SyntheticConfig())


def read(fmt: str, path, **kw) -> list[Passage]:
    return list(iter_passages(CorpusConfig(format=fmt, path=str(path), **kw), CTX))


def write_dpr(path: Path, rows, header=("id", "text", "title")) -> Path:
    """Written the way DPR's psgs_w100.tsv is: tab-separated, quotes doubled inside quoted text."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def test_registered_formats():
    assert {"dpr-tsv", "jsonl", "json-passages", "dataset-contexts"} <= set(CORPORA.names())


# --- dpr-tsv -------------------------------------------------------------------------


def test_dpr_tsv_quoting_and_header(tmp_path):
    path = tmp_path / "psgs_w100.tsv"
    path.write_text(
        "id\ttext\ttitle\n"
        '1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron\n'
        '2\tplain text, no quotes\t"Title ""quoted"""\n'
        "\n"
        "3\tthird\tC\n",
        encoding="utf-8",
    )
    assert read("dpr-tsv", path) == [
        Passage("1", "Aaron", 'Aaron Aaron ( or ; "Ahärôn") is a prophet'),
        Passage("2", 'Title "quoted"', "plain text, no quotes"),
        Passage("3", "C", "third"),
    ]


def test_dpr_tsv_header_order_and_headerless(tmp_path):
    reordered = write_dpr(tmp_path / "a.tsv", [["T", "1", "body"]], header=("title", "id", "text"))
    assert read("dpr-tsv", reordered) == [Passage("1", "T", "body")]
    headerless = write_dpr(tmp_path / "b.tsv", [["7", "body", "T"]], header=None)
    assert read("dpr-tsv", headerless) == [Passage("7", "T", "body")]


def test_dpr_tsv_gz_and_limit(tmp_path):
    path = write_dpr(tmp_path / "psgs_w100.tsv.gz", [[str(i), f"text {i}", f"T{i}"] for i in range(1, 101)])
    assert len(read("dpr-tsv", path)) == 100
    assert [p.id for p in read("dpr-tsv", path, limit=3)] == ["1", "2", "3"]


def test_dpr_tsv_streams(tmp_path):
    """Reading 10 passages of a 200k-row file neither parses ahead (a bad last row is not
    reached) nor holds the file in memory."""
    path = tmp_path / "psgs_w100.tsv"
    body = 'Aaron Aaron ( or ; "Ahärôn") is a prophet, high priest, and the brother of Moses. ' * 2
    rows = [[str(i), body, f"Title {i}"] for i in range(1, 200_001)]
    write_dpr(path, rows + [["", "empty id", "bad"]])
    size = path.stat().st_size
    assert size > 30_000_000

    tracemalloc.start()
    try:
        passages = iter_passages(CorpusConfig(format="dpr-tsv", path=str(path)), CTX)
        first = [next(passages) for _ in range(10)]
        _, peak = tracemalloc.get_traced_memory()
        passages.close()
    finally:
        tracemalloc.stop()
    assert [p.id for p in first] == [str(i) for i in range(1, 11)]
    assert first[0].text == body
    assert peak < size / 100, f"peak {peak} bytes for a {size}-byte file"

    with pytest.raises(DataFormatError, match=r"line 200002: empty passage id"):
        sum(1 for _ in read("dpr-tsv", path))


@pytest.mark.parametrize(
    "line, problem",
    [
        ("4\tonly two columns\n", r"line 3: expected 3 tab-separated columns \(id, text, title\), got 2"),
        ("4\ta\tb\tc\n", "line 3: expected 3 tab-separated columns .*got 4"),
        ("\ttext\ttitle\n", "line 3: empty passage id"),
        (
            '4\t"unclosed\tT\n5\tx\tU\n',
            r"line 3: column 2 opens a quote that is not closed on this line \(unbalanced quote\?\)",
        ),
        ('4\t"closed" late\tT\n', r"line 3: column 2 has text after its closing quote \(unbalanced quote\?\)"),
        ('4\ttext\t"title\n', r"line 3: column 3 opens a quote that is not closed"),
    ],
)
def test_dpr_tsv_bad_row_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "psgs.tsv"
    path.write_text("id\ttext\ttitle\n1\tok\tA\n" + line)
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}: {problem}"):
        read("dpr-tsv", path)


def test_dpr_tsv_skip_bad_rows_counts_them(tmp_path, caplog):
    path = tmp_path / "psgs.tsv"
    path.write_text("id\ttext\ttitle\n1\tok\tA\n2\tbroken\n\tno id\tX\n3\tfine\tC\n")
    with caplog.at_level(logging.WARNING):
        stream = iter_passages(CorpusConfig(format="dpr-tsv", path=str(path), options={"skip_bad_rows": True}), CTX)
        got = list(stream)
    assert [p.id for p in got] == ["1", "3"]
    assert stream.skipped_rows == 2
    assert f"skipped 2 malformed rows (the first: {path}: line 3: expected 3" in caplog.text


# The example: an unbalanced quote opened on line 3 closes on line 4. csv reads the two
# rows as one passage 2 whose text runs into row 3, of the right width, so nothing complained.
UNBALANCED = 'id\ttext\ttitle\n1\tAlpha text\tA\n2\t"Bravo text\tB\n3\tCharlie" text\tC\n4\tDelta text\tD\n'


def test_dpr_tsv_unbalanced_quote_names_the_line_it_opens_on(tmp_path):
    path = tmp_path / "psgs.tsv"
    path.write_text(UNBALANCED)
    with pytest.raises(
        DataFormatError,
        match=rf"^{re.escape(str(path))}: line 3: column 2 opens a quote that is not closed on this line",
    ):
        read("dpr-tsv", path)


def test_dpr_tsv_unbalanced_quote_skipped_and_counted(tmp_path):
    path = tmp_path / "psgs.tsv"
    path.write_text(UNBALANCED)
    stream = iter_passages(CorpusConfig(format="dpr-tsv", path=str(path), options={"skip_bad_rows": True}), CTX)
    assert list(stream) == [
        Passage("1", "A", "Alpha text"),
        Passage("3", "C", 'Charlie" text'),  # a quote inside an unquoted field is literal, as in csv
        Passage("4", "D", "Delta text"),
    ]
    assert stream.skipped_rows == 1


def test_dpr_tsv_quote_closed_on_a_later_line_before_a_tab(tmp_path):
    """The swallowed text can also end in a well-formed closing quote: still line 3."""
    path = tmp_path / "psgs.tsv"
    path.write_text('id\ttext\ttitle\n1\tok\tA\n2\t"Bravo text\tB\n3\t"Charlie text"\tC\n')
    with pytest.raises(DataFormatError, match=r"psgs\.tsv: line 3: column 2 opens a quote"):
        read("dpr-tsv", path)


def test_dpr_tsv_newline_inside_a_quoted_field_is_refused(tmp_path):
    """Rows are lines (see split_tsv_line): an embedded newline reads as an unbalanced quote."""
    path = write_dpr(tmp_path / "psgs.tsv", [["1", "one", "A"], ["2", "two\nlines", "B"]])
    with pytest.raises(DataFormatError, match=r"psgs\.tsv: line 3: column 2 opens a quote that is not closed"):
        read("dpr-tsv", path)


def test_dpr_tsv_skipped_rows_do_not_count_towards_the_limit(tmp_path):
    path = tmp_path / "psgs.tsv"
    path.write_text("id\ttext\ttitle\n1\tok\tA\n2\tbroken\n3\tfine\tC\n4\tmore\tD\n5\tx\n")
    stream = iter_passages(
        CorpusConfig(format="dpr-tsv", path=str(path), limit=2, options={"skip_bad_rows": True}), CTX
    )
    assert [p.id for p in stream] == ["1", "3"]
    assert stream.skipped_rows == 1  # row 5 lies beyond the limit and is never read


def test_split_tsv_line_agrees_with_csv_on_what_csv_writes():
    """Every one-line row csv.writer produces (DPR's quoting) splits back to its fields."""
    import random

    from semoe.data.loading import split_tsv_line

    rnd = random.Random(0)
    alphabet = ['"', '""', "\t", "a", " ", "é", "'", "\\", "\r"]
    for _ in range(3000):
        row = ["".join(rnd.choice(alphabet) for _ in range(rnd.randrange(6))) for _ in range(rnd.randrange(1, 5))]
        out = io.StringIO()
        csv.writer(out, delimiter="\t", lineterminator="\r\n").writerow(row)
        assert split_tsv_line(out.getvalue()) == row == next(csv.reader([out.getvalue()], delimiter="\t")), (
            out.getvalue()
        )


def test_dpr_tsv_long_quoted_passage(tmp_path):
    """csv's default field limit (131,072 characters) refused such a passage."""
    text = 'A "quoted" word, \ttabs and all. ' + "x" * 150_000
    path = write_dpr(tmp_path / "psgs.tsv", [["1", text, "Long"], ["2", "short", "S"]])
    got = read("dpr-tsv", path)
    assert got == [Passage("1", "Long", text), Passage("2", "S", "short")]
    assert len(got[0].text) > 150_000


@pytest.mark.parametrize("header", [("id", "text", "title"), ("id", "title", "text"), ("title", "text", "id")])
@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
def test_dpr_tsv_header_bom_crlf(tmp_path, header, bom, crlf):
    """A BOM never hides the header (it used to be read as a passage, with the columns taken in
    DPR's order, so title and text were swapped on every row of an ``id title text`` file)."""
    rows = [{"id": "1", "text": 'Alpha "one" text', "title": "Alpha"}, {"id": "2", "text": "Bravo text", "title": "B"}]
    path = tmp_path / "psgs.tsv.gz"
    with gzip.open(path, "wt", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\r\n" if crlf else "\n")
        w.writerow(header)
        w.writerows([[r[c] for c in header] for r in rows])
    assert read("dpr-tsv", path) == [Passage("1", "Alpha", 'Alpha "one" text'), Passage("2", "B", "Bravo text")]


def test_dpr_tsv_header_forms(tmp_path):
    path = tmp_path / "psgs.tsv"
    path.write_text("ID\tText\n1\tbody\n")  # any case; no title column
    assert read("dpr-tsv", path) == [Passage("1", "", "body")]
    path.write_text("1\tbody\tTitle\n2\tmore\tText\n")  # one column name-like word: a passage, not a header
    assert read("dpr-tsv", path) == [Passage("1", "Title", "body"), Passage("2", "Text", "more")]
    path.write_text("id\ttitle\tcontents\n1\tT\tbody\n")
    with pytest.raises(DataFormatError, match=r"psgs\.tsv: line 1: header .* has no 'text' column"):
        read("dpr-tsv", path)
    path.write_text("id\ttext\ttext\n1\ta\tb\n")
    with pytest.raises(DataFormatError, match=r"psgs\.tsv: line 1: header repeats column 'text'"):
        read("dpr-tsv", path)


def test_dpr_tsv_non_utf8(tmp_path):
    path = tmp_path / "psgs.tsv"
    path.write_bytes(b"id\ttext\ttitle\n1\tok\tA\n2\tcaf\xe9\tB\n")
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}: line 3: not valid UTF-8"):
        read("dpr-tsv", path)
    got = read("dpr-tsv", path, options={"skip_bad_rows": True})
    assert got[1] == Passage("2", "B", "caf\ufffd")


def test_missing_corpus_file(tmp_path):
    missing = tmp_path / "psgs_w100.tsv"
    for fmt in ("dpr-tsv", "jsonl", "json-passages", "dataset-contexts"):
        with pytest.raises(DataFormatError, match=f"^corpus file not found: {re.escape(str(missing))}$"):
            read(fmt, missing)
    with pytest.raises(DataFormatError, match="no corpus path configured"):
        list(iter_passages(CorpusConfig(format="jsonl"), CTX))


def test_split_tsv_line_bounds_match_a_stripped_line():
    """The quoted path works within the line-end bounds: same fields, same errors as on the
    line with its end stripped, for random lines of quotes, tabs and line ends."""
    import random

    from semoe.data.loading import split_tsv_line

    def outcome(line):
        try:
            return split_tsv_line(line)
        except ValueError as e:
            return str(e)

    rnd = random.Random(1)
    for _ in range(5000):
        body = "".join(rnd.choice(['"', '""', "\t", "a", "\r"]) for _ in range(rnd.randrange(8)))
        end = rnd.choice(["", "\n", "\r\n", "\r\r\n"])
        assert outcome(body + end) == outcome(body.rstrip("\r\n")), repr(body + end)


# --- duplicate ids and progress -------------------------------------------------------


def test_hash_set_agrees_with_a_python_set():
    """Membership through growth, including keys crowding the table's last slots (wrap-around)."""
    import random

    from semoe.data.loading import _HashSet

    rnd = random.Random(0)
    keys = [rnd.getrandbits(64) or 1 for _ in range(20_000)]
    keys += [(rnd.getrandbits(40) << 24) | 0xFFFFFF for _ in range(300)]  # one home slot, the last: wraps
    keys += rnd.sample(keys, 5000)  # repeats
    rnd.shuffle(keys)
    table, seen = _HashSet(bits=4), set()
    for k in keys:
        assert table.add(k) == (k in seen)
        seen.add(k)
    assert all(table.add(k) for k in seen)
    assert len(table._table) * 3 >= len(seen) * 4


@pytest.mark.parametrize("gz", [False, True])
def test_duplicate_id_fails_on_the_row_that_repeats_it(tmp_path, gz):
    """Named with both lines as the second occurrence streams past, before any later row is read
    (the last row is malformed and must not be what fails)."""
    rows = [[str(i), f"text {i}", f"T{i}"] for i in range(1, 2001)]
    rows[1500] = ["17", "again", "T"]  # line 1502 repeats line 18 (header on line 1)
    path = write_dpr(tmp_path / ("psgs.tsv.gz" if gz else "psgs.tsv"), rows + [["x", "only two"]])
    stream = iter_passages(CorpusConfig(format="dpr-tsv", path=str(path)), CTX)
    got = []
    with pytest.raises(
        DataFormatError,
        match=rf"^{re.escape(str(path))}: line 1502: duplicate passage id '17' \(first at line 18\); "
        r"passage ids must be unique$",
    ):
        for p in stream:
            got.append(p)
    assert len(got) == 1500


def test_hash_collisions_are_not_duplicates(tmp_path, monkeypatch):
    """Ids that merely share a hash pass; a real duplicate among them is still named exactly."""
    import semoe.data.loading as loading

    monkeypatch.setattr(loading, "_slot_hash", lambda pid: 1 + len(pid) % 2)  # every id collides
    path = write_dpr(tmp_path / "psgs.tsv", [[pid, "text", "T"] for pid in ["a", "bb", "c", "dd", "e"]])
    assert [p.id for p in read("dpr-tsv", path)] == ["a", "bb", "c", "dd", "e"]
    path = write_dpr(tmp_path / "psgs.tsv", [[pid, "text", "T"] for pid in ["a", "bb", "c", "bb", "e"]])
    with pytest.raises(DataFormatError, match=r"line 5: duplicate passage id 'bb' \(first at line 3\)"):
        read("dpr-tsv", path)
    jsonl = tmp_path / "wiki.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": "t"}) + "\n" for i in ["a", "b", "c", "a"]))
    with pytest.raises(DataFormatError, match=r"wiki\.jsonl: line 4: duplicate passage id 'a' \(first at line 1\)"):
        read("jsonl", jsonl)


def test_empty_passage_names_its_line(tmp_path):
    path = write_dpr(tmp_path / "psgs.tsv", [["1", "ok", "A"], ["2", " \t ", "B"]])
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}: line 3: passage '2' has empty text$"):
        read("dpr-tsv", path)


@pytest.mark.parametrize("gz", [False, True])
def test_progress_by_bytes_of_the_file(tmp_path, gz, monkeypatch, caplog):
    """Progress lines say how much of the file (compressed bytes for .gz) is read; the last says
    all of it, and a limited stream stops short of it."""
    import semoe.data.loading as loading

    monkeypatch.setattr(loading._Progress, "LOG_EVERY_S", 0.0)
    path = write_dpr(
        tmp_path / ("psgs.tsv.gz" if gz else "psgs.tsv"),
        [[str(i), f"text {i} " * 20, f"T{i}"] for i in range(1, 20_001)],
    )
    with caplog.at_level(logging.INFO, logger="semoe"):
        stream = iter_passages(CorpusConfig(format="dpr-tsv", path=str(path)), CTX, progress="test index")
        assert sum(1 for _ in stream) == 20_000
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test index:")]
    shares = [float(re.search(r"([\d.]+)% of " + re.escape(path.name), line).group(1)) for line in lines]
    assert len(shares) == 5 and shares == sorted(shares) and 0 < shares[0] < 50, lines
    assert shares[-1] == 100.0 and lines[-1].startswith("test index: 20,000 passages") and "ETA 0:00:00" in lines[-1]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="semoe"):
        limited = iter_passages(CorpusConfig(format="dpr-tsv", path=str(path), limit=5000), CTX, progress="test index")
        assert sum(1 for _ in limited) == 5000
    last = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test index:")][-1]
    assert float(re.search(r"([\d.]+)% of", last).group(1)) < 60


# --- jsonl ---------------------------------------------------------------------------


def test_jsonl_both_forms(tmp_path):
    path = tmp_path / "wiki.jsonl"
    rows = [
        {"id": "a", "title": "Alpha", "text": "alpha text"},
        {"id": 7, "contents": '"Beta"\nBeta is second.\nMore.'},
        {"contents": "no title line"},
        {"id": "u", "contents": "Unquoted\nTitle on the first line."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read("jsonl", path) == [
        Passage("a", "Alpha", "alpha text"),
        Passage("7", "Beta", "Beta is second.\nMore."),
        Passage("2", "", "no title line"),
        Passage("u", "Unquoted", "Title on the first line."),
    ]


def test_jsonl_bom_crlf_and_numbers(tmp_path):
    path = tmp_path / "wiki.jsonl"
    path.write_bytes(
        "\ufeff".encode()
        + b'{"id": 1.50, "title": 2024, "text": "alpha"}\r\n'
        + b'{"id": "b", "contents": "\\"Beta\\"\\r\\nBeta text"}\r\n'
    )
    assert read("jsonl", path) == [Passage("1.50", "2024", "alpha"), Passage("b", "Beta", "Beta text")]


def test_jsonl_non_text_fields(tmp_path):
    path = tmp_path / "wiki.jsonl"
    path.write_text('{"id": 1, "text": "ok"}\n{"id": 2, "text": ["a", "list"]}\n{"id": {"x": 1}, "text": "t"}\n')
    with pytest.raises(DataFormatError, match=r"wiki\.jsonl: line 2: expected text, a number or a boolean, got list"):
        read("jsonl", path)
    stream = iter_passages(CorpusConfig(format="jsonl", path=str(path), options={"skip_bad_rows": True}), CTX)
    assert [p.id for p in stream] == ["1"] and stream.skipped_rows == 2


def test_jsonl_bad_lines(tmp_path):
    path = tmp_path / "wiki.jsonl"
    path.write_text(
        '{"id": 1, "text": "ok"}\n{"id": 2, "text": \n{"id": 3, "title": "no text"}\n{"id": 4, "text": "x"}\n'
    )
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}: line 2: invalid JSON"):
        read("jsonl", path)
    assert [p.id for p in read("jsonl", path, options={"skip_bad_rows": True})] == ["1", "4"]


def test_real_wiki18_sample():
    got = read("jsonl", shared_file("wiki/wiki18_sample_1000.jsonl"))
    assert len(got) == len({p.id for p in got}) == 1000
    assert got[0].id == "0" and got[0].title == "Evan Morris"
    assert got[0].text.startswith("Evan Morris Evan L. Morris (January 26, 1977")
    assert not any(p.title.startswith('"') for p in got)
    assert any(p.title == "Absalon" for p in got)  # some titles come unquoted


# --- json-passages -------------------------------------------------------------------


def test_real_2wiki_open_corpus():
    got = read("json-passages", shared_file("2wikimultihopqa/open_corpus_6119.json"))
    assert len(got) == len({p.id for p in got}) == 6119
    assert got[0] == Passage("Teutberga", "Teutberga", got[0].text)


def test_json_passages_ids_unique_and_stable(tmp_path):
    path = tmp_path / "corpus.json"
    path.write_text(
        json.dumps(
            [
                {"title": "X", "text": "one"},
                {"title": "X", "text": "two"},
                {"title": "", "text": "three"},
                {"title": "X#2", "text": "four"},
            ]
        )
    )
    first = read("json-passages", path)
    assert [p.id for p in first] == ["X", "X#2", "passage-2", "X#2#2"]
    assert read("json-passages", path) == first


def test_json_passages_bom_crlf_numbers(tmp_path):
    path = tmp_path / "corpus.json"
    path.write_bytes(
        "\ufeff".encode() + b'[{"id": 1.0, "title": "A", "text": "a"},\r\n {"title": 3, "text": 0.10}]\r\n'
    )
    assert read("json-passages", path) == [Passage("1.0", "A", "a"), Passage("3", "3", "0.10")]


def test_json_passages_bad_input(tmp_path):
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps([{"title": "A", "text": "a"}, {"title": "B"}]))
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}: index 1: missing field 'text'"):
        read("json-passages", path)
    path.write_text(json.dumps([{"id": 1, "text": "a"}, {"id": "1", "text": "b"}]))
    with pytest.raises(DataFormatError, match="index 1: duplicate passage id '1'"):
        read("json-passages", path)
    path.write_text('[{"title": "A", "text": "a"},,]')
    with pytest.raises(DataFormatError, match="invalid JSON at line 1, column 30"):
        read("json-passages", path)
    path.write_text(json.dumps([{"title": "A", "text": ["a", "b"]}]))
    with pytest.raises(DataFormatError, match=r"index 0: field 'text': expected text, a number or a boolean, got list"):
        read("json-passages", path)
    path.write_text(json.dumps([{"id": {"n": 1}, "text": "a"}]))
    with pytest.raises(DataFormatError, match=r"index 0: field 'id': expected text, .*got dict"):
        read("json-passages", path)


# --- dataset-contexts ----------------------------------------------------------------


def test_dataset_contexts_dedup(tmp_path):
    q1 = {
        "_id": "1",
        "context": [["Ed Wood", ["Edward Wood", " was a filmmaker."]], ["Scott", ["Scott is a director."]]],
    }
    q2 = {
        "id": "2",
        "context": {
            "title": ["Ed Wood", "Ed Wood"],
            "sentences": [["Edward Wood", " was a filmmaker."], ["Another Ed Wood."]],
        },
    }  # hub layout
    path = tmp_path / "hotpot_dev_distractor_v1.json"
    path.write_text(json.dumps([q1, q2]))
    assert read("dataset-contexts", path) == [
        Passage("Ed Wood", "Ed Wood", "Edward Wood was a filmmaker."),
        Passage("Scott", "Scott", "Scott is a director."),
        Passage("Ed Wood#2", "Ed Wood", "Another Ed Wood."),
    ]


def test_dataset_contexts_bad_entry(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps([{"_id": "1", "context": [["only a title"]]}]))
    with pytest.raises(DataFormatError, match=r"index 0: context entry 0 is not \[title, sentences\]"):
        read("dataset-contexts", path)
    path.write_text(json.dumps([{"_id": "1", "context": {"title": ["A", "B"], "sentences": [["a"]]}}]))
    with pytest.raises(DataFormatError, match="index 0: context has 2 titles but 1 sentence lists"):
        read("dataset-contexts", path)
    path.write_text(json.dumps([{"_id": "1"}]))
    with pytest.raises(DataFormatError, match="index 0: missing field 'context' or 'paragraphs'"):
        read("dataset-contexts", path)
    path.write_text(json.dumps([{"_id": "1", "context": [["A", ["ok", 3]]]}]))
    with pytest.raises(DataFormatError, match="index 0: context entry 0: sentences should be a list of strings"):
        read("dataset-contexts", path)
    path.write_text(json.dumps([{"_id": "1", "context": [[["A"], ["ok"]]]}]))
    with pytest.raises(DataFormatError, match="index 0: context entry 0 title: expected text, .*got list"):
        read("dataset-contexts", path)
    path.write_text(json.dumps([{"id": 1, "paragraphs": [{"title": "A", "text": {"t": "x"}}]}]))
    with pytest.raises(DataFormatError, match="index 0: paragraph 0 text: expected text, .*got dict"):
        read("dataset-contexts", path)


def test_dataset_contexts_bom_crlf(tmp_path):
    path = tmp_path / "dev.json"
    data = json.dumps([{"_id": "1", "context": [["Ed Wood", ["Edward Wood", " was a filmmaker."]]]}], indent=1)
    path.write_bytes("\ufeff".encode() + data.replace("\n", "\r\n").encode())
    assert read("dataset-contexts", path) == [Passage("Ed Wood", "Ed Wood", "Edward Wood was a filmmaker.")]


def test_real_2wiki_contexts_hold_every_supporting_title():
    path = shared_file("2wikimultihopqa/dev_random500_with_context.json")
    got = read("dataset-contexts", path)
    assert len(got) == len({p.id for p in got}) < 5000
    titles = {p.title.lower() for p in got}
    for rec in json.loads(path.read_text()):
        assert {t.lower() for t, _ in rec["supporting_facts"]} <= titles


def test_real_popqa_paragraphs():
    got = read("dataset-contexts", shared_file("popqa/first1000_with_paragraphs.json"))
    assert len(got) == len({p.id for p in got}) and 1000 < len(got) < 2000
    assert got[0].title == "George Rankin"


# --- the index record --------------------------------------------------------------


def test_index_build_records_skipped_rows(tmp_path):
    from semoe.config import SemoeConfig
    from semoe.indexing import build_index

    path = tmp_path / "psgs.tsv"
    path.write_text(UNBALANCED)
    cfg = SemoeConfig.model_validate(
        {
            "corpus": {"format": "dpr-tsv", "path": str(path), "options": {"skip_bad_rows": True}},
            "cache": {"root": str(tmp_path / "cache")},
        }
    )
    info = build_index(cfg)
    assert (info.passages, info.skipped_rows, info.reused) == (3, 1, False)
    assert info.as_dict()["skipped_rows"] == 1


# --- corpus key ----------------------------------------------------------------------


def key(fmt="dpr-tsv", path=None, ctx=CTX, **kw) -> str:
    return corpus_key(CorpusConfig(format=fmt, path=str(path) if path else None, **kw), ctx)


def test_corpus_key_follows_content_and_settings(tmp_path):
    path = write_dpr(tmp_path / "psgs.tsv", [["1", "a", "A"]])
    k = key(path=path)
    assert re.fullmatch(r"[0-9a-f]{16}", k) and key(path=path) == k
    assert key(path=path, limit=5) != k
    assert key(path=path, options={"skip_bad_rows": True}) != k
    assert key("jsonl", path) != k
    stat = path.stat()
    path.write_text(path.read_text().replace("\ta\t", "\tb\t"))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and same mtime: the content hash still tells
    assert key(path=path) != k


def test_corpus_key_large_file_changes_at_the_end(tmp_path):
    path = write_dpr(tmp_path / "psgs.tsv", [[str(i), "x" * 100, "T"] for i in range(1, 50_001)])
    k = key(path=path)
    stat = path.stat()
    with path.open("r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"U\n\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and key(path=path) != k


def test_corpus_key_bad_config(tmp_path):
    with pytest.raises(DataFormatError, match="corpus file not found"):
        key(path=tmp_path / "missing.tsv")
    with pytest.raises(KeyError, match="unknown corpus format 'nope'"):
        key("nope", tmp_path)


def test_corpus_key_synthetic_follows_generator_settings():
    other = DataContext(synthetic=SyntheticConfig(seed=1))
    assert key("synthetic") == key("synthetic") != key("synthetic", ctx=other)
    assert key("synthetic", limit=10) != key("synthetic")
    # Question settings do not change the passages, so they must not invalidate the index.
    more_questions = DataContext(synthetic=SyntheticConfig(n_questions=99))
    assert key("synthetic", ctx=more_questions) == key("synthetic")


def test_loading_does_not_import_torch(tmp_path):
    path = write_dpr(tmp_path / "psgs.tsv", [["1", "a", "A"]])
    code = (
        "import sys; from semoe.config import CorpusConfig, SyntheticConfig; from semoe.data import DataContext;"
        "from semoe.data.loading import corpus_key, iter_passages;"
        f"c = CorpusConfig(format='dpr-tsv', path={str(path)!r}); ctx = DataContext(SyntheticConfig());"
        "corpus_key(c, ctx); list(iter_passages(c, ctx)); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
