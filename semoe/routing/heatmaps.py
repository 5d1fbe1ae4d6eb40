"""Expert-activation heatmaps of a routing cell: matplotlib figures (Agg canvas, no pyplot state)
with MoE experts on x, MoE layers on y, each layer's activation share as colour and a colour
bar, titled with the model, the routing policy and its setting."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from semoe.storage.atomic import atomic_path

HEATMAP_DPI = 100
# Figure size in inches: grows with the matrix, within bounds, so 8 or 64 experts stay legible.
_MIN_W, _MAX_W, _MIN_H, _MAX_H = 4.8, 14.0, 3.2, 10.0


def cell_title(model: str, policy: str, setting: str, mode: str) -> str:
    """``model · policy (setting) · mode mode``; an empty model or setting is left out."""
    parts = [model, f"{policy} ({setting})" if setting else policy, f"{mode} mode"]
    return " · ".join(p for p in parts if p)


def activation_shares(counts: Sequence[Sequence[float]]):
    """(layers, experts) activation counts → each expert's share of its layer's activations
    (rows sum to 1; 0 for a layer that routed nothing). ValueError for an empty or ragged matrix."""
    import numpy as np

    try:
        m = np.asarray(counts, dtype=np.float64)
    except ValueError:
        raise ValueError("heatmap needs a (layers, experts) matrix; rows have different lengths") from None
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"heatmap needs a non-empty (layers, experts) matrix, got shape {m.shape}")
    totals = m.sum(axis=1, keepdims=True)
    return np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)


def heatmap_figure(counts: Sequence[Sequence[float]], title: str):
    """The heatmap of one cell as a ``matplotlib.figure.Figure`` (not saved): x = MoE expert
    index, y = MoE layer (first at the top), colour = the expert's share of the layer's
    (token, expert) activations in percent, on a colour bar from 0 to the largest share."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    share = activation_shares(counts) * 100
    layers, experts = share.shape
    width = min(max(_MIN_W, 2.2 + 0.16 * experts), _MAX_W)
    height = min(max(_MIN_H, 1.4 + 0.28 * layers), _MAX_H)
    fig = Figure(figsize=(width, height), dpi=HEATMAP_DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="viridis", aspect="auto", interpolation="nearest", vmin=0)
    ax.set_xlabel("MoE expert")
    ax.set_ylabel("MoE layer")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(image, ax=ax, label="share of the layer's activations, %")
    ax.set_title(title, fontsize=9)
    return fig


def write_heatmap_png(path: str | Path, counts: Sequence[Sequence[float]], title: str = "") -> Path:
    """Save :func:`heatmap_figure` as a PNG of ``figsize × HEATMAP_DPI`` pixels at ``path``
    (``semoe.storage.atomic.atomic_path``: never half a file)."""
    path = Path(path)
    fig = heatmap_figure(counts, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=HEATMAP_DPI, metadata={"Software": None})
    return path
