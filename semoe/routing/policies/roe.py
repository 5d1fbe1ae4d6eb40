"""RoE (Roster of Experts) routing: Gumbel-top-k, i.e. top-k of ``logits + τ_layer · G``.

Adding Gumbel noise before top-k samples k experts without replacement from
``softmax(logits / τ)``; τ = 0 is the model's own routing. The mixing weights stay
the model's clean router probabilities of the sampled experts, so only the roster changes.
Ensembling K such samples per token is ``semoe.routing.ensemble``; as a plain policy (e.g. for
perplexity) every token routes noisily except the first ``clean_rows`` rows of a call.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from pydantic import Field

from semoe.routing.base import Routing, RoutingError
from semoe.routing.policies.common import BasePolicy, PolicyParams
from semoe.routing.registry import register_policy


def create_tau_map(num_layers: int, tau: float | Sequence[float] = 0.5, *, skip: int = 1, seed: int = 0) -> list[float]:
    """τ per MoE layer: ``tau`` (or uniform in ``[low, high]``, drawn once per layer with
    ``seed``), and 0 on the first and last ``skip`` layers, whose routing RoE leaves clean."""
    if isinstance(tau, (int, float)):
        taus = [float(tau)] * num_layers
    else:
        low, high = tau
        rng = random.Random(seed)
        taus = [rng.uniform(low, high) for _ in range(num_layers)]
    return [0.0 if i < skip or i >= num_layers - skip else t for i, t in enumerate(taus)]


class RoEParams(PolicyParams):
    tau: float | tuple[float, float] = Field(
        0.5, description="Gumbel scale per noisy layer, or a [low, high] range sampled once per layer"
    )
    skip: int = Field(1, ge=0, description="τ = 0 on the first and last `skip` MoE layers")
    tau_map: list[float] | None = Field(None, description="explicit τ per MoE layer (overrides tau/skip)")
    samples: int = Field(8, ge=1, description="K: routing samples averaged per token (one of them clean)")
    seed: int = 0


@register_policy("roe")
class RoEPolicy(BasePolicy):
    """Roster of Experts: Gumbel-noised top-k with a per-layer τ map."""

    Params = RoEParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.taus: list[float] = list(self.params.tau_map or [])
        self.clean_rows = 0
        self._generators: dict = {}

    def setting_words(self) -> list[str]:
        return [f"K={self.params.samples}", f"tau={self.params.tau}"]

    def fixed_k(self, own_k: int) -> int:
        return own_k  # per sample: the model's own k

    def bind(self, sites) -> None:
        p = self.params
        if p.tau_map is None:
            self.taus = create_tau_map(len(sites), p.tau, skip=p.skip, seed=p.seed)
        elif len(p.tau_map) != len(sites):
            raise RoutingError(f"roe: tau_map has {len(p.tau_map)} entries, the model {len(sites)} MoE layers")
        if any(t < 0 for t in self.taus):
            raise RoutingError("roe: τ must be ≥ 0")

    def _generator(self, device):
        import torch

        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device).manual_seed(self.params.seed)
        return gen

    def route(self, logits, site):
        import torch

        from semoe.routing.selection import router_probs, weights_for

        probs = router_probs(logits)
        tau = self.taus[site.index]
        c = self.clean_rows
        scores = probs
        if tau > 0 and logits.shape[0] > c:
            # Top-k is per row: clean rows rank by probability exactly as the model does, noisy
            # rows by logits (= log-probabilities up to a row constant) plus τ·Gumbel, −log Exp(1).
            exp = torch.empty(logits[c:].shape, device=logits.device)
            exp.exponential_(generator=self._generator(logits.device))
            noisy = logits[c:].float() - tau * exp.log_()
            scores = noisy if c == 0 else torch.cat([probs[:c], noisy])
        indices = torch.topk(scores, site.top_k, dim=-1).indices
        return Routing(weights=weights_for(probs.gather(-1, indices), self.renormalize(site)), indices=indices)

    def expects_change(self, site) -> bool:
        return self.taus[site.index] > 0

    def reset(self) -> None:
        self._generators.clear()

    def describe(self) -> dict:
        return {**self.params.model_dump(mode="json"), "resolved_tau_map": self.taus}
