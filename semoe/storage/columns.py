"""What the printed and stored QA columns mean: one table, used by the report's "Columns"
section, ``semoe columns`` and the README (``tests/test_columns.py`` keeps the README's copy equal).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    meaning: str
    unit: str


_CI = "percentile bootstrap 95 % interval over questions (9,999 resamples, seed 0); NULL when fewer than 2 values"

COLUMNS: tuple[Column, ...] = (
    Column("n", "questions scored (error rows included, scored 0)", "questions"),
    Column("em", "exact match after SQuAD/HotpotQA normalisation, best over the gold answers, averaged", "fraction"),
    Column("f1", "token F1 after SQuAD/HotpotQA normalisation, best over the gold answers, averaged", "fraction"),
    Column("em_lo, em_hi", f"EM: {_CI}", "fraction"),
    Column("f1_lo, f1_hi", f"F1: {_CI}", "fraction"),
    Column(
        "recall",
        "per prediction: recall@k of the gold passages (ids, else titles) among every passage the answer "
        "retrieved; NULL when it retrieved nothing or the question names no gold passage",
        "fraction",
    ),
    Column(
        "recall_retrieved",
        "recall@k averaged over the questions that retrieved at least once (the leaderboard's `recall` "
        "before schema version 8)",
        "fraction",
    ),
    Column(
        "recall_all",
        "recall@k averaged over every question with gold passages, a question that retrieved nothing counting 0; "
        "NULL for runs scored before schema version 8",
        "fraction",
    ),
    Column("recall_retrieved_lo, recall_retrieved_hi", f"recall_retrieved: {_CI}", "fraction"),
    Column("recall_all_lo, recall_all_hi", f"recall_all: {_CI}", "fraction"),
    Column("retrievals_per_question", "retrieval steps per question (each step retrieves top-k passages)", "count"),
    Column(
        "seconds_per_question",
        "latency of one question inside its batch (retrieval + generation + passage experts), not wall time: "
        "a batch's time is shared among its questions; depends on threads and hardware",
        "s",
    ),
    Column("errors", "questions with no answer (e.g. over the model's context), scored 0", "questions"),
    Column("truncated", "questions whose prompt was cut to fit the context", "questions"),
    Column("question_type", "the dataset's question type (e.g. bridge, comparison, compositional, inference)", ""),
    Column("retrievals", "number of retrieval steps a question took (accuracy_by_retrievals)", "count"),
    Column("method_a, method_b", "the two methods compared, on the questions both answered", ""),
    Column("f1_diff, em_diff", "mean over questions of method_a's score minus method_b's", "fraction"),
    Column(
        "f1_diff_lo, f1_diff_hi, em_diff_lo, em_diff_hi",
        "paired bootstrap 95 % interval of the difference (questions resampled, percentile, 9,999 resamples)",
        "fraction",
    ),
    Column(
        "f1_p, em_p",
        "two-sided paired permutation test p-value (signs of the per-question differences flipped; exact "
        "for n ≤ 13, else 9,999 random flips); not corrected for multiple comparisons",
        "probability",
    ),
)


def column_rows(names: set[str] | None = None) -> list[dict]:
    """Definitions as rows ``{column, meaning, unit}``; with ``names``, only the entries that
    define one of them."""
    return [
        {"column": c.name, "meaning": c.meaning, "unit": c.unit}
        for c in COLUMNS
        if names is None or names & set(c.name.split(", "))
    ]


def markdown_table(rows: list[dict] | None = None) -> str:
    """The definitions as a markdown table (the README's, the report's)."""
    lines = ["| column | meaning | unit |", "|---|---|---|"]
    lines += [f"| `{r['column']}` | {r['meaning']} | {r['unit']} |" for r in rows or column_rows()]
    return "\n".join(lines) + "\n"
