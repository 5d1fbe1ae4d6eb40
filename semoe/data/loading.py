"""Entry points for questions and passages, plus the file readers every source shares.

Every reader reports a bad input as one :class:`DataFormatError` naming the file and the
place (line or list index) of the problem, so a truncated download or a wrong column
reads as one sentence instead of a KeyError traceback from deep inside a stage.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from semoe.config import ConfigError, CorpusConfig, DatasetConfig
from semoe.data import CORPORA, DATASETS, DataContext
from semoe.data.schema import DataFormatError, Example, Passage, SkippedRow

log = logging.getLogger(__name__)

# Bump when a corpus reader changes how a file maps to passages, so old indexes are not reused.
# 2: BOM-led TSV headers, one row per line with strict quoting, no field size limit, JSON
# numbers as written.
_CORPUS_READER_VERSION = 2
_SAMPLE_BYTES = 1 << 20


def load_examples(cfg: DatasetConfig, ctx: DataContext) -> list[Example]:
    """Load a dataset, then shuffle (seeded) and keep the first ``sample`` as DRAGIN/PRAG do."""
    if cfg.sample is not None and cfg.sample != -1 and cfg.sample < 1:
        raise ConfigError(f"dataset {cfg.display_name!r}: sample must be a positive number, or -1/None for all")
    examples = list(DATASETS.get(cfg.name)(cfg, ctx))
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise DataFormatError(
                f"dataset {cfg.display_name!r} ({cfg.path or cfg.hf_id}): duplicate example id {ex.id!r}"
            )
        seen.add(ex.id)
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(examples)
    if cfg.sample not in (None, -1):
        examples = examples[: cfg.sample]
    return examples


def iter_passages(cfg: CorpusConfig, ctx: DataContext) -> "PassageStream":
    """Stream the corpus (first ``limit`` passages); the reader is closed when the limit is hit.
    A passage with empty text, or an id seen before, is a :class:`DataFormatError`; rows the
    reader skipped (``skip_bad_rows``) are counted in ``.skipped_rows``."""
    return PassageStream(cfg, ctx)


def _id_hash(pid: str) -> int:
    return int.from_bytes(hashlib.blake2b(pid.encode(), digest_size=8).digest(), "little")


class PassageStream:
    """An iterator of checked passages that also counts the malformed rows a reader skipped.

    Readers yield :class:`SkippedRow` for a row dropped under ``skip_bad_rows``; the stream
    filters them out, counts them (``skipped_rows``, final once the stream is exhausted or
    closed) and logs the total once, so an index build can record how much of a file it lost.
    """

    def __init__(self, cfg: CorpusConfig, ctx: DataContext):
        self.cfg, self.ctx = cfg, ctx
        self.skipped_rows = 0
        self._passages = self._checked()

    def __iter__(self) -> "PassageStream":
        return self

    def __next__(self) -> Passage:
        return next(self._passages)

    def close(self) -> None:
        self._passages.close()

    def _read(self) -> Iterator[Passage | SkippedRow]:
        return _limited(CORPORA.get(self.cfg.format)(self.cfg, self.ctx), self.cfg.limit)

    def _checked(self) -> Iterator[Passage]:
        """Empty passages fail at once; duplicate ids at the end of the stream, found among
        8-byte id hashes (170 MB for DPR's 21M passages, where a set of the ids would take
        gigabytes), then named by a second pass over the file."""
        import array

        import numpy as np

        where = f"corpus {self.cfg.path or self.cfg.format}"
        hashes = array.array("Q")
        first_skipped: SkippedRow | None = None
        passages = self._read()
        try:
            for p in passages:
                if isinstance(p, SkippedRow):
                    self.skipped_rows += 1
                    first_skipped = first_skipped or p
                    continue
                if not p.text.strip():
                    raise DataFormatError(f"{where}: passage {p.id!r} has empty text")
                hashes.append(_id_hash(p.id))
                yield p
        finally:
            passages.close()
            if self.skipped_rows:
                log.warning("skipped %d malformed rows (the first: %s)", self.skipped_rows, first_skipped.problem)
        values, counts = np.unique(np.frombuffer(hashes, dtype=np.uint64), return_counts=True)
        repeated = set(values[counts > 1].tolist())
        if repeated:
            first = next(p.id for p in self._read() if isinstance(p, Passage) and _id_hash(p.id) in repeated)
            more = f" (and {len(repeated) - 1} more ids)" if len(repeated) > 1 else ""
            raise DataFormatError(f"{where}: duplicate passage id {first!r}{more}; passage ids must be unique")


def _limited(items: Iterator[Passage | SkippedRow], limit: int | None) -> Iterator[Passage | SkippedRow]:
    """The items up to the ``limit``-th passage (skipped rows do not count), pulling nothing
    beyond it; the reader is closed either way."""
    try:
        remaining = limit
        if remaining is not None and remaining <= 0:
            return
        for item in items:
            yield item
            if remaining is not None and isinstance(item, Passage):
                remaining -= 1
                if not remaining:
                    return
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def corpus_key(cfg: CorpusConfig, ctx: DataContext) -> str:
    """A hex key that changes with the corpus content, computed without reading a big file whole.

    Files are identified by path, size, mtime and hashes of their first and last MiB;
    the synthetic corpus by its generator settings.
    """
    CORPORA.get(cfg.format)
    parts: dict[str, Any] = {
        "reader_version": _CORPUS_READER_VERSION,
        "format": cfg.format,
        "options": cfg.options,
        "limit": cfg.limit,
    }
    if cfg.format == "synthetic":
        from semoe.data.encyclopedia import passage_identity

        parts["synthetic"] = passage_identity(ctx.synthetic)
    else:
        path = resolve_path(cfg.path, "corpus")
        stat = path.stat()
        parts.update(
            path=str(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns, sample=_edge_digest(path, stat.st_size)
        )
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _edge_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(_SAMPLE_BYTES))
        if size > _SAMPLE_BYTES:
            f.seek(max(_SAMPLE_BYTES, size - _SAMPLE_BYTES))
            h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()


# --- shared file readers ------------------------------------------------------------


def json_loads(text: str) -> Any:
    """``json.loads`` keeping each JSON number with a fraction or exponent as the text the file
    wrote (``3.0`` stays "3.0", ``1e3`` "1e3", ``0.10`` "0.10"): a gold answer must read as the
    dataset wrote it, not as Python re-prints a float. Integers stay ints (``3`` prints as "3")."""
    return json.loads(text, parse_float=str)


def as_text(value: Any) -> str:
    """A scalar field as text: strings as they are, numbers as written (see :func:`json_loads`),
    booleans as "yes"/"no" (StrategyQA's ``answer: true`` is gold "yes", the form yes/no QA
    is scored in). Raises ``TypeError`` for a list or object, whose repr would be garbage."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return str(value)
    raise TypeError(f"expected text, a number or a boolean, got {type(value).__name__} {_clip(value)}")


def _clip(value: Any, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


@dataclass(frozen=True)
class Record:
    """One input row and where it came from, so every complaint names the file and the row."""

    source: str
    where: str
    data: dict

    def error(self, problem: str) -> DataFormatError:
        return DataFormatError(f"{self.source}: {self.where}: {problem}")

    def req(self, *keys: str) -> Any:
        """The first of ``keys`` that is present and not null."""
        for key in keys:
            if self.data.get(key) is not None:
                return self.data[key]
        raise self.error(f"missing field {' or '.join(repr(k) for k in keys)}")

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def text(self, key: str, default: str | None = None) -> str:
        """Field ``key`` as text (:func:`as_text`); missing or null gives ``default``, or an
        error when there is none."""
        value = self.req(key) if default is None else self.get(key, default)
        try:
            return as_text(value)
        except TypeError as e:
            raise self.error(f"field {key!r}: {e}") from None

    def json_list(self, key: str) -> list:
        """A list field, also when stored as a JSON string (PopQA's TSV columns)."""
        value = self.get(key, [])
        if isinstance(value, str):
            try:
                value = json_loads(value) if value.strip() else []
            except json.JSONDecodeError as e:
                raise self.error(f"field {key!r} is not valid JSON ({e.msg}): {value[:80]!r}") from None
        if not isinstance(value, list):
            raise self.error(f"field {key!r} should be a list, got {type(value).__name__}")
        return value


def resolve_path(path: str | None, kind: str) -> Path:
    """The configured file, or ``DataFormatError("<kind> file not found: PATH")``."""
    if not path:
        raise DataFormatError(f"no {kind} path configured")
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise DataFormatError(f"{kind} file not found: {p}")
    return p


def open_binary(path: Path) -> IO[bytes]:
    """Open a file for reading, transparently gunzipping ``*.gz`` (DPR ships psgs_w100.tsv.gz)."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def iter_lines(path: Path, replace_errors: bool = False) -> Iterator[str]:
    """Stream decoded lines, line ends kept; a UTF-8 byte-order mark before the first line is
    dropped (editors on Windows write one, and it would glue itself to the first header name).
    Decoding per line lets a bad byte be reported with its line number; ``replace_errors``
    turns bad bytes into U+FFFD instead and logs how many lines had them."""
    replaced = 0
    try:
        with open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    if not replace_errors:
                        raise DataFormatError(
                            f"{path}: line {lineno}: not valid UTF-8 (bad byte at column {e.start + 1}); "
                            "re-encode the file as UTF-8"
                        ) from None
                    replaced += 1
                    yield raw.decode("utf-8", "replace")
    finally:
        if replaced:
            log.warning("%s: replaced undecodable bytes with U+FFFD on %d lines", path, replaced)


def split_tsv_line(line: str) -> list[str]:
    """The tab-separated fields of one line (line end stripped), unquoted as the csv module's
    default dialect writes them and DPR's psgs_w100.tsv has them: a field that starts with
    ``"`` runs to the matching ``"``, with ``""`` inside for a quote; a quote elsewhere in a
    field is literal (raw-written cells such as PopQA's JSON lists).

    A row is one line. A quoted field that is not closed on its line is an error, never a
    field that runs on into the next lines as csv would read it: an unbalanced quote would
    swallow the rows after it into one passage, and such a swallowed row boundary cannot be
    told from a newline inside a field. Fields have no size limit (csv's is 131,072 characters).

    Raises ``ValueError`` naming the column (1-based) of a quote not closed on the line, or
    of text after a closing quote.
    """
    line = line.rstrip("\r\n")
    if '"' not in line:  # the fast path: most rows quote nothing
        return line.split("\t")
    fields: list[str] = []
    pos, end = 0, len(line)
    while True:
        if line.startswith('"', pos):
            close = line.find('"', pos + 1)
            while close >= 0 and line.startswith('"', close + 1):  # a doubled quote inside
                close = line.find('"', close + 2)
            if close < 0:
                raise ValueError(
                    f"column {len(fields) + 1} opens a quote that is not closed on this line (unbalanced quote?)"
                )
            fields.append(line[pos + 1 : close].replace('""', '"'))
            pos = close + 1
            if pos == end:
                return fields
            if line[pos] != "\t":
                raise ValueError(f"column {len(fields)} has text after its closing quote (unbalanced quote?)")
            pos += 1
        else:
            tab = line.find("\t", pos)
            if tab < 0:
                fields.append(line[pos:])
                return fields
            fields.append(line[pos:tab])
            pos = tab + 1


def read_records(path: Path) -> Iterator[Record]:
    """Rows of a JSON list, a JSONL file, or a TSV with a header (chosen by extension and content)."""
    suffix = Path(path.name.removesuffix(".gz")).suffix.lower()
    if suffix == ".tsv":
        return _tsv_records(path)
    if suffix == ".jsonl":
        return _jsonl_records(path)
    return _json_records(path)


def _json_records(path: Path) -> Iterator[Record]:
    with open_binary(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not valid UTF-8 (bad byte at offset {e.start})") from None
    try:
        data = json_loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            # JSON Lines under a .json name (2Wiki's id_aliases.json is one)
            return _jsonl_records(path)
        raise DataFormatError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of records at the top level, got {type(data).__name__}")
    return (_record(str(path), f"index {i}", row) for i, row in enumerate(data))


def _jsonl_records(path: Path) -> Iterator[Record]:
    for lineno, line in enumerate(iter_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json_loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}: line {lineno}: invalid JSON at column {e.colno}: {e.msg}") from None
        yield _record(str(path), f"line {lineno}", row)


def _tsv_records(path: Path) -> Iterator[Record]:
    """Rows of a TSV whose first line names the columns (any order; PopQA's popQA.tsv)."""
    header: list[str] | None = None
    for lineno, line in enumerate(iter_lines(path), 1):
        if not line.strip("\r\n"):
            continue
        try:
            fields = split_tsv_line(line)
        except ValueError as e:
            raise DataFormatError(f"{path}: line {lineno}: {e}") from None
        if header is None:
            header = [name.strip() for name in fields]
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise DataFormatError(f"{path}: line {lineno}: header repeats column {repeated[0]!r}")
            continue
        if len(fields) != len(header):
            raise DataFormatError(
                f"{path}: line {lineno}: expected {len(header)} tab-separated columns, got {len(fields)}"
            )
        yield Record(str(path), f"line {lineno}", dict(zip(header, fields)))


def _record(source: str, where: str, row: Any) -> Record:
    if not isinstance(row, dict):
        raise DataFormatError(f"{source}: {where}: expected a JSON object, got {type(row).__name__}")
    return Record(source, where, row)
