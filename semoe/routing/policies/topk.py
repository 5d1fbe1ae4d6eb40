"""Fixed top-k with any k up to num_experts ("more experts"), with or without renormalisation."""

from __future__ import annotations

from pydantic import Field

from semoe.routing.base import RoutingError
from semoe.routing.policies.common import BasePolicy, PolicyParams
from semoe.routing.registry import register_policy


class TopKParams(PolicyParams):
    k: int | None = Field(None, ge=1, description="experts per token; None = the model's own top_k")


@register_policy("topk")
class TopKPolicy(BasePolicy):
    """Top-k routing with a chosen k, set on every router.

    Routers cache ``top_k`` when built, so editing ``config.num_experts_per_tok`` after
    loading changes nothing; this policy replaces the routing of each router instead.
    """

    Params = TopKParams

    def bind(self, sites) -> None:
        for site in sites:
            if self.k(site) > site.num_experts:
                raise RoutingError(f"topk: k={self.k(site)} > num_experts={site.num_experts} at {site.path}")

    def k(self, site) -> int:
        return self.params.k or site.top_k

    def setting_words(self) -> list[str]:
        return [f"k={self.params.k}" if self.params.k else "own k"]

    def fixed_k(self, own_k: int) -> int:
        return self.params.k or own_k

    def route(self, logits, site):
        from semoe.routing.selection import router_probs, topk_routing

        return topk_routing(router_probs(logits), self.k(site), self.renormalize(site))

    def expects_change(self, site) -> bool:
        return self.k(site) != site.top_k or self.renormalize(site) != site.renormalize
