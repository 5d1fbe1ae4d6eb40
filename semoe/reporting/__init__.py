"""Run reports: what one run measured, as markdown and self-contained HTML with PNG plots.

Every number comes from the store's views (``leaderboard``, ``leaderboard_by_type``,
``accuracy_by_retrievals``, ``cost_by_method``, ``routing_by_k``), so a report says exactly
what SQL over the store says; the paired comparisons are computed from the run's
per-question scores in ``predictions`` (``semoe.stats``). The questions: how accuracy moves
with retrievals per question, per question type, whether one method's lead over another is
more than noise, how accuracy moves with experts per token (routing runs), and what each
method costs; a last section defines every column. Free of Prefect; the ``evaluate`` flow
attaches the same markdown as an artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from semoe.reporting.cost import COST_COLUMNS, cost_section
from semoe.reporting.model import LABELS, Plot, Report, Section, Table, format_value
from semoe.reporting.plots import PLOT_DPI, plot_accuracy_vs_experts, plot_accuracy_vs_retrievals, plot_cost
from semoe.reporting.qa import (
    BY_RETRIEVALS_COLUMNS,
    BY_TYPE_CAPTION,
    BY_TYPE_COLUMNS,
    LEADERBOARD_CAPTION,
    LEADERBOARD_COLUMNS,
    PAIRED_CAPTION,
    PAIRED_COLUMNS,
    PAIRED_METRICS,
    QATables,
    accuracy_section,
    analysis_sections,
    paired_comparisons,
)
from semoe.reporting.render import ARTIFACT_IMAGE_MAX_BYTES, HTML_STYLE, to_html, to_markdown
from semoe.reporting.routing import (
    BH_SOFTMAX_NOTE,
    QA_NOT_CONFIGURED,
    ROUTING_COLUMNS,
    routing_section,
    routing_table,
)
from semoe.reporting.runs import UnknownRunError, resolve_run_id, run_facts
from semoe.reporting.write import REPORT_FORMATS, WrittenReport, default_report_dir, write_report
from semoe.storage.columns import column_rows
from semoe.storage.results import ResultStore
from semoe.storage.views import open_current

__all__ = [
    "ARTIFACT_IMAGE_MAX_BYTES",
    "BH_SOFTMAX_NOTE",
    "BY_RETRIEVALS_COLUMNS",
    "BY_TYPE_CAPTION",
    "BY_TYPE_COLUMNS",
    "COST_COLUMNS",
    "HTML_STYLE",
    "LABELS",
    "LEADERBOARD_CAPTION",
    "LEADERBOARD_COLUMNS",
    "PAIRED_CAPTION",
    "PAIRED_COLUMNS",
    "PAIRED_METRICS",
    "PLOT_DPI",
    "QA_NOT_CONFIGURED",
    "REPORT_FORMATS",
    "ROUTING_COLUMNS",
    "Plot",
    "QATables",
    "Report",
    "Section",
    "Table",
    "UnknownRunError",
    "WrittenReport",
    "build_report",
    "default_report_dir",
    "format_value",
    "paired_comparisons",
    "plot_accuracy_vs_experts",
    "plot_accuracy_vs_retrievals",
    "plot_cost",
    "resolve_run_id",
    "routing_table",
    "to_html",
    "to_markdown",
    "write_report",
    "write_run_report",
]


def build_report(store: ResultStore, run_id: str) -> Report:
    """Query the store's views for one run and draw the plots (in memory)."""
    run_id = resolve_run_id(store, run_id)
    where = "WHERE run_id = ? ORDER BY dataset, method"
    qa = QATables.of(store, run_id)
    board = qa.leaderboard
    by_retrievals = store.query(f"SELECT * FROM accuracy_by_retrievals {where}, retrievals", [run_id])
    cost = store.query(f"SELECT * FROM cost_by_method {where}", [run_id])
    routing = store.query(  # the view's numbers, with the cells' notes and params beside them
        "SELECT v.*, r.qa_note, r.qa_dataset, r.policy_params FROM routing_by_k v"
        " JOIN routing_runs r USING (run_id, model, policy_key, mode)"
        " WHERE v.run_id = ? ORDER BY model, policy, mode, experts_per_token",
        [run_id],
    )
    title, facts = run_facts(store, run_id, list(dict.fromkeys(r["model"] for r in routing)))
    # A section only where the run has its rows: a routing-only or QA-only run shows no empty section.
    sections = []
    if board:
        sections += [accuracy_section(run_id, board, by_retrievals), *analysis_sections(qa)]
    if routing:
        sections.append(routing_section(run_id, routing))
    if cost:
        sections.append(cost_section(run_id, cost))
    if not sections:
        sections = [Section("Results", note=f"No predictions or routing data stored for run `{run_id}`.")]
    return Report(run_id, title, facts, sections + _columns_section(sections))


def _columns_section(sections: Sequence[Section]) -> list[Section]:
    """Definitions of the columns the report's tables show (``semoe.storage.columns``), if any."""
    rows = column_rows({c for s in sections for t in s.tables for c in t.columns})
    return [Section("Columns", [Table(("column", "meaning", "unit"), rows)])] if rows else []


def write_run_report(
    store_path: str | Path, run_id: str, out_dir: str | Path | None = None, formats: Sequence[str] = REPORT_FORMATS
) -> WrittenReport:
    """Build the report of ``run_id`` (exact or unique prefix) from the store and write it to
    ``out_dir`` (default ``<store dir>/reports/<run id>``)."""
    store = open_current(store_path)
    report = build_report(store, run_id)
    paths = write_report(report, out_dir or default_report_dir(store.path, report.run_id), formats)
    return WrittenReport(report, paths)
