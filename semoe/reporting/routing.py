"""The routing section: the ``routing_by_k`` table with its footnotes, and the cells' expert heatmaps."""

from __future__ import annotations

import json
from pathlib import Path

from semoe.reporting.model import Plot, Section, Table
from semoe.reporting.plots import plot_accuracy_vs_experts

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


def routing_section(run_id: str, routing: list[dict]) -> Section:
    """The run's ``routing_by_k`` rows (:func:`routing_table`), their plot, and the cells' heatmaps
    read from the files the routing flow wrote (missing files named in the note)."""
    heatmaps, missing = _heatmaps(routing)
    note = f"Heatmap files not found (moved or deleted): {', '.join(missing)}." if missing else ""
    return Section(
        "Accuracy vs experts per token",
        [routing_table(routing)],
        plot_accuracy_vs_experts(routing),
        note=note,
        figures=heatmaps,
    )
