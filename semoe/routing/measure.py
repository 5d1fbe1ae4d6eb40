"""One routing policy end to end: calibrated if it needs it, then perplexity and statistics,
decode speed and peak memory, and the expert heatmap; the evaluation gives the rows of
``routing_runs`` and ``routing_layer_stats``.

Pure logic: the Prefect flow only loads models/texts and writes the rows. The measurements
themselves are :mod:`semoe.routing.decoding` and :mod:`semoe.routing.memory`, the rows
:mod:`semoe.routing.tables`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from semoe.routing.base import make_policy
from semoe.routing.decoding import DecodeResult, PerplexityResult, decode, perplexity
from semoe.routing.memory import PeakMemory
from semoe.routing.tables import layer_stat_rows, policy_key, routing_run_row

# ---------------------------------------------------------------- heatmap


def _viridis(x):
    import numpy as np

    anchors = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
    pos = np.clip(x, 0, 1) * (len(anchors) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(anchors) - 2)
    frac = (pos - lo)[..., None]
    return (anchors[lo] * (1 - frac) + anchors[lo + 1] * frac).round().astype(np.uint8)


def write_png(path: str | Path, rgb) -> None:
    """Minimal RGB PNG writer (zlib + CRC chunks), so heatmaps need no plotting library."""
    import numpy as np

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def write_heatmap_png(path: str | Path, counts: Sequence[Sequence[float]], cell: int = 8) -> None:
    """Expert-activation heatmap: one row of ``cell``-pixel squares per MoE layer, one column
    per expert, viridis colour of each layer's activation share scaled to the largest share."""
    import numpy as np

    m = np.asarray(counts, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ValueError("heatmap needs a non-empty (layers, experts) matrix")
    totals = m.sum(axis=1, keepdims=True)
    share = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    top = share.max()
    img = _viridis(share / top if top > 0 else share)
    write_png(path, np.repeat(np.repeat(img, cell, axis=0), cell, axis=1))


# ---------------------------------------------------------------- one policy end to end


def prepare_policy(model, spec: Any, calibration: Sequence | None = None):
    """A policy ready to route ``model``: fitted on ``calibration`` batches when it needs it."""
    policy = make_policy(spec)
    if policy.needs_calibration():
        if not calibration:
            raise ValueError(f"{policy.name} needs calibration text (e.g. BH with p_values='calibrated')")
        policy.calibrate(model, calibration)
    return policy


@dataclass
class PolicyEvaluation:
    policy: Any
    mode: str
    ppl: PerplexityResult
    decode: DecodeResult | None
    memory: PeakMemory
    heatmap_path: str | None = None

    def run_row(self, run_id: str, model: str, key: str | None = None, **context) -> dict:
        return routing_run_row(
            run_id,
            model,
            self.policy,
            self.mode,
            self.ppl,
            self.decode,
            self.memory,
            self.heatmap_path,
            key=key,
            **context,
        )

    def layer_rows(self, run_id: str, model: str, key: str | None = None) -> list[dict]:
        key = key or policy_key(self.policy.name, self.policy.describe())
        return layer_stat_rows(run_id, model, key, self.mode, self.ppl.stats)


def evaluate_policy(
    model,
    spec: Any,
    batches: Sequence,
    *,
    mode: str = "patch",
    calibration: Sequence | None = None,
    decode_prompt=None,
    max_new_tokens: int = 32,
    guard: bool = True,
    heatmap_path: str | Path | None = None,
) -> PolicyEvaluation:
    """Perplexity + statistics (+ decode speed on ``decode_prompt``) of one policy, with peak
    memory. ``spec=None`` is the model's own routing (``topk`` in analyze mode)."""
    if spec is None:
        spec, mode = "topk", "analyze"
    policy = prepare_policy(model, spec, calibration)
    with PeakMemory(next(model.parameters()).device) as memory:
        ppl = perplexity(model, batches, policy, mode=mode, guard=guard)
        dec = None
        if decode_prompt is not None:
            dec = decode(model, decode_prompt, policy if mode == "patch" else None, max_new_tokens, guard=guard)
    if heatmap_path is not None:
        write_heatmap_png(heatmap_path, ppl.stats.activation_matrix())
    return PolicyEvaluation(policy, mode, ppl, dec, memory, str(heatmap_path) if heatmap_path else None)
