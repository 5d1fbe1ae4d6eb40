"""Params and helpers shared by the policies (the renormalisation choice, k bounds)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from semoe.routing.base import RoutingError, RoutingPolicy


class PolicyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    renormalize: bool | None = Field(
        None, description="rescale the selected weights to sum to 1; None = the model's own convention"
    )


class BoundedParams(PolicyParams):
    min_k: int = Field(1, ge=1, description="fewest experts per token (floor)")
    max_k: int | None = Field(None, ge=1, description="most experts per token (ceiling); None = all experts")

    @model_validator(mode="after")
    def _ordered(self):
        if self.max_k is not None and self.max_k < self.min_k:
            raise ValueError(f"max_k={self.max_k} < min_k={self.min_k}")
        return self


class BasePolicy(RoutingPolicy):
    def renormalize(self, site) -> bool:
        r = self.params.renormalize
        return site.renormalize if r is None else r


class BoundedPolicy(BasePolicy):
    """A policy that picks a per-token k within [min_k, max_k]."""

    def bind(self, sites) -> None:
        for site in sites:
            for name in ("min_k", "max_k"):
                k = getattr(self.params, name)
                if k is not None and k > site.num_experts:
                    raise RoutingError(f"{self.name}: {name}={k} > num_experts={site.num_experts} at {site.path}")

    def bounds(self, site) -> tuple[int, int]:
        return self.params.min_k, self.params.max_k or site.num_experts
