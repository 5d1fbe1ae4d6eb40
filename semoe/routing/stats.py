"""Per-layer routing statistics, accumulated on the routers' device without host syncs."""

from __future__ import annotations

import math

import torch

from semoe.routing.base import Routing


class LayerStats:
    """One MoE layer: a histogram of experts per token, expert activation counts, BH
    floor/ceiling hits, and overlap with the model's own choice (share of its top-k kept)."""

    def __init__(self, site):
        self.index = site.index
        self.path = site.path
        self.decoder_layer = site.decoder_layer
        self.num_experts = site.num_experts
        self.reset()

    def reset(self) -> None:
        self.tokens = self.original_slots = 0
        self.bounded = False
        self.k_hist = self.expert_counts = self.bounds = self.kept = None

    def record(self, routing: Routing, original_indices: torch.Tensor) -> None:
        idx = routing.indices
        t, kmax = idx.shape
        if self.k_hist is None:
            dev = idx.device
            self.k_hist = torch.zeros(self.num_experts + 1, dtype=torch.long, device=dev)
            self.expert_counts = torch.zeros(self.num_experts, dtype=torch.long, device=dev)
            self.bounds = torch.zeros(2, dtype=torch.long, device=dev)  # floor hits, ceiling hits
            self.kept = torch.zeros((), dtype=torch.long, device=dev)
        if routing.counts is None:
            self.k_hist[kmax] += t
            self.expert_counts += torch.bincount(idx.reshape(-1), minlength=self.num_experts)
        else:
            self.k_hist += torch.bincount(routing.counts, minlength=self.num_experts + 1)
            self.expert_counts.scatter_add_(0, idx.reshape(-1), routing.active.reshape(-1).long())
        if routing.floor is not None:
            self.bounded = True
            self.bounds += torch.stack([routing.floor.sum(), routing.ceiling.sum()])
        # Inactive slots repeat an active expert, so matching against every slot is exact.
        self.kept += (idx.unsqueeze(2) == original_indices.unsqueeze(1)).any(dim=1).sum()
        self.original_slots += original_indices.numel()
        self.tokens += t

    def summary(self) -> dict:
        n = self.tokens
        row = {
            "layer": self.index,
            "module": self.path,
            "decoder_layer": self.decoder_layer,
            "num_experts": self.num_experts,
            "tokens": n,
            "experts_mean": None,
            "experts_std": None,
            "floor_rate": None,
            "ceiling_rate": None,
            "overlap": None,
            "k_histogram": [0] * (self.num_experts + 1),
            "expert_counts": [0] * self.num_experts,
        }
        if n == 0:
            return row
        hist = self.k_hist.double().cpu()
        ks = torch.arange(hist.numel(), dtype=torch.float64)
        mean = float((hist * ks).sum() / n)
        var = max(float((hist * ks * ks).sum() / n) - mean * mean, 0.0)
        row.update(
            experts_mean=mean,
            experts_std=math.sqrt(var),
            overlap=float(self.kept) / self.original_slots,
            k_histogram=self.k_hist.tolist(),
            expert_counts=self.expert_counts.tolist(),
        )
        if self.bounded:
            floor, ceiling = self.bounds.tolist()
            row.update(floor_rate=floor / n, ceiling_rate=ceiling / n)
        return row


class RoutingStats:
    """Statistics of every MoE layer under one installed policy."""

    def __init__(self, sites):
        self.layers = [LayerStats(s) for s in sites]

    def record(self, layer: int, routing: Routing, original_indices: torch.Tensor) -> None:
        self.layers[layer].record(routing, original_indices)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def summary(self) -> list[dict]:
        return [layer.summary() for layer in self.layers]

    def activation_matrix(self) -> list[list[int]]:
        """Expert activation counts, one row per MoE layer (the heatmap's data)."""
        return [row["expert_counts"] for row in self.summary()]

    def experts_per_token_std(self) -> float | None:
        """Standard deviation of experts per (token, layer), pooled over all layers' histograms."""
        hists = [layer.k_hist.double().cpu() for layer in self.layers if layer.tokens]
        if not hists:
            return None
        width = max(h.numel() for h in hists)
        hist = sum(torch.nn.functional.pad(h, (0, width - h.numel())) for h in hists)
        ks = torch.arange(width, dtype=torch.float64)
        n = float(hist.sum())
        mean = float((hist * ks).sum()) / n
        return math.sqrt(max(float((hist * ks * ks).sum()) / n - mean * mean, 0.0))

    def experts_per_token(self) -> float | None:
        rows = [r for r in self.summary() if r["tokens"]]
        if not rows:
            return None
        return sum(r["experts_mean"] * r["tokens"] for r in rows) / sum(r["tokens"] for r in rows)
