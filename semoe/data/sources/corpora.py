"""Passage corpora read from files, as streams of :class:`Passage`.

Line-based formats (``dpr-tsv``, ``jsonl``) stream, so the 21M-row DPR Wikipedia dump
never sits in memory. ``options.skip_bad_rows: true`` turns a malformed row from an error
into a :class:`SkippedRow` (counted by :class:`~semoe.data.loading.PassageStream`, logged,
recorded with the index) and undecodable bytes into U+FFFD, for dumps one cannot fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator, NamedTuple

from semoe.config import CorpusConfig
from semoe.data import CORPORA, DEFAULT_PARAGRAPHS, PARAGRAPHS, DataContext
from semoe.data.loading import (
    ReadPosition,
    Record,
    as_text,
    iter_lines,
    json_loads,
    read_records,
    resolve_path,
    split_tsv_line,
)
from semoe.data.schema import DataFormatError, Passage, SkippedRow


class _BadRows:
    """Raise on a malformed row, or with ``skip_bad_rows`` return the :class:`SkippedRow` to yield."""

    def __init__(self, path: Path, cfg: CorpusConfig):
        self.path = path
        self.skip = bool(cfg.options.get("skip_bad_rows", False))

    def __call__(self, lineno: int, problem: str) -> SkippedRow:
        message = f"{self.path}: line {lineno}: {problem}"
        if not self.skip:
            raise DataFormatError(message)
        return SkippedRow(message)


class _Layout(NamedTuple):
    id: int
    text: int
    title: int | None
    width: int


_DPR_COLUMNS = ("id", "text", "title")


def _tsv_layout(row: list[str], path: Path, lineno: int) -> tuple[_Layout, bool]:
    """Column positions from a header (``id``, ``text`` and optional ``title``, in any order,
    any case), else DPR's fixed order. A first row with two or more of those names is a
    header: passage text and title are never both such words."""
    names = [c.strip().lower() for c in row]
    if sum(name in _DPR_COLUMNS for name in names) < 2:
        return _Layout(0, 1, 2, 3), False
    for name in _DPR_COLUMNS:
        if names.count(name) > 1:
            raise DataFormatError(f"{path}: line {lineno}: header repeats column {name!r}")
    for name in _DPR_COLUMNS[:2]:
        if name not in names:
            raise DataFormatError(f"{path}: line {lineno}: header {row} has no {name!r} column")
    title = names.index("title") if "title" in names else None
    return _Layout(names.index("id"), names.index("text"), title, len(names)), True


@CORPORA.register("dpr-tsv", "DPR psgs_w100.tsv (id, text, title; header line; .gz accepted), streamed")
def read_dpr_tsv(cfg: CorpusConfig, ctx: DataContext) -> Iterator[Passage | SkippedRow | ReadPosition]:
    """One passage per line, fields quoted as DPR writes them (:func:`split_tsv_line`);
    columns by header name, or DPR's order when there is no header. Yields its
    :class:`ReadPosition` first. The loop runs once per row of a 21M-row file: keep it lean."""
    path = resolve_path(cfg.path, "corpus")
    bad = _BadRows(path, cfg)
    position = ReadPosition(path)
    yield position
    lines = iter_lines(path, replace_errors=bad.skip, position=position)
    layout: _Layout | None = None
    try:
        for lineno, line in enumerate(lines, 1):
            if len(line) <= 2 and not line.strip("\r\n"):
                continue
            try:
                row = split_tsv_line(line)
            except ValueError as e:
                yield bad(lineno, str(e))
                continue
            if layout is None:
                layout, is_header = _tsv_layout(row, path, lineno)
                id_col, text_col, title_col, width = layout
                if is_header:
                    continue
            if len(row) != width:
                yield bad(lineno, f"expected {width} tab-separated columns (id, text, title), got {len(row)}")
                continue
            pid = row[id_col].strip()
            if not pid:
                yield bad(lineno, "empty passage id")
                continue
            yield Passage(pid, "" if title_col is None else row[title_col], row[text_col])
    finally:
        lines.close()


def _split_contents(contents: str) -> tuple[str, str]:
    """wiki18 / FlashRAG ``contents`` is ``title\ntext``, the title usually (not always) quoted."""
    head, sep, rest = contents.partition("\n")
    if not sep:
        return "", contents
    head = head.rstrip("\r")
    if len(head) >= 2 and head.startswith('"') and head.endswith('"'):
        head = head[1:-1]
    return head, rest


@CORPORA.register("jsonl", "one passage per line: {id, title, text} or wiki18's {id, contents}, streamed")
def read_jsonl(cfg: CorpusConfig, ctx: DataContext) -> Iterator[Passage | SkippedRow | ReadPosition]:
    """A missing id falls back to the 0-based line number, stable for a given file. Yields
    its :class:`ReadPosition` first."""
    path = resolve_path(cfg.path, "corpus")
    bad = _BadRows(path, cfg)
    position = ReadPosition(path)
    yield position
    lines = iter_lines(path, replace_errors=bad.skip, position=position)
    try:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json_loads(line)
            except json.JSONDecodeError as e:
                yield bad(lineno, f"invalid JSON at column {e.colno}: {e.msg}")
                continue
            if not isinstance(row, dict) or (row.get("text") is None and row.get("contents") is None):
                yield bad(lineno, "expected an object with 'text' (and 'title') or 'contents'")
                continue
            try:
                if row.get("text") is not None:
                    title, text = as_text(row.get("title") or ""), as_text(row["text"])
                else:
                    title, text = _split_contents(as_text(row["contents"]))
                pid = as_text(lineno - 1 if row.get("id") is None else row["id"])
            except TypeError as e:
                yield bad(lineno, str(e))
                continue
            yield Passage(id=pid, title=title, text=text)
    finally:
        lines.close()


class _UniqueIds:
    """Ids that are readable and unique: the given id, else the title, then ``Title#2``, ...

    Stable for a given file, since they depend only on its order.
    """

    def __init__(self) -> None:
        self.issued: set[str] = set()

    def explicit(self, rec: Record) -> str:
        pid = rec.text("id")
        if pid in self.issued:
            raise rec.error(f"duplicate passage id {pid!r}")
        self.issued.add(pid)
        return pid

    def from_title(self, title: str, fallback: str) -> str:
        base = title or fallback
        candidate, n = base, 1
        while candidate in self.issued:
            n += 1
            candidate = f"{base}#{n}"
        self.issued.add(candidate)
        return candidate


@CORPORA.register("json-passages", "a JSON list (or JSONL) of {title, text[, id]}, e.g. 2Wiki's open corpus")
def read_json_passages(cfg: CorpusConfig, ctx: DataContext) -> Iterator[Passage]:
    """Without an ``id`` a passage is named by its title, so title-judged gold reads naturally."""
    ids = _UniqueIds()
    for i, rec in enumerate(read_records(resolve_path(cfg.path, "corpus"))):
        title, text = rec.text("title", ""), rec.text("text")
        pid = ids.from_title(title, f"passage-{i}") if rec.get("id") is None else ids.explicit(rec)
        yield Passage(id=pid, title=title, text=text)


@PARAGRAPHS.register("popqa")
@PARAGRAPHS.register("2wikimultihopqa")
@PARAGRAPHS.register("hotpotqa")
def multihop_paragraphs(rec: Record) -> Iterator[tuple[str, str]]:
    """(title, text) from HotpotQA/2Wiki ``context`` ([[title, [sentences]]] or the hub's
    ``{title, sentences}``) or PopQA's ``paragraphs`` [{title, text}]."""
    context = rec.get("context")
    if isinstance(context, dict):
        titles, sentences = context.get("title", []), context.get("sentences", [])
        if len(titles) != len(sentences):
            raise rec.error(f"context has {len(titles)} titles but {len(sentences)} sentence lists")
        context = list(zip(titles, sentences, strict=True))
    if context is not None:
        for j, entry in enumerate(context):
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
                raise rec.error(f"context entry {j} is not [title, sentences]")
            title, sentences = entry
            sentences = [sentences] if isinstance(sentences, str) else sentences
            if not isinstance(sentences, (list, tuple)) or not all(s is None or isinstance(s, str) for s in sentences):
                raise rec.error(f"context entry {j}: sentences should be a list of strings")
            text = " ".join(s.strip() for s in sentences if s and s.strip())
            yield rec.as_text(title, f"context entry {j} title"), text
        return
    paragraphs = rec.get("paragraphs")
    if paragraphs is None:
        raise rec.error("missing field 'context' or 'paragraphs'")
    for j, p in enumerate(paragraphs):
        if not isinstance(p, dict) or p.get("text") is None:
            raise rec.error(f"paragraph {j} has no 'text'")
        yield rec.as_text(p.get("title") or "", f"paragraph {j} title"), rec.as_text(p["text"], f"paragraph {j} text")


@CORPORA.register(
    "dataset-contexts",
    "the paragraphs of a dataset file, deduplicated (corpus.dataset: its format; default HotpotQA/2Wiki/PopQA)",
)
def read_dataset_contexts(cfg: CorpusConfig, ctx: DataContext) -> Iterator[Passage]:
    """The distractor setting as a corpus: every paragraph shown with any question, once (the
    same title and text under several questions is one passage). ``cfg.dataset`` names the
    dataset format whose records are read (:data:`~semoe.data.PARAGRAPHS`). Ids are the
    titles (``Title#2``, ... for a second paragraph of the same title), stable for a file."""
    paragraphs = PARAGRAPHS.get(cfg.dataset or DEFAULT_PARAGRAPHS)
    ids = _UniqueIds()
    seen: set[bytes] = set()
    for rec in read_records(resolve_path(cfg.path, "corpus")):
        for title, text in paragraphs(rec):
            digest = hashlib.sha1(f"{title}\0{text}".encode()).digest()
            if digest in seen:
                continue
            seen.add(digest)
            yield Passage(id=ids.from_title(title, f"passage-{len(seen)}"), title=title, text=text)
