"""Tensor helpers that turn router probabilities into a :class:`Routing` (imported lazily)."""

from __future__ import annotations

import torch

from semoe.routing.base import Routing


def router_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax in float32, as every supported router computes it."""
    x = logits.float()
    return torch.softmax(x if temperature == 1.0 else x / temperature, dim=-1)


def weights_for(probs_selected: torch.Tensor, renormalize: bool) -> torch.Tensor:
    if renormalize:
        return probs_selected / probs_selected.sum(dim=-1, keepdim=True)
    return probs_selected


def topk_routing(probs: torch.Tensor, k: int, renormalize: bool) -> Routing:
    """Fixed k; bit-identical to the HF routers' ``topk`` (+ optional renorm) at their own k."""
    values, indices = torch.topk(probs, k, dim=-1)
    return Routing(weights=weights_for(values, renormalize), indices=indices)


def prefix_routing(
    sorted_probs: torch.Tensor,
    sorted_idx: torch.Tensor,
    counts: torch.Tensor,
    renormalize: bool,
    floor: torch.Tensor | None = None,
    ceiling: torch.Tensor | None = None,
) -> Routing:
    """Variable k: token ``t`` keeps its ``counts[t]`` most probable experts.

    ``sorted_*`` are sorted by probability, descending (at least ``counts.max()`` columns).
    Inactive slots point at the token's top expert with weight 0 (see :class:`Routing`).
    """
    kmax = int(counts.max())
    values, idx = sorted_probs[:, :kmax], sorted_idx[:, :kmax]
    active = torch.arange(kmax, device=counts.device) < counts.unsqueeze(-1)
    values = values * active
    idx = torch.where(active, idx, idx[:, :1])
    weights = weights_for(values, renormalize)
    return Routing(weights=weights, indices=idx, counts=counts, active=active, floor=floor, ceiling=ceiling)


def bounded(wanted: torch.Tensor, min_k: int, max_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts clamped to [min_k, max_k], floor hits, ceiling hits)."""
    return wanted.clamp(min_k, max_k), wanted < min_k, wanted > max_k
