"""Entry points for questions and passages, plus the file readers every source shares.

Every reader reports a bad input as one :class:`DataFormatError` naming the file and the
place (line or list index) of the problem, so a truncated download or a wrong column
reads as one sentence instead of a KeyError traceback from deep inside a stage.
"""

from __future__ import annotations

import array
import codecs
import gzip
import hashlib
import itertools
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from semoe.config import ConfigError, CorpusConfig, DatasetConfig
from semoe.data import CORPORA, DATASETS, DataContext
from semoe.data.encyclopedia import passage_identity
from semoe.data.schema import DataFormatError, Example, Passage, SkippedRow
from semoe.progress import RateMeter

log = logging.getLogger(__name__)

# Bump when a corpus reader changes how a file maps to passages, so old indexes are not reused.
# 2: BOM-led TSV headers, one row per line with strict quoting, no field size limit, JSON
# numbers as written.
_CORPUS_READER_VERSION = 2
_SAMPLE_BYTES = 1 << 20
# Passages a preflight reads from the head of a corpus file (see check_corpus_head).
PREFLIGHT_PASSAGES = 1000


def load_examples(cfg: DatasetConfig, ctx: DataContext) -> list[Example]:
    """Load a dataset, then shuffle (seeded) and keep the first ``sample`` as DRAGIN/PRAG do,
    or the first ``sample_per_type[t]`` of each listed type ``t`` (``sample_by_type``)."""
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
    if cfg.sample_per_type is not None:
        examples = sample_by_type(examples, cfg.sample_per_type, cfg.display_name)
    return examples


def sample_by_type(examples: list[Example], wanted: dict[str, int], dataset: str) -> list[Example]:
    """The first ``wanted[t]`` examples of each type ``t`` (``Example.type``), in their order;
    types not in ``wanted`` are left out. A ``ConfigError`` naming every type that has fewer
    examples than asked (and the types the dataset has), never a smaller sample."""
    have = Counter(ex.type for ex in examples)
    short = [f"{t!r}: {n} asked, {have[t]} present" for t, n in wanted.items() if have[t] < n]
    if short:
        present = ", ".join(f"{t or '(none)'!r}: {n}" for t, n in sorted(have.items()))
        raise ConfigError(
            f"dataset {dataset!r}: sample_per_type asks for more questions than it has: {'; '.join(short)}"
            f" (its types: {present or 'none'})"
        )
    taken: Counter[str] = Counter()
    out = []
    for ex in examples:
        if taken[ex.type] < wanted.get(ex.type, 0):
            taken[ex.type] += 1
            out.append(ex)
    return out


def iter_passages(cfg: CorpusConfig, ctx: DataContext, progress: str | None = None) -> "PassageStream":
    """Stream the corpus (first ``limit`` passages); the reader is closed when the limit is hit.
    A passage with empty text, or an id seen before, is a :class:`DataFormatError` raised as
    soon as that row is read; rows the reader skipped (``skip_bad_rows``) are counted in
    ``.skipped_rows``. ``progress`` (a label, e.g. "tantivy index") shows how far through the
    file the stream is: a tqdm bar by bytes with rate and ETA, and an INFO log line a minute."""
    return PassageStream(cfg, ctx, progress)


def check_corpus_head(cfg: CorpusConfig, ctx: DataContext, n: int = PREFLIGHT_PASSAGES) -> int:
    """Read the first ``n`` passages of a corpus file through the same checked stream as
    indexing, so a wrong format, a malformed first row, an empty passage or an early
    duplicate id is one :class:`DataFormatError` (file, line or record, field) before any
    index, server or flow starts. A malformed row further on is left to the indexing stream:
    a 21M-row file is not read twice. Corpora without a file (synthetic) are not read.
    Returns the number of passages read."""
    if not cfg.path:
        return 0
    stream = iter_passages(cfg, ctx)
    try:
        return sum(1 for _ in itertools.islice(stream, n))
    finally:
        stream.close()


class ReadPosition:
    """How far a streaming file reader has got: the line last read and the bytes of the file
    consumed (compressed bytes for ``.gz``, so the fraction done is right for both).

    A reader that has one yields it before its first passage (see :class:`PassageStream`);
    :func:`iter_lines` keeps it current."""

    def __init__(self, path: Path):
        self.path = path
        self.size = path.stat().st_size
        self.line = 0
        self._file: IO[bytes] | None = None
        self._last = 0

    @property
    def bytes_read(self) -> int:
        return self._file.tell() if self._file is not None else self._last


class _HashSet:
    """A set of 64-bit ints (never 0) in one flat array: open addressing with linear probing,
    doubled at 3/4 load. 8 bytes a slot: DPR's 21M ids fill 2**25 slots = 268 MB (402 MB for
    the moment the table doubles), where a Python set of the ids takes several GB and one of
    their int hashes ~1.5 GB."""

    def __init__(self, bits: int = 10):
        self._mask = (1 << bits) - 1
        self._table = array.array("Q", [0]) * (1 << bits)
        self._count = 0

    def add(self, h: int) -> bool:
        """Add ``h``; True when it was already there."""
        table, mask = self._table, self._mask
        i = h & mask
        while v := table[i]:
            if v == h:
                return True
            i = (i + 1) & mask
        table[i] = h
        self._count += 1
        if self._count * 4 > mask * 3:
            self._grow()
        return False

    def _grow(self) -> None:
        # A plain loop: a few seconds at 12.6M ids, once per build, where numpy's sort-based
        # rebuild needs temporaries several times the table's size.
        old = self._table
        self._mask = mask = self._mask * 2 + 1
        self._table = table = array.array("Q", [0]) * (mask + 1)
        for h in old:
            if h:
                i = h & mask
                while table[i]:
                    i = (i + 1) & mask
                table[i] = h


_HASH_BITS = (1 << 64) - 1


def _slot_hash(pid: str) -> int:
    # Python's own str hash: 64 bits, computed in C (and cached on the string); salted per
    # process, which is all a check within one stream needs. 0 marks an empty slot.
    return hash(pid) & _HASH_BITS or 1


class PassageStream:
    """An iterator of checked passages that also counts the malformed rows a reader skipped.

    Readers yield :class:`SkippedRow` for a row dropped under ``skip_bad_rows``; the stream
    filters them out, counts them (``skipped_rows``, final once the stream is exhausted or
    closed) and logs the total once, so an index build can record how much of a file it lost.
    A file reader may first yield its :class:`ReadPosition`, which names lines in errors and
    drives the progress display.
    """

    def __init__(self, cfg: CorpusConfig, ctx: DataContext, progress: str | None = None):
        self.cfg, self.ctx = cfg, ctx
        self.skipped_rows = 0
        self._passages = self._checked(progress)

    def __iter__(self) -> Iterator[Passage]:
        return self._passages  # the generator itself: no Python-level __next__ per passage

    def __next__(self) -> Passage:
        return next(self._passages)

    def close(self) -> None:
        self._passages.close()

    def _read(self) -> Iterator[Passage | SkippedRow | ReadPosition]:
        items = CORPORA.get(self.cfg.format)(self.cfg, self.ctx)
        return items if self.cfg.limit is None else _limited(items, self.cfg.limit)

    def _checked(self, progress: str | None) -> Iterator[Passage]:
        """Empty passages and duplicate ids fail on the row that has them. Ids are checked by
        their 64-bit hash in a :class:`_HashSet`; a hash seen before is confirmed on the ids
        themselves (:meth:`_confirm`), so two ids that merely share a hash are never reported."""
        seen = _HashSet()
        shared: dict[int, dict[str, str]] = {}  # hash -> {id: where} for hashes seen more than once
        position: ReadPosition | None = None
        first_skipped: SkippedRow | None = None
        shown = _Progress(progress) if progress else None
        n = 0
        items = self._read()
        try:
            for p in items:
                if type(p) is not Passage:
                    if isinstance(p, ReadPosition):
                        position = p
                        if shown:
                            shown.start(p)
                    else:
                        self.skipped_rows += 1
                        first_skipped = first_skipped or p
                    continue
                n += 1
                if not p.text or p.text.isspace():
                    raise DataFormatError(
                        f"{self._source(position)}: {_place(position, n)}: passage {p.id!r} has empty text"
                    )
                h = _slot_hash(p.id)
                if seen.add(h):
                    self._confirm(shared, h, p.id, position, n)
                if shown and not n & 0xFFF:
                    shown.update(n)
                yield p
        finally:
            _close(items)
            if shown:
                shown.finish(n)
            if self.skipped_rows:
                log.warning("skipped %d malformed rows (the first: %s)", self.skipped_rows, first_skipped.problem)

    def _source(self, position: ReadPosition | None) -> str:
        return str(position.path) if position is not None else f"corpus {self.cfg.path or self.cfg.format}"

    def _confirm(
        self, shared: dict[int, dict[str, str]], h: int, pid: str, position: ReadPosition | None, n: int
    ) -> None:
        """``pid`` hashes like an earlier id: raise if it is that id, else remember both.
        The earlier id is found by reading the stream again up to it, which costs time only
        on a real duplicate (about to fail anyway) or a true 64-bit collision (~1e-5 odds
        over all of DPR's 21M ids)."""
        place = _place(position, n)
        ids = shared.get(h)
        if ids is None:
            ids = shared[h] = dict([self._first_with_hash(h)])
        if pid in ids:
            raise DataFormatError(
                f"{self._source(position)}: {place}: duplicate passage id {pid!r} (first at {ids[pid]}); "
                "passage ids must be unique"
            )
        ids[pid] = place

    def _first_with_hash(self, h: int) -> tuple[str, str]:
        """The first id with hash ``h`` and its place, from a fresh read of the stream."""
        position, n = None, 0
        items = self._read()
        try:
            for p in items:
                if isinstance(p, ReadPosition):
                    position = p
                elif isinstance(p, Passage):
                    n += 1
                    if _slot_hash(p.id) == h:
                        return p.id, _place(position, n)
        finally:
            _close(items)
        raise DataFormatError(f"corpus {self.cfg.path or self.cfg.format} changed while it was read")


def _place(position: ReadPosition | None, n: int) -> str:
    return f"line {position.line}" if position is not None else f"passage {n}"


def _close(items: Iterator) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()


class _Progress:
    """Progress of a stream through its file: a tqdm bar by bytes when stderr is a terminal, and
    a :class:`semoe.progress.RateMeter` line (bytes, rate, ETA) a minute for logs and the
    Prefect run log (``semoe`` is an extra logger there)."""

    LOG_EVERY_S = 60.0

    def __init__(self, label: str):
        self.label = label
        self.bar = None
        self.meter: RateMeter | None = None
        self.position: ReadPosition | None = None

    def start(self, position: ReadPosition) -> None:
        from tqdm import tqdm

        self.position = position
        self.meter = RateMeter(self.label, position.size, "B", log.info, every_s=self.LOG_EVERY_S)
        self.bar = tqdm(
            total=position.size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=self.label,
            mininterval=1.0,
            disable=None,
        )

    def update(self, n: int) -> None:
        if self.position is None:
            return
        done = self.position.bytes_read
        if not self.bar.disable:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(f"{n:,} passages", refresh=False)
        share = done / self.position.size if self.position.size else 1.0
        self.meter.update(done, f"{n:,} passages, {100 * share:.1f}% of {self.position.path.name}")

    def finish(self, n: int) -> None:
        if self.bar is not None:
            self.update(n)
            self.bar.close()


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
        _close(items)


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
    if cfg.dataset is not None:  # only when set, so the keys of existing corpora stay as they were
        parts["dataset"] = cfg.dataset
    if cfg.format == "synthetic":
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

    def as_text(self, value: Any, what: str) -> str:
        """A value found inside this row (a nested field) as text (:func:`as_text`); an error
        naming ``what`` when it is a list or object."""
        try:
            return as_text(value)
        except TypeError as e:
            raise self.error(f"{what}: {e}") from None

    def child(self, where: str, data: Any) -> "Record":
        """A nested object of this row (a question inside a passage, a ``metadata`` field) as a
        record whose errors name both places; an error when it is not an object."""
        if not isinstance(data, dict):
            raise self.error(f"{where} should be an object, got {type(data).__name__}")
        return Record(self.source, f"{self.where}: {where}", data)

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


def iter_lines(path: Path, replace_errors: bool = False, position: ReadPosition | None = None) -> Iterator[str]:
    """Stream decoded lines, line ends kept; a UTF-8 byte-order mark before the first line is
    dropped (editors on Windows write one, and it would glue itself to the first header name).
    Decoding per line lets a bad byte be reported with its line number; ``replace_errors``
    turns bad bytes into U+FFFD instead and logs how many lines had them. ``position``, when
    given, is kept at the line just yielded and the bytes of ``path`` read so far."""
    replaced = 0
    try:
        with open_binary(path) as f:
            on_disk = f.fileobj if isinstance(f, gzip.GzipFile) else f
            if position is not None:
                position._file = on_disk
            try:
                for lineno, raw in enumerate(f, 1):
                    if position is not None:
                        position.line = lineno
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
                if position is not None:  # where it stopped, read before the file closes
                    position._last, position._file = on_disk.tell(), None
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
    if '"' not in line:  # the fast path: most rows quote nothing
        fields = line.split("\t")
        fields[-1] = fields[-1].rstrip("\r\n")
        return fields
    # Bounds instead of copies: DPR quotes every text, so this is the common path at scale.
    end = len(line)
    while end and line[end - 1] in "\r\n":
        end -= 1
    fields: list[str] = []
    pos = 0
    while True:
        if line.startswith('"', pos, end):
            close = line.find('"', pos + 1, end)
            while close >= 0 and line.startswith('"', close + 1, end):  # a doubled quote inside
                close = line.find('"', close + 2, end)
            if close < 0:
                raise ValueError(
                    f"column {len(fields) + 1} opens a quote that is not closed on this line (unbalanced quote?)"
                )
            field = line[pos + 1 : close]
            fields.append(field.replace('""', '"') if '"' in field else field)
            pos = close + 1
            if pos == end:
                return fields
            if line[pos] != "\t":
                raise ValueError(f"column {len(fields)} has text after its closing quote (unbalanced quote?)")
            pos += 1
        else:
            tab = line.find("\t", pos, end)
            if tab < 0:
                fields.append(line[pos:end])
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
