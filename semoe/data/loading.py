"""Entry points for questions and passages, plus the file readers every source shares.

Every reader reports a bad input as one :class:`DataFormatError` naming the file and the
place (line or list index) of the problem, so a truncated download or a wrong column
reads as one sentence instead of a KeyError traceback from deep inside a stage.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from semoe.config import ConfigError, CorpusConfig, DatasetConfig
from semoe.data import CORPORA, DATASETS, DataContext
from semoe.data.schema import DataFormatError, Example, Passage

# Bump when a corpus reader changes how a file maps to passages, so old indexes are not reused.
_CORPUS_READER_VERSION = 1
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


def iter_passages(cfg: CorpusConfig, ctx: DataContext) -> Iterator[Passage]:
    """Stream the corpus (first ``limit`` passages); the reader is closed when the limit is hit.
    A passage with empty text, or an id seen before, is a :class:`DataFormatError`."""
    reader = CORPORA.get(cfg.format)
    return _checked(_limited(reader(cfg, ctx), cfg.limit), cfg, ctx)


def _id_hash(pid: str) -> int:
    return int.from_bytes(hashlib.blake2b(pid.encode(), digest_size=8).digest(), "little")


def _checked(passages: Iterator[Passage], cfg: CorpusConfig, ctx: DataContext) -> Iterator[Passage]:
    """Empty passages fail at once; duplicate ids at the end of the stream, found among
    8-byte id hashes (170 MB for DPR's 21M passages, where a set of the ids would take
    gigabytes), then named by a second pass over the file."""
    import array

    import numpy as np

    where = f"corpus {cfg.path or cfg.format}"
    hashes = array.array("Q")
    try:
        for p in passages:
            if not p.text.strip():
                raise DataFormatError(f"{where}: passage {p.id!r} has empty text")
            hashes.append(_id_hash(p.id))
            yield p
    finally:
        passages.close()
    values, counts = np.unique(np.frombuffer(hashes, dtype=np.uint64), return_counts=True)
    repeated = set(values[counts > 1].tolist())
    if repeated:
        first = next(p.id for p in _limited(CORPORA.get(cfg.format)(cfg, ctx), cfg.limit) if _id_hash(p.id) in repeated)
        more = f" (and {len(repeated) - 1} more ids)" if len(repeated) > 1 else ""
        raise DataFormatError(f"{where}: duplicate passage id {first!r}{more}; passage ids must be unique")


def _limited(passages: Iterator[Passage], limit: int | None) -> Iterator[Passage]:
    try:
        yield from itertools.islice(passages, limit)
    finally:
        close = getattr(passages, "close", None)
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
        from semoe.data.synthetic import passage_identity

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

    def json_list(self, key: str) -> list:
        """A list field, also when stored as a JSON string (PopQA's TSV columns)."""
        value = self.get(key, [])
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
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
    """Stream decoded lines; decoding per line lets a bad byte be reported with its line number."""
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if not replace_errors:
                    raise DataFormatError(
                        f"{path}: line {lineno}: not valid UTF-8 (bad byte at column {e.start + 1}); "
                        "re-encode the file as UTF-8"
                    ) from None
                yield raw.decode("utf-8", "replace")


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
        data = json.loads(text)
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
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}: line {lineno}: invalid JSON at column {e.colno}: {e.msg}") from None
        yield _record(str(path), f"line {lineno}", row)


def _tsv_records(path: Path) -> Iterator[Record]:
    reader = csv.DictReader(iter_lines(path), delimiter="\t")
    try:
        for row in reader:
            where = f"line {reader.line_num}"
            if None in row or None in row.values():
                raise DataFormatError(f"{path}: {where}: expected {len(reader.fieldnames or [])} tab-separated columns")
            yield Record(str(path), where, row)
    except csv.Error as e:
        raise DataFormatError(f"{path}: line {reader.line_num}: {e}") from None


def _record(source: str, where: str, row: Any) -> Record:
    if not isinstance(row, dict):
        raise DataFormatError(f"{source}: {where}: expected a JSON object, got {type(row).__name__}")
    return Record(source, where, row)
