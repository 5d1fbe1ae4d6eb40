"""One routing policy end to end: calibrated if it needs it, then perplexity and statistics,
decode speed and peak memory, and the expert heatmap; the evaluation gives the rows of
``routing_runs`` and ``routing_layer_stats``.

Pure logic: the Prefect flow only loads models/texts and writes the rows. The measurements
themselves are :mod:`semoe.routing.decoding` and :mod:`semoe.routing.memory`, the rows
:mod:`semoe.routing.tables`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from semoe.routing.base import make_policy
from semoe.routing.decoding import DecodeResult, PerplexityResult, decode, perplexity
from semoe.routing.heatmaps import cell_title, write_heatmap_png
from semoe.routing.memory import PeakMemory
from semoe.routing.tables import layer_stat_rows, policy_key, routing_run_row

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
    heatmap_title: str | None = None,
) -> PolicyEvaluation:
    """Perplexity + statistics (+ decode speed on ``decode_prompt``) of one policy, with peak
    memory, and its expert heatmap at ``heatmap_path`` (``heatmap_title``, by default the
    policy, its setting and the mode). ``spec=None`` is the model's own routing (``topk`` in
    analyze mode)."""
    if spec is None:
        spec, mode = "topk", "analyze"
    policy = prepare_policy(model, spec, calibration)
    with PeakMemory(next(model.parameters()).device) as memory:
        ppl = perplexity(model, batches, policy, mode=mode, guard=guard)
        dec = None
        if decode_prompt is not None:
            dec = decode(model, decode_prompt, policy if mode == "patch" else None, max_new_tokens, guard=guard)
    if heatmap_path is not None:
        title = heatmap_title or cell_title("", policy.name, policy.setting(), mode)
        write_heatmap_png(heatmap_path, ppl.stats.activation_matrix(), title)
    return PolicyEvaluation(policy, mode, ppl, dec, memory, str(heatmap_path) if heatmap_path else None)
