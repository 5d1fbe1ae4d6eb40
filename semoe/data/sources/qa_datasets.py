"""Loaders for the public QA benchmarks used by DRAGIN/PRAG-style RAG evaluation.

Each reads the dataset's native local file (``cfg.path``) or, for online users, the HF hub
(``cfg.hf_id``), and maps both to the same :class:`Example`: gold answer first, then
aliases, so EM/F1 credit any accepted surface form as the original evaluation scripts do.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

from semoe.config import ConfigError, DatasetConfig
from semoe.data import DATASETS, DataContext
from semoe.data.loading import Record, as_text, read_records, resolve_path
from semoe.data.schema import Example

log = logging.getLogger(__name__)


def dataset_records(cfg: DatasetConfig) -> Iterator[Record]:
    """Rows from the local file when ``path`` is set, else from the HF hub."""
    if cfg.path:
        return read_records(resolve_path(cfg.path, "dataset"))
    if cfg.hf_id:
        return _hub_records(cfg)
    raise ConfigError(f"dataset {cfg.display_name!r} needs `path` (a local file) or `hf_id` (an HF hub dataset)")


def _hub_records(cfg: DatasetConfig) -> Iterator[Record]:
    import datasets

    rows = datasets.load_dataset(cfg.hf_id, cfg.options.get("hf_config"), split=cfg.split)
    source = f"hf:{cfg.hf_id}[{cfg.split}]"
    for i, row in enumerate(rows):
        yield Record(source, f"index {i}", dict(row))


def unique_strings(values: Iterable[Any]) -> list[str]:
    """Non-empty strings in first-seen order: numbers as the file wrote them, booleans as
    yes/no (:func:`~semoe.data.loading.as_text`); ``TypeError`` for a list or object."""
    out: list[str] = []
    for v in values:
        if v is None:
            continue
        s = as_text(v).strip()
        if s and s not in out:
            out.append(s)
    return out


def make_example(
    rec: Record,
    cfg: DatasetConfig,
    *,
    id: Any,
    answers: Iterable[Any],
    type: str = "",
    gold_titles: Iterable[Any] = (),
    meta: dict | None = None,
    question_field: str = "question",
) -> Example:
    """One :class:`Example` from a row: the question from ``question_field``, ``answers`` gold
    first then aliases (at least one usable), every problem an error naming the row."""
    question = rec.req(question_field)
    if not isinstance(question, str) or not question.strip():
        raise rec.error(f"field {question_field!r} is empty or not a string")
    gold = _strings(rec, "answer", answers)
    if not gold:
        raise rec.error("no usable answer")
    try:
        ex_id = as_text(id)
    except TypeError as e:
        raise rec.error(f"id: {e}") from None
    return Example(
        id=ex_id,
        question=question.strip(),
        answers=gold,
        dataset=cfg.display_name,
        type=str(type or ""),
        gold_titles=_strings(rec, "gold title", gold_titles),
        meta={k: v for k, v in (meta or {}).items() if v is not None},
    )


def _strings(rec: Record, what: str, values: Iterable[Any]) -> list[str]:
    try:
        return unique_strings(values)
    except TypeError as e:
        raise rec.error(f"{what}: {e}") from None


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def supporting_titles(rec: Record) -> list[str]:
    """Titles from ``[[title, sent_id], ...]``, a plain title list, or the hub's ``{title: [...]}``."""
    facts = rec.get("supporting_facts", [])
    if isinstance(facts, dict):
        return list(facts.get("title", []))
    titles = []
    for fact in facts:
        if isinstance(fact, str):
            titles.append(fact)
        elif isinstance(fact, (list, tuple)) and fact:
            titles.append(fact[0])
        else:
            raise rec.error(f"supporting fact {fact!r} is neither a title nor [title, sentence_id]")
    return titles


def _multihop_example(rec: Record, cfg: DatasetConfig, aliases: dict[str, list[str]]) -> Example:
    """HotpotQA and 2Wiki (which reuses HotpotQA's layout; its open-retrieval variant too)."""
    answer_id = rec.get("answer_id")
    return make_example(
        rec,
        cfg,
        id=rec.req("_id", "id"),
        answers=[rec.req("answer"), *rec.json_list("answer_aliases"), *aliases.get(answer_id, [])],
        type=rec.get("type", ""),
        gold_titles=supporting_titles(rec),
        meta={"answer_id": answer_id, "level": rec.get("level"), "evidences": rec.get("evidences")},
    )


def _twowiki_aliases(cfg: DatasetConfig) -> dict[str, list[str]] | None:
    """``answer_id`` → aliases + demonyms from id_aliases.json, as the official 2Wiki scorer
    uses; None when there is no such file (``options.aliases_path``, else beside ``dev.json``)."""
    configured = cfg.options.get("aliases_path")
    if configured:
        path = resolve_path(configured, "dataset")
    elif cfg.path and (sibling := _aliases_beside(cfg.path)).is_file():
        path = sibling
    else:
        return None
    table: dict[str, list[str]] = {}
    for rec in read_records(path):
        table[rec.text("Q_id")] = [*rec.json_list("aliases"), *rec.json_list("demonyms")]
    return table


def _aliases_beside(dataset_path: str) -> Path:
    return Path(dataset_path).expanduser().resolve().parent / "id_aliases.json"


_WARNED_NO_ALIASES: set[Path] = set()


@DATASETS.register(
    "2wikimultihopqa", "2WikiMultihopQA dev.json (+ id_aliases.json) or the open-retrieval question file"
)
def load_2wikimultihopqa(cfg: DatasetConfig, ctx: DataContext) -> list[Example]:
    """A native ``dev.json`` (records with ``answer_id``) without ``id_aliases.json`` beside it
    loads with the gold answers only, and says so once per file and process: EM/F1 then
    credit fewer surface forms than the official scorer."""
    aliases = _twowiki_aliases(cfg)
    records = list(dataset_records(cfg))
    if aliases is None:
        aliases = {}
        expected = _aliases_beside(cfg.path) if cfg.path else None
        if expected and expected not in _WARNED_NO_ALIASES and any(r.get("answer_id") for r in records):
            _WARNED_NO_ALIASES.add(expected)
            log.warning(
                "%s: no %s beside it, so the answers have no aliases (the official 2Wiki scorer uses them); "
                "put the file there or set the dataset's options.aliases_path",
                cfg.path,
                expected,
            )
    return [_multihop_example(rec, cfg, aliases) for rec in records]


@DATASETS.register("hotpotqa", "HotpotQA distractor/fullwiki JSON (questions with answers)")
def load_hotpotqa(cfg: DatasetConfig, ctx: DataContext) -> list[Example]:
    return [_multihop_example(rec, cfg, {}) for rec in dataset_records(cfg)]


def _count(value: Any) -> Any:
    """A popularity count as an int when the file wrote one (``142``, or "142" in the TSV);
    anything else as it came: never truncated (``int(142.7)`` is 142), and only the counts,
    so a subject named "1984" stays text."""
    if isinstance(value, str) and value.strip().removeprefix("-").isdigit():
        return int(value)
    return value


@DATASETS.register("popqa", "PopQA popQA.tsv (or the same columns as a JSON list)")
def load_popqa(cfg: DatasetConfig, ctx: DataContext) -> list[Example]:
    """Gold is ``obj``, its aliases, then the other ``possible_answers`` (other valid objects of a
    multi-valued relation), which is what PopQA's own accuracy accepts."""
    examples = []
    for rec in dataset_records(cfg):
        paragraphs = rec.get("paragraphs")
        if paragraphs is not None:
            titles = [p.get("title") for p in paragraphs if isinstance(p, dict) and p.get("is_supporting")]
        else:
            titles = [rec.get("s_wiki_title"), rec.get("o_wiki_title")]
        examples.append(
            make_example(
                rec,
                cfg,
                id=rec.req("id"),
                answers=[rec.req("obj"), *rec.json_list("o_aliases"), *rec.json_list("possible_answers")],
                type=rec.get("prop", ""),
                gold_titles=titles,
                meta={
                    "subj": rec.get("subj"),
                    "obj": rec.get("obj"),
                    "s_pop": _count(rec.get("s_pop")),
                    "o_pop": _count(rec.get("o_pop")),
                },
            )
        )
    return examples


def _cwq_answers(rec: Record) -> list:
    """Main answers first, then their aliases: ``[{answer, aliases}]``, the hub's dict of lists,
    or a plain list of strings."""
    value = rec.req("answers", "answer")
    if isinstance(value, dict):
        return [*as_list(value.get("answer", [])), *(a for al in value.get("aliases", []) for a in as_list(al))]
    main, aliases = [], []
    for item in as_list(value):
        if isinstance(item, dict):
            main.append(item.get("answer"))
            aliases.extend(as_list(item.get("aliases") or []))
        else:
            main.append(item)
    return main + aliases


@DATASETS.register("cwq", "ComplexWebQuestions JSON (original `answers` records or `{test_id, question, answer}`)")
def load_cwq(cfg: DatasetConfig, ctx: DataContext) -> list[Example]:
    return [
        make_example(
            rec,
            cfg,
            id=rec.req("ID", "test_id", "id"),
            answers=_cwq_answers(rec),
            type=rec.get("compositionality_type", ""),
            meta={"webqsp_id": rec.get("webqsp_ID")},
        )
        for rec in dataset_records(cfg)
    ]


@DATASETS.register("custom", "any JSON list or JSONL of {question, answer (string or list)[, id, type]}")
def load_custom(cfg: DatasetConfig, ctx: DataContext) -> list[Example]:
    """Ids default to the row's position so NQ-open style files without ids load as they are."""
    return [
        make_example(
            rec,
            cfg,
            id=rec.get("id", i),
            answers=as_list(rec.req("answer", "answers")),
            type=rec.get("type", ""),
        )
        for i, rec in enumerate(dataset_records(cfg))
    ]
