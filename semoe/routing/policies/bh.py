"""Benjamini–Hochberg routing: each expert is a hypothesis "this expert matters for this token";
the experts BH rejects at FDR level alpha run, clamped to [min_k, max_k].

``p_values="softmax"`` is the seed's ``1 − softmax``; it almost never rejects over many
experts (see ``semoe.routing.calibration``) and the floor-hit rate in the stats shows it.
``p_values="calibrated"`` uses an empirical null per layer (``fit_empirical_null``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from semoe.routing.base import RoutingError
from semoe.routing.policies.common import BoundedParams, BoundedPolicy
from semoe.routing.registry import register_policy


class BHParams(BoundedParams):
    alpha: float = Field(0.1, gt=0, le=1, description="false discovery rate level")
    temperature: float = Field(1.0, gt=0, description="router softmax temperature for the p-values (weights use 1)")
    p_values: Literal["softmax", "calibrated"] = "softmax"
    null: Any = Field(
        None, description="calibrated mode: an EmpiricalNull or a saved one's path; None = fit it with calibrate()"
    )


@register_policy("bh")
class BHPolicy(BoundedPolicy):
    """Benjamini–Hochberg expert selection with floor/ceiling (min_k/max_k)."""

    Params = BHParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._null = None
        self._levels: dict = {}

    def needs_calibration(self) -> bool:
        return self.params.p_values == "calibrated" and self.params.null is None

    def setting_words(self) -> list[str]:
        return [f"alpha={self.params.alpha}", self.params.p_values]

    def calibrate(self, model, batches) -> None:
        from semoe.routing.calibration import fit_empirical_null

        self.params.null = fit_empirical_null(model, batches, temperature=self.params.temperature)

    def bind(self, sites) -> None:
        super().bind(sites)
        if self.params.p_values != "calibrated":
            return
        from semoe.routing.calibration import EmpiricalNull

        null = self.params.null
        if null is None:
            raise RoutingError("bh: p_values='calibrated' needs a null: calibrate(model, batches) or null=<path>")
        self._null = null if isinstance(null, EmpiricalNull) else EmpiricalNull.load(null)
        if len(self._null.samples) != len(sites):
            raise RoutingError(f"bh: the null has {len(self._null.samples)} layers, the model {len(sites)} MoE layers")
        if self._null.temperature != self.params.temperature:
            raise RoutingError(
                f"bh: null fitted at temperature {self._null.temperature}, policy uses {self.params.temperature}"
            )

    def route(self, logits, site):
        import torch

        from semoe.routing.calibration import bh_levels, largest_passing, router_statistic
        from semoe.routing.selection import bounded, prefix_routing, router_probs

        p = self.params
        m = logits.shape[-1]
        probs, idx = router_probs(logits).sort(dim=-1, descending=True)
        if p.p_values == "softmax":
            # p = 1 − softmax ≤ i·α/m, on the tempered probabilities in the same (descending) order
            tempered = probs if p.temperature == 1.0 else router_probs(logits, p.temperature).gather(-1, idx)
            levels = self._levels.get((m, logits.device))
            if levels is None:
                levels = self._levels[(m, logits.device)] = torch.tensor(bh_levels(m, p.alpha), device=logits.device)
            ok = 1 - tempered <= levels
        else:
            if self._null.statistic == "prob" and p.temperature == 1.0:
                stat = probs
            else:
                stat = router_statistic(logits, self._null.statistic, p.temperature).gather(-1, idx)
            ok = stat > self._null.rejection_thresholds(site.index, p.alpha, m, logits.device)
        counts, floor, ceiling = bounded(largest_passing(ok), *self.bounds(site))
        return prefix_routing(probs, idx, counts, self.renormalize(site), floor, ceiling)

    def describe(self) -> dict:
        d = self.params.model_dump(mode="json", exclude={"null"})
        null = self.params.null
        d["null"] = null if null is None or isinstance(null, str) else null.describe()
        return d
