"""The unified records every loader produces and every stage consumes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Example:
    """One question. ``answers`` holds the gold answer first, then its aliases.

    Gold evidence is given as passage ids when the corpus is known (synthetic) or
    as titles (2Wiki/HotpotQA supporting facts); recall@k uses whichever exists.
    ``contexts``: passages the dataset file gives with the question (Self-RAG / Open-RAG
    JSONL ``ctxs``), in the file's order; they can serve as the question's retrieved
    passages without an index (``semoe.retrieval.provided``).
    """

    id: str
    question: str
    answers: list[str]
    dataset: str
    type: str = ""
    gold_passage_ids: list[str] = field(default_factory=list)
    gold_titles: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    contexts: list[Passage] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        contexts = [p if isinstance(p, Passage) else Passage(**p) for p in d.get("contexts", ())]
        return cls(**{**d, "contexts": contexts})


@dataclass(frozen=True)
class SkippedRow:
    """What a corpus reader yields instead of a passage for a malformed row it skipped
    (``skip_bad_rows``), so the stream can count it; ``problem`` names file and line."""

    problem: str


class DataFormatError(ValueError):
    """A dataset or corpus file is missing, malformed, or has an unusable row."""
