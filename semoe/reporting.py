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

import base64
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from semoe.stats import paired_difference
from semoe.storage.columns import column_rows
from semoe.storage.results import ResultStore, StoreError
from semoe.storage.views import open_current

REPORT_FORMATS = ("md", "html")
# Plots larger than this are linked by path instead of inlined into the Prefect artifact.
ARTIFACT_IMAGE_MAX_BYTES = 256_000
PLOT_DPI = 90

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
COST_COLUMNS = (
    "dataset",
    "method",
    "n",
    "seconds_per_question",
    "retrieve_seconds_per_question",
    "generate_seconds_per_question",
    "experts_seconds_per_question",
    "retrievals_per_question",
    "prompt_tokens_per_question",
    "generated_tokens_per_question",
    "total_tokens",
    "experts_used",
    "expert_bytes",
    "expert_bytes_per_question",
)
ROUTING_COLUMNS = (
    "model",
    "policy",
    "setting",
    "mode",
    "experts_per_token",
    "perplexity",
    "qa_em",
    "qa_f1",
    "tokens_per_s",
    "decode_tokens_per_s",
    "peak_memory_mib",
)


class UnknownRunError(StoreError):
    """A run id (or prefix) that matches no run, or more than one."""


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


# ---------------------------------------------------------------- data


def resolve_run_id(store: ResultStore, run_id: str) -> str:
    """The full id of the evaluation or routing run that ``run_id`` names exactly or by unique prefix."""
    rows = store.query(
        "SELECT DISTINCT run_id FROM (SELECT run_id FROM runs UNION ALL SELECT run_id FROM routing_runs)"
        " WHERE starts_with(run_id, ?) ORDER BY run_id",
        [run_id],
    )
    ids = [r["run_id"] for r in rows]
    if run_id in ids:
        return run_id
    if len(ids) == 1:
        return ids[0]
    if ids:
        raise UnknownRunError(f"run id prefix {run_id!r} is ambiguous in {store.path}: {', '.join(ids)}")
    recent = store.query("SELECT run_id, name FROM runs ORDER BY started_at DESC NULLS LAST LIMIT 5")
    listed = ", ".join(f"{r['run_id']} ({r['name']})" for r in recent)
    hint = f"; recent runs: {listed}" if recent else "; it has no runs"
    raise UnknownRunError(f"no run {run_id!r} in {store.path}{hint}")


def _method_label(method: str | dict) -> str:
    """A stored config's method: a bare name (stores before methods had params), or a spec."""
    return method if isinstance(method, str) else method.get("label") or method["name"]


def _run_facts(store: ResultStore, run_id: str, routing_models: Sequence[str]) -> tuple[str, list[tuple[str, str]]]:
    """Title and header lines: the run row's status and identity, what an evaluation run
    answered with (from its config) when it has predictions, the models of a routing run."""
    run = store.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    facts: list[tuple[str, str]] = []
    title = f"semoe run `{run_id}`"
    if run:
        r = run[0]
        title += f" ({r['name']})"
        facts += [
            ("status", str(r["status"])),
            ("started", format_value(r["started_at"])),
            ("finished", format_value(r["finished_at"])),
            ("config hash", f"`{r['config_hash']}`"),
            ("code", f"`{r['code_version']}`"),
        ]
        if r["n_predictions"]:
            cfg = json.loads(r["config_json"])
            corpus, retrieval = cfg.get("corpus", {}), cfg.get("retrieval", {})
            facts += [
                ("predictions", format_value(r["n_predictions"])),
                ("model", f"`{cfg.get('model', {}).get('spec')}`"),
                ("retriever", f"`{retrieval.get('backend')}` (top-{retrieval.get('top_k')})"),
                ("corpus", f"`{corpus.get('format')}{':' + corpus['path'] if corpus.get('path') else ''}`"),
                ("methods", ", ".join(_method_label(m) for m in cfg.get("methods", []))),
            ]
    if routing_models:
        facts.append(("routed models", ", ".join(routing_models)))
    return title, facts


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
    title, facts = _run_facts(store, run_id, list(dict.fromkeys(r["model"] for r in routing)))
    # A section only where the run has its rows: a routing-only or QA-only run shows no empty section.
    sections = []
    if board:
        sections += [_accuracy_section(run_id, board, by_retrievals), *_analysis_sections(qa)]
    if routing:
        sections.append(_routing_section(run_id, routing))
    if cost:
        sections.append(_cost_section(run_id, cost))
    if not sections:
        sections = [Section("Results", note=f"No predictions or routing data stored for run `{run_id}`.")]
    return Report(run_id, title, facts, sections + _columns_section(sections))


def _accuracy_section(run_id: str, board: list[dict], by_retrievals: list[dict]) -> Section:
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


def _analysis_sections(qa: QATables) -> list[Section]:
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


def _columns_section(sections: Sequence[Section]) -> list[Section]:
    """Definitions of the columns the report's tables show (``semoe.storage.columns``), if any."""
    rows = column_rows({c for s in sections for t in s.tables for c in t.columns})
    return [Section("Columns", [Table(("column", "meaning", "unit"), rows)])] if rows else []


QA_NOT_CONFIGURED = "QA not measured: the routing config has no `routing.qa` section."
# Verified on BHPolicy.route over random router logits (m = 4, 8, 64; min_k 1 and 2; two temperatures).
BH_SOFTMAX_NOTE = (
    "Same routing for every α: with softmax p-values (p = 1 − router probability, `semoe/routing/policies/bh.py`) "
    "the probabilities sum to 1, so the i-th largest is at most 1/i, and p_(i) ≤ i·α/m can hold for some i ≥ 2 "
    "only when α ≥ 1 − 1/m (m experts per layer). Below that BH rejects at most the top expert, the min_k floor "
    "sets k = min_k for every token, and the routing is top-min_k whatever α; only floor_rate moves with α. "
    "`p_values: calibrated` (an empirical null per layer) is the variant where α selects experts."
)


def _bh_alpha_insensitive(routing: list[dict]) -> set[int]:
    """Rows of BH with softmax p-values whose α varies while perplexity and experts per token
    do not (same model, mode and other params)."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(routing):
        params = json.loads(r.get("policy_params") or "{}")
        if r["policy"] != "bh" or params.get("p_values", "softmax") != "softmax":
            continue
        rest = json.dumps({k: v for k, v in params.items() if k != "alpha"}, sort_keys=True)
        groups.setdefault((r["model"], r["mode"], rest), []).append(i)
    flagged: set[int] = set()
    for rows in groups.values():
        alphas = {json.loads(routing[i]["policy_params"]).get("alpha") for i in rows}
        outcomes = {(routing[i]["perplexity"], routing[i]["experts_per_token"]) for i in rows}
        if len(alphas) > 1 and len(outcomes) == 1:
            flagged.update(rows)
    return flagged


def routing_table(routing: list[dict]) -> Table:
    """The ``routing_by_k`` rows with a footnote wherever a cell needs one: a blank QA EM/F1
    cites its ``qa_note`` (why QA does not apply to that model); BH rows whose softmax
    p-values make α irrelevant cite :data:`BH_SOFTMAX_NOTE`. Without any QA in the run the QA
    columns are left out and the caption says why."""
    notes: list[str] = []

    def cite(text: str) -> str:
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    measured_qa = any(r.get("qa_dataset") for r in routing)
    columns = [c for c in ROUTING_COLUMNS if measured_qa or c not in ("qa_em", "qa_f1")]
    caption = "Per routing policy (the `routing_by_k` view)." + ("" if measured_qa else " " + QA_NOT_CONFIGURED)
    bh_flat = _bh_alpha_insensitive(routing)
    rows = []
    for i, r in enumerate(routing):
        row = dict(r)
        if measured_qa and r["qa_em"] is None:
            mark = cite(r.get("qa_note") or QA_NOT_CONFIGURED)
            row["qa_em"] = row["qa_f1"] = f"n/a {mark}"
        if i in bh_flat:
            row["setting"] = f"{r['setting'] or ''} {cite(BH_SOFTMAX_NOTE)}".strip()
        rows.append(row)
    return Table(columns, rows, caption, notes)


def _heatmaps(routing: list[dict]) -> tuple[list[Plot], list[str]]:
    """The cells' expert heatmaps (PNG files the routing flow wrote), and the paths not found."""
    plots: list[Plot] = []
    missing: list[str] = []
    for r in routing:
        path = r.get("heatmap_path")
        if not path:
            continue
        try:
            png = Path(path).read_bytes()
        except OSError:
            missing.append(path)
            continue
        name, n = f"heatmap-{Path(path).stem}", 1
        while any(p.name == name for p in plots):  # copied cells keep their own run's file names
            n += 1
            name = f"heatmap-{Path(path).stem}-{n}"
        setting = f" ({r['setting']})" if r["setting"] else ""
        title = f"Expert heatmap: {r['model']} · {r['policy_label'] or r['policy']}{setting} · {r['mode']} mode"
        plots.append(Plot(name, title, png))
    return plots, missing


def _routing_section(run_id: str, routing: list[dict]) -> Section:
    heatmaps, missing = _heatmaps(routing)
    note = f"Heatmap files not found (moved or deleted): {', '.join(missing)}." if missing else ""
    return Section(
        "Accuracy vs experts per token",
        [routing_table(routing)],
        plot_accuracy_vs_experts(routing),
        note=note,
        figures=heatmaps,
    )


def _cost_section(run_id: str, cost: list[dict]) -> Section:
    title = "Cost per method"
    if not cost:
        return Section(title, note=f"No predictions stored for run `{run_id}`.")
    caption = (
        "Per method (the `cost_by_method` view); expert bytes are the adapter files of the experts the method loaded."
    )
    return Section(title, [Table(COST_COLUMNS, cost, caption)], plot_cost(cost))


# ---------------------------------------------------------------- plots


def _figure(ncols: int, nrows: int = 1, width: float = 4.2, height: float = 3.2):
    """A figure on the Agg canvas without pyplot: no global backend state, safe in any thread."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI, metadata={"Software": None})
    return buf.getvalue()


def _colors(keys: Sequence[str]) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {k: palette[i % len(palette)] for i, k in enumerate(dict.fromkeys(keys))}


def _markers(keys: Sequence[str]) -> dict[str, str]:
    """Hollow marker shapes per key, so methods with equal numbers stay visible on top of each other."""
    shapes = "osD^vP*Xph"
    return {k: shapes[i % len(shapes)] for i, k in enumerate(dict.fromkeys(keys))}


def plot_accuracy_vs_retrievals(board: list[dict], by_retrievals: list[dict]) -> Plot:
    """One row per dataset, EM and F1 panels: each method's mean (large marker, with its
    bootstrap 95 % interval) at its mean retrievals per question, and a line through its
    accuracy at each retrieval count."""
    datasets = list(dict.fromkeys(r["dataset"] for r in board))
    methods = [r["method"] for r in board]
    colors, markers = _colors(methods), _markers(methods)
    fig, axes = _figure(2, len(datasets))
    for row, dataset in zip(axes, datasets):
        for ax, metric in zip(row, ("em", "f1")):
            for r in (b for b in board if b["dataset"] == dataset):
                points = [p for p in by_retrievals if p["dataset"] == dataset and p["method"] == r["method"]]
                ax.plot(
                    [p["retrievals"] for p in points],
                    [p[metric] for p in points],
                    "-",
                    marker=".",
                    linewidth=1,
                    alpha=0.5,
                    color=colors[r["method"]],
                )
                lo, hi = r[f"{metric}_lo"], r[f"{metric}_hi"]
                ax.errorbar(  # the bootstrap 95 % interval, when there is one
                    r["retrievals_per_question"],
                    r[metric],
                    yerr=None if lo is None else [[r[metric] - lo], [hi - r[metric]]],
                    capsize=3,
                    linestyle="none",
                    marker=markers[r["method"]],
                    markersize=10,
                    markerfacecolor="none",
                    markeredgewidth=2,
                    color=colors[r["method"]],
                    label=r["method"],
                )
            ax.margins(x=0.08)
            ax.set_title(f"{dataset}: {LABELS[metric]}", fontsize=10)
            ax.set_xlabel("retrievals per question")
            ax.set_ylabel(LABELS[metric])
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=7, loc="best")
    return Plot("accuracy_vs_retrievals", "Accuracy vs retrievals per question", _png(fig))


def plot_accuracy_vs_experts(routing: list[dict]) -> Plot:
    """Perplexity (and QA F1 where measured) against experts per token: one panel per model,
    a line per (policy, mode); with one model, one panel per policy, a line per mode. Points
    are labelled with their setting; at most three panels a row, a legend in each panel."""
    has_qa = any(r["qa_f1"] is not None for r in routing)
    metrics = ["perplexity", "qa_f1"] if has_qa else ["perplexity"]
    if len(dict.fromkeys(r["model"] for r in routing)) > 1:
        panel_of, series_of = (lambda r: r["model"]), (lambda r: f"{r['policy']} ({r['mode']})")
    else:
        panel_of, series_of = (lambda r: f"{r['model']} {r['policy']}"), (lambda r: f"{r['mode']} mode")
    panels = list(dict.fromkeys(panel_of(r) for r in routing))
    colors = _colors([series_of(r) for r in routing])
    ncols = min(3, len(panels))
    per_metric = -(-len(panels) // ncols)
    fig, axes = _figure(ncols, per_metric * len(metrics))
    flat = [ax for row in axes for ax in row]
    for m, metric in enumerate(metrics):
        for j, panel in enumerate(panels):
            ax = flat[m * per_metric * ncols + j]
            mine = [r for r in routing if panel_of(r) == panel]
            for series in dict.fromkeys(series_of(r) for r in mine):
                points = sorted(
                    (r for r in mine if series_of(r) == series and None not in (r[metric], r["experts_per_token"])),
                    key=lambda r: r["experts_per_token"],
                )
                if not points:
                    continue
                xs, ys = [p["experts_per_token"] for p in points], [p[metric] for p in points]
                ax.plot(xs, ys, "-o", color=colors[series], label=series)
                settings: dict[tuple, list[str]] = {}  # points that coincide share one stacked label
                for p in points:
                    settings.setdefault((p["experts_per_token"], p[metric]), []).append(p["setting"] or "")
                for xy, words in settings.items():
                    ax.annotate("\n".join(words), xy, fontsize=7, textcoords="offset points", xytext=(3, 3))
            if ax.has_data():
                ax.legend(fontsize=7, loc="best")
            else:
                ax.set_xticks([])
                ax.set_yticks([])
                ax.text(
                    0.5,
                    0.5,
                    f"no {LABELS.get(metric, metric)} measured",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color="gray",
                )
            ax.set_title(f"{panel}: {LABELS.get(metric, metric)}", fontsize=10)
            ax.set_xlabel("experts per token")
            ax.set_ylabel(LABELS.get(metric, metric))
            ax.margins(0.12)
            ax.grid(alpha=0.3)
        for ax in flat[m * per_metric * ncols + len(panels) : (m + 1) * per_metric * ncols]:
            ax.set_visible(False)
    return Plot("accuracy_vs_experts", "Accuracy vs experts per token", _png(fig))


def plot_cost(cost: list[dict]) -> Plot:
    """Seconds per question (by stage), tokens per question and expert adapter MiB per method."""
    labels = [f"{r['method']}\n{r['dataset']}" for r in cost]
    ys = list(range(len(cost)))
    fig, axes = _figure(3, height=max(2.4, 0.45 * len(cost) + 1.2))
    stages = [
        ("retrieve_seconds_per_question", "retrieve"),
        ("generate_seconds_per_question", "generate"),
        ("experts_seconds_per_question", "experts"),
    ]
    left = [0.0] * len(cost)
    for column, name in stages:
        values = [r[column] or 0.0 for r in cost]
        axes[0][0].barh(ys, values, left=left, label=name)
        left = [a + b for a, b in zip(left, values)]
    axes[0][0].set_xlabel("seconds per question")
    axes[0][0].legend(fontsize=7, loc="best")
    prompt = [r["prompt_tokens_per_question"] or 0.0 for r in cost]
    generated = [r["generated_tokens_per_question"] or 0.0 for r in cost]
    axes[0][1].barh(ys, prompt, label="prompt")
    axes[0][1].barh(ys, generated, left=prompt, label="generated")
    axes[0][1].set_xlabel("tokens per question")
    axes[0][1].legend(fontsize=7, loc="best")
    expert_mib = [r["expert_bytes"] / 2**20 for r in cost]
    axes[0][2].barh(ys, expert_mib, color="C4")
    axes[0][2].set_xlabel("expert adapters, MiB")
    axes[0][2].set_xlim(left=0)
    if not any(expert_mib):
        axes[0][2].set_xticks([])
        axes[0][2].text(
            0.5, 0.5, "no method loaded experts", ha="center", va="center", transform=axes[0][2].transAxes, color="gray"
        )
    for ax in axes[0]:
        ax.set_yticks(ys, labels if ax is axes[0][0] else [""] * len(ys), fontsize=7)
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    return Plot("cost_per_method", "Cost per method", _png(fig))


# ---------------------------------------------------------------- rendering


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    lines = [f"_{table.caption}_", ""] if table.caption else []
    lines.append("| " + " | ".join(LABELS.get(c, c) for c in table.columns) + " |")
    lines.append("|" + "---|" * len(table.columns))
    lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.cells())
    if table.notes:
        lines.append("")
        lines.extend(f"[{i}] {note}  " for i, note in enumerate(table.notes, 1))
    return lines + [""]


def _md_image(plot: Plot, inline: bool) -> list[str]:
    inline = inline and len(plot.png) <= ARTIFACT_IMAGE_MAX_BYTES
    return [f"![{plot.title}]({plot.data_uri() if inline else plot.filename})", ""]


def to_markdown(report: Report, inline_images: bool = False) -> str:
    """Markdown with images linked as files next to it, or inlined as data URIs (for Prefect
    artifacts, which hold text only; plots over ARTIFACT_IMAGE_MAX_BYTES stay file names)."""
    lines = [f"# {report.title}", ""]
    lines.extend(f"- **{k}**: {v}" for k, v in report.facts)
    lines.append("")
    for section in report.sections:
        lines.extend([f"## {section.title}", ""])
        if section.note:
            lines.extend([section.note, ""])
        if section.plot is not None:
            lines.extend(_md_image(section.plot, inline_images))
        for table in section.tables:
            lines.extend(_md_table(table))
        for figure in section.figures:
            lines.extend(_md_image(figure, inline_images))
    return "\n".join(lines).rstrip() + "\n"


HTML_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}
caption{caption-side:top;text-align:left;font-style:italic;padding:.3em 0}
img{max-width:100%}.note{color:#666}"""


def to_html(report: Report) -> str:
    """One self-contained page: tables as HTML, plots as inline PNG data URIs."""

    def e(text: str) -> str:  # escaped, without the markdown code quotes
        return html.escape(text.replace("`", ""))

    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(report.title)}</title>',
        f"<style>{HTML_STYLE}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
        "<ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in report.facts) + "</ul>",
    ]
    for section in report.sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        if section.note:
            parts.append(f'<p class="note">{e(section.note)}</p>')
        if section.plot is not None:
            parts.append(f'<img alt="{e(section.plot.title)}" src="{section.plot.data_uri()}">')
        for table in section.tables:
            head = "".join(f"<th>{e(LABELS.get(c, c))}</th>" for c in table.columns)
            rows = ("".join(f"<td>{html.escape(c)}</td>" for c in row) for row in table.cells())
            body = "".join(f"<tr>{r}</tr>" for r in rows)
            caption = f"<caption>{e(table.caption)}</caption>" if table.caption else ""
            parts.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            parts.extend(f'<p class="note">[{i}] {e(note)}</p>' for i, note in enumerate(table.notes, 1))
        for figure in section.figures:
            parts.append(f'<figure><img alt="{e(figure.title)}" src="{figure.data_uri()}">')
            parts.append(f"<figcaption>{e(figure.title)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- files


def default_report_dir(store_path: str | Path, run_id: str) -> Path:
    return Path(store_path).expanduser().parent / "reports" / run_id


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(report: Report, out_dir: str | Path, formats: Sequence[str] = REPORT_FORMATS) -> dict[str, Path]:
    """Write the plots as PNG files and the report in ``formats``; returns kind -> path
    ("md", "html", and each plot's name)."""
    unknown = set(formats) - set(REPORT_FORMATS)
    if unknown:
        raise ValueError(f"unknown report formats {sorted(unknown)}; choose from {', '.join(REPORT_FORMATS)}")
    out = Path(out_dir).expanduser()
    paths: dict[str, Path] = {}
    renderers = {"md": lambda: to_markdown(report), "html": lambda: to_html(report)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for plot in report.plots:
            paths[plot.name] = out / plot.filename
            _write_atomic(paths[plot.name], plot.png)
        for fmt in formats:
            paths[fmt] = out / f"report.{fmt}"
            _write_atomic(paths[fmt], renderers[fmt]().encode())
    except OSError as e:
        raise StoreError(f"cannot write the report to {out}: {e}") from None
    return paths


@dataclass
class WrittenReport:
    report: Report
    paths: dict[str, Path]

    def artifact_markdown(self) -> str:
        """The report for a Prefect markdown artifact: plots inlined, and where the files are."""
        where = ", ".join(f"`{p}`" for k, p in self.paths.items() if k in REPORT_FORMATS)
        return to_markdown(self.report, inline_images=True) + f"\nReport files: {where}\n"


def write_run_report(
    store_path: str | Path, run_id: str, out_dir: str | Path | None = None, formats: Sequence[str] = REPORT_FORMATS
) -> WrittenReport:
    """Build the report of ``run_id`` (exact or unique prefix) from the store and write it to
    ``out_dir`` (default ``<store dir>/reports/<run id>``)."""
    store = open_current(store_path)
    report = build_report(store, run_id)
    paths = write_report(report, out_dir or default_report_dir(store.path, report.run_id), formats)
    return WrittenReport(report, paths)
