"""Benjamini–Hochberg and the calibrated p-values that make it usable for routing.

With E experts the "seed" p-value ``1 − softmax`` can only be rejected by BH when the top
probability is at least ``1 − α/E`` (0.998 for α = 0.1 over 64 experts), so BH routing
falls back to ``min_k`` almost always. An empirical null per layer fitted on calibration
text instead asks "is this expert's router score unusually high for this layer?":
``p = (#{null ≥ observed} + 1) / (n + 1)``. By default the null holds the scores of the
experts the model did *not* select (``reference="unselected"``), i.e. what an irrelevant
expert's score looks like, so an expert is rejected (selected) when it stands out from that.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import torch
from safetensors import safe_open

from semoe.routing.sites import find_routers

Statistic = Literal["prob", "logit"]
Reference = Literal["unselected", "all"]
_REL_TOL = 1e-6  # p == i·α/m must count as ≤ despite rounding


def bh_levels(m: int, alpha: float) -> list[float]:
    """The BH step-up levels i·α/m, i = 1..m (with a hair of tolerance for rounding)."""
    return [i * alpha / m * (1 + _REL_TOL) for i in range(1, m + 1)]


def largest_passing(ok: torch.Tensor) -> torch.Tensor:
    """The largest i (1-based) with ``ok[..., i-1]``, 0 when none: the BH rejection count."""
    ranks = torch.arange(1, ok.shape[-1] + 1, device=ok.device)
    return (ok * ranks).amax(dim=-1)


def bh_count(p_sorted: torch.Tensor, alpha: float) -> torch.Tensor:
    """Number of BH rejections per row of ascending ``p_sorted``: the largest i with p_(i) ≤ iα/m."""
    levels = torch.tensor(bh_levels(p_sorted.shape[-1], alpha), dtype=p_sorted.dtype, device=p_sorted.device)
    return largest_passing(p_sorted <= levels)


def benjamini_hochberg(p_values, alpha: float) -> torch.Tensor:
    """BH step-up rejection mask along the last dimension.

    Sort p ascending, find the largest i with p_(i) ≤ i·α/m, reject the i smallest
    (hypotheses tied with p_(i) are rejected too, as the step-up rule implies).
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    p = torch.as_tensor(p_values, dtype=torch.float64)
    if p.numel() and (p.min() < 0 or p.max() > 1):
        raise ValueError("p-values must lie in [0, 1]")
    p_sorted, order = p.sort(dim=-1)
    count = bh_count(p_sorted, alpha)
    reject_sorted = torch.arange(p.shape[-1], device=p.device) < count.unsqueeze(-1)
    return torch.zeros_like(reject_sorted).scatter(-1, order, reject_sorted)


def router_statistic(logits: torch.Tensor, statistic: Statistic, temperature: float) -> torch.Tensor:
    x = logits.float() / temperature
    return torch.softmax(x, dim=-1) if statistic == "prob" else x


@dataclass
class EmpiricalNull:
    """Per-MoE-layer sorted null samples of a router statistic."""

    samples: list[torch.Tensor]  # ascending float32, one per MoE layer
    statistic: Statistic = "prob"
    reference: Reference = "unselected"
    temperature: float = 1.0
    tokens: int = 0
    _on_device: dict = field(default_factory=dict, repr=False)

    def p_values(self, layer: int, stat: torch.Tensor) -> torch.Tensor:
        """Right-tail empirical p-values of ``stat`` (any shape) under layer ``layer``'s null."""
        key = (layer, stat.device)
        s = self._on_device.get(key)
        if s is None:
            s = self._on_device[key] = self.samples[layer].to(stat.device)
        n = s.numel()
        at_least = n - torch.searchsorted(s, stat.float().contiguous(), side="left")
        return (at_least + 1).float() / (n + 1)

    def rejection_thresholds(self, layer: int, alpha: float, m: int, device) -> torch.Tensor:
        """``c`` with ``p(x) ≤ i·α/m  ⟺  x > c[i-1]``: BH on this null without computing p-values.

        p(x) = (a + 1)/(n + 1) with a = #{null ≥ x}, so p ≤ t ⟺ a ≤ r = ⌊t(n + 1)⌋ − 1 ⟺
        x > s[n − r − 1] (s ascending); r < 0 never passes, r ≥ n always does.
        """
        key = (layer, alpha, m, device)
        c = self._on_device.get(key)
        if c is None:
            s = self.samples[layer]
            n = s.numel()
            values = []
            for t in bh_levels(m, alpha):
                r = math.floor(t * (n + 1)) - 1
                values.append(math.inf if r < 0 else -math.inf if r >= n else float(s[n - r - 1]))
            c = self._on_device[key] = torch.tensor(values, dtype=torch.float32, device=device)
        return c

    def describe(self) -> dict:
        return {
            "statistic": self.statistic,
            "reference": self.reference,
            "temperature": self.temperature,
            "layers": len(self.samples),
            "samples_per_layer": min((s.numel() for s in self.samples), default=0),
            "calibration_tokens": self.tokens,
        }

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        meta = {k: json.dumps(v) for k, v in self.describe().items()}
        save_file({f"layer.{i}": s.contiguous() for i, s in enumerate(self.samples)}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "EmpiricalNull":
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in f.metadata().items()}
            samples = [f.get_tensor(f"layer.{i}") for i in range(meta["layers"])]
        return cls(samples, meta["statistic"], meta["reference"], meta["temperature"], meta["calibration_tokens"])


def fit_empirical_null(
    model,
    batches: Iterable,
    *,
    statistic: Statistic = "prob",
    reference: Reference = "unselected",
    temperature: float = 1.0,
    max_samples: int = 200_000,
    seed: int = 0,
) -> EmpiricalNull:
    """Run ``model`` (its own routing) over calibration batches and keep per-layer null samples.

    ``batches``: input-id tensors ``(B, T)`` or tokenizer outputs (dicts); with an
    ``attention_mask`` only real tokens count. At most ``max_samples`` values per layer
    are kept (uniform subsample) so p-values cost one ``searchsorted``.
    """

    sites = find_routers(model)
    collected: list[list[torch.Tensor]] = [[] for _ in sites]
    token_mask: list[torch.Tensor | None] = [None]
    tokens = 0

    def hook_for(i: int):
        def hook(module, args, output):
            logits, _, chosen = output[:3]
            stat = router_statistic(logits, statistic, temperature)
            keep = torch.ones_like(stat, dtype=torch.bool)
            if reference == "unselected":
                keep.scatter_(1, chosen, False)
            if token_mask[0] is not None:
                keep &= token_mask[0].unsqueeze(-1)
            collected[i].append(stat[keep].detach().cpu())

        return hook

    handles = [s.module.register_forward_hook(hook_for(s.index)) for s in sites]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = dict(batch) if isinstance(batch, dict) else {"input_ids": batch}
                inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
                mask = inputs.get("attention_mask")
                token_mask[0] = mask.reshape(-1).bool() if mask is not None else None
                tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
                model(**inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if tokens == 0:
        raise ValueError("fit_empirical_null: no calibration tokens")
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for parts in collected:
        values = torch.cat(parts)
        if values.numel() > max_samples:
            values = values[torch.randperm(values.numel(), generator=gen)[:max_samples]]
        samples.append(values.sort().values)
    return EmpiricalNull(samples, statistic, reference, temperature, tokens)
