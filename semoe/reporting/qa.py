"""The QA sections: accuracy vs retrievals, per question type, and paired comparisons of methods."""

from __future__ import annotations

from dataclasses import dataclass

from semoe.reporting.model import Section, Table
from semoe.reporting.plots import plot_accuracy_vs_retrievals
from semoe.stats import paired_difference
from semoe.storage.results import ResultStore

LEADERBOARD_COLUMNS = (
    "dataset",
    "method",
    "n",
    "em",
    "em_lo",
    "em_hi",
    "f1",
    "f1_lo",
    "f1_hi",
    "recall_retrieved",
    "recall_all",
    "retrievals_per_question",
    "seconds_per_question",
)
BY_TYPE_COLUMNS = ("dataset", "question_type", "method", "n", "em", "em_lo", "em_hi", "f1", "f1_lo", "f1_hi")
PAIRED_METRICS = ("f1", "em")
PAIRED_COLUMNS = (
    "dataset",
    "method_a",
    "method_b",
    "n",
    *(f"{m}_{part}" for m in PAIRED_METRICS for part in ("diff", "diff_lo", "diff_hi", "p")),
)
BY_RETRIEVALS_COLUMNS = ("dataset", "method", "retrievals", "n", "em", "f1")


def paired_comparisons(store: ResultStore, run_id: str) -> list[dict]:
    """Every pair of methods of ``run_id`` on each dataset, A before B in method order: on the
    questions both answered (by example id), A's mean F1 and EM minus B's with a paired
    bootstrap 95 % interval and a paired permutation p-value (``semoe.stats.paired_difference``),
    rounded as the views round."""
    rows = store.query(
        "SELECT dataset, method, example_id, em, f1 FROM predictions WHERE run_id = ? ORDER BY dataset, method",
        [run_id],
    )
    scores: dict[str, dict[str, dict[str, dict]]] = {}
    for r in rows:
        scores.setdefault(r["dataset"], {}).setdefault(r["method"], {})[r["example_id"]] = r
    out = []
    for dataset, by_method in scores.items():
        methods = list(by_method)
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                common = sorted(by_method[a].keys() & by_method[b].keys())
                row = {"dataset": dataset, "method_a": a, "method_b": b, "n": len(common)}
                for metric in PAIRED_METRICS:
                    d = paired_difference(
                        [by_method[a][q][metric] for q in common], [by_method[b][q][metric] for q in common]
                    )
                    row |= {
                        f"{metric}_{part}": None if value is None else round(value, 4)
                        for part, value in (
                            ("diff", d.mean_diff),
                            ("diff_lo", d.lo),
                            ("diff_hi", d.hi),
                            ("p", d.p_value),
                        )
                    }
                out.append(row)
    return out


@dataclass
class QATables:
    """The QA analysis of one run: per method with intervals, per question type, paired."""

    leaderboard: list[dict]
    by_type: list[dict]
    paired: list[dict]

    @classmethod
    def of(cls, store: ResultStore, run_id: str) -> "QATables":
        where = "WHERE run_id = ? ORDER BY dataset, method"
        return cls(
            store.query(f"SELECT * FROM leaderboard {where}", [run_id]),
            store.query(
                "SELECT * FROM leaderboard_by_type WHERE run_id = ? ORDER BY dataset, question_type, method", [run_id]
            ),
            paired_comparisons(store, run_id),
        )

    def tables(self) -> dict[str, Table]:
        """The three tables by name, with captions (the CLI's `semoe compare`, the report's sections)."""
        return {
            "leaderboard": Table(LEADERBOARD_COLUMNS, self.leaderboard, LEADERBOARD_CAPTION),
            "by_type": Table(BY_TYPE_COLUMNS, self.by_type, BY_TYPE_CAPTION),
            "paired": Table(PAIRED_COLUMNS, self.paired, PAIRED_CAPTION),
        }


LEADERBOARD_CAPTION = "Per method (the `leaderboard` view); lo/hi: percentile bootstrap 95 % interval over questions."
BY_TYPE_CAPTION = "Per question type (the `leaderboard_by_type` view); lo/hi: bootstrap 95 % interval."
PAIRED_CAPTION = (
    "A minus B on the questions both answered: mean difference, paired bootstrap 95 % interval (lo, hi), "
    "paired permutation test p-value (two-sided; not corrected for multiple comparisons)."
)


def accuracy_section(run_id: str, board: list[dict], by_retrievals: list[dict]) -> Section:
    """The ``leaderboard`` and ``accuracy_by_retrievals`` rows of one run as tables, with their plot."""
    title = "Accuracy vs retrievals per question"
    if not board:
        return Section(title, note=f"No predictions stored for run `{run_id}`.")
    tables = [
        Table(LEADERBOARD_COLUMNS, board, LEADERBOARD_CAPTION),
        Table(
            BY_RETRIEVALS_COLUMNS,
            by_retrievals,
            "By the number of retrievals a question took (the `accuracy_by_retrievals` view).",
        ),
    ]
    return Section(title, tables, plot_accuracy_vs_retrievals(board, by_retrievals))


def analysis_sections(qa: QATables) -> list[Section]:
    """Per question type and paired comparisons; none for a run without predictions."""
    if not qa.leaderboard:
        return []
    tables = qa.tables()
    by_type, paired = tables["by_type"], tables["paired"]
    type_note = "" if qa.by_type else "The datasets of this run give no question types."
    pair_note = "" if qa.paired else "One method per dataset: nothing to compare."
    return [
        Section("Accuracy by question type", [by_type] if qa.by_type else [], note=type_note),
        Section("Paired comparisons", [paired] if qa.paired else [], note=pair_note),
    ]
