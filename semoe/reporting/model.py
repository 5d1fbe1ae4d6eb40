"""The report model: tables, plots and sections of one run's report, and how cells show values."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Sequence

# Column headers in tables and axis labels in plots.
LABELS = {
    "n": "n",
    "em": "EM",
    "f1": "F1",
    "em_lo": "EM lo",
    "em_hi": "EM hi",
    "f1_lo": "F1 lo",
    "f1_hi": "F1 hi",
    "recall_retrieved": "recall (retrieved)",
    "recall_all": "recall (all)",
    "question_type": "type",
    "method_a": "A",
    "method_b": "B",
    "f1_diff": "F1 A−B",
    "f1_diff_lo": "lo",
    "f1_diff_hi": "hi",
    "f1_p": "F1 p",
    "em_diff": "EM A−B",
    "em_diff_lo": "lo",
    "em_diff_hi": "hi",
    "em_p": "EM p",
    "retrievals": "retrievals",
    "retrievals_per_question": "retrievals/q",
    "seconds_per_question": "s/q",
    "retrieve_seconds_per_question": "retrieve s/q",
    "generate_seconds_per_question": "generate s/q",
    "experts_seconds_per_question": "experts s/q",
    "total_seconds": "total s",
    "generations_per_question": "generations/q",
    "prompt_tokens_per_question": "prompt tokens/q",
    "generated_tokens_per_question": "generated tokens/q",
    "total_tokens": "total tokens",
    "experts_used": "experts",
    "expert_bytes": "expert bytes",
    "expert_bytes_per_question": "expert bytes/q",
    "experts_per_token": "experts/token",
    "qa_em": "QA EM",
    "qa_f1": "QA F1",
    "qa_n": "QA n",
    "tokens_per_s": "tokens/s",
    "decode_tokens_per_s": "decode tokens/s",
    "peak_memory_mib": "peak MiB",
}


@dataclass
class Table:
    columns: Sequence[str]
    rows: list[dict]
    caption: str = ""
    notes: list[str] = field(default_factory=list)  # footnotes, cited in cells as [1], [2], ...

    def cells(self) -> list[list[str]]:
        return [[format_value(r[c]) for c in self.columns] for r in self.rows]


@dataclass
class Plot:
    name: str  # file stem
    title: str
    png: bytes

    @property
    def filename(self) -> str:
        return f"{self.name}.png"

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


@dataclass
class Section:
    title: str
    tables: list[Table] = field(default_factory=list)
    plot: Plot | None = None
    note: str = ""
    figures: list[Plot] = field(default_factory=list)  # more images after the tables (routing heatmaps)


@dataclass
class Report:
    run_id: str
    title: str
    facts: list[tuple[str, str]]
    sections: list[Section]

    @property
    def plots(self) -> list[Plot]:
        return [p for s in self.sections for p in ([s.plot] if s.plot is not None else []) + s.figures]


def format_value(v) -> str:
    """Cells show the views' (already rounded) values exactly, so they match SQL."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if v != v else format(v, ".10g")
    return str(v)
