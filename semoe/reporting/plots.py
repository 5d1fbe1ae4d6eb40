"""The report's figures (matplotlib, imported inside the functions that draw), as PNG bytes."""

from __future__ import annotations

import io
from typing import Sequence

from semoe.reporting.model import LABELS, Plot

PLOT_DPI = 90


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
