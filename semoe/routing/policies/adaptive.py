"""Adaptive k by input difficulty: a flat router distribution (an uncertain token) gets more experts."""

from __future__ import annotations

import math

from pydantic import Field

from semoe.routing.policies.common import BoundedParams, BoundedPolicy
from semoe.routing.registry import register_policy


class TopPParams(BoundedParams):
    p: float = Field(0.5, gt=0, le=1, description="keep the most probable experts until their mass reaches p")


@register_policy("top-p")
class TopPPolicy(BoundedPolicy):
    """Nucleus routing: the smallest expert set whose router probability mass reaches p."""

    Params = TopPParams

    def setting_words(self) -> list[str]:
        return [f"p={self.params.p}"]

    def route(self, logits, site):
        import torch

        from semoe.routing.selection import bounded, prefix_routing, router_probs

        probs, idx = router_probs(logits).sort(dim=-1, descending=True)
        wanted = (torch.cumsum(probs, dim=-1) < self.params.p).sum(dim=-1) + 1
        counts, floor, ceiling = bounded(wanted.clamp(max=site.num_experts), *self.bounds(site))
        return prefix_routing(probs, idx, counts, self.renormalize(site), floor, ceiling)


class EntropyKParams(BoundedParams):
    power: float = Field(1.0, gt=0, description="k = min_k + round((max_k - min_k) * (H / log E) ** power)")


@register_policy("entropy-k")
class EntropyKPolicy(BoundedPolicy):
    """k grows with the router's normalised entropy H / log E, from min_k (one-hot) to max_k (uniform)."""

    Params = EntropyKParams

    def route(self, logits, site):
        import torch

        from semoe.routing.selection import prefix_routing, router_probs

        lo, hi = self.bounds(site)
        probs = router_probs(logits)
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1)
        h = (entropy / math.log(site.num_experts)).clamp(0, 1)
        counts = lo + torch.round((hi - lo) * h**self.params.power).long()
        top_probs, top_idx = torch.topk(probs, hi, dim=-1)
        return prefix_routing(top_probs, top_idx, counts, self.renormalize(site))
