"""Install a routing policy on every router of a model, reversibly.

Each router's ``forward`` is shadowed by an instance attribute that runs the original
forward (so logits, recurrent state and output recorders behave as before), asks the
policy for a :class:`Routing`, records statistics, and returns either the policy's
choice (``patch``) or the original one (``analyze``). Leaving the context deletes the
attributes, so the modules are exactly as they were.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import torch

from semoe.routing.base import RoutingError, RoutingNoOpError, RoutingPolicy, make_policy
from semoe.routing.sites import RouterSite, find_routers
from semoe.routing.stats import RoutingStats

Mode = Literal["patch", "analyze"]


@dataclass
class _Probe:
    calls: int = 0
    changed: set = field(default_factory=set)


@dataclass
class RoutingSession:
    model: Any
    policy: RoutingPolicy
    sites: list[RouterSite]
    mode: Mode
    stats: RoutingStats
    probe: _Probe | None = None


def _dense(indices: torch.Tensor, weights: torch.Tensor, num_experts: int) -> torch.Tensor:
    out = torch.zeros((indices.shape[0], num_experts), dtype=torch.float32, device=indices.device)
    return out.scatter_add_(1, indices, weights.float())


class _PatchedForward:
    """Callable installed as ``router.forward``."""

    _semoe_routing = True

    def __init__(self, session: RoutingSession, site: RouterSite, original):
        self.session, self.site, self.original = session, site, original

    def __call__(self, hidden_states, *args, **kwargs):
        out = self.original(hidden_states, *args, **kwargs)
        logits, scores, indices = out[:3]
        session, site = self.session, self.site
        routing = session.policy.route(logits, site)
        session.stats.record(site.index, routing, indices)
        if session.probe is not None:
            session.probe.calls += 1
            mine = _dense(routing.indices, routing.weights, site.num_experts)
            theirs = _dense(indices, scores, site.num_experts)
            if not torch.equal(mine > 0, theirs > 0) or not torch.allclose(mine, theirs, rtol=0, atol=1e-6):
                session.probe.changed.add(site.index)
        if session.mode == "analyze":
            return out
        weights = routing.weights.to(logits.dtype) if site.adapter.scores_in_logits_dtype else routing.weights
        return (logits, weights, routing.indices, *out[3:])


def default_probe(model, length: int = 32) -> torch.Tensor:
    """Fixed random token ids: routing differences show on any input."""
    vocab = getattr(model, "vocab_size", None) or model.config.vocab_size
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(0))
    return ids.to(next(model.parameters()).device)


def _verify_changes(session: RoutingSession, probe_ids: torch.Tensor | None) -> None:
    """The no-op guard: a probe forward must reach the patched routers and, somewhere,
    select different experts or weights than the model would have."""
    ids = default_probe(session.model) if probe_ids is None else probe_ids
    session.probe = _Probe()
    try:
        with torch.no_grad():
            session.model(input_ids=ids, use_cache=False)
        probe = session.probe
    finally:
        session.probe = None
        session.stats.reset()
        session.policy.reset()
    n = len(session.sites)
    if probe.calls == 0:
        raise RoutingNoOpError(
            f"{session.policy!r} was installed on {n} routers but none ran during the probe forward: "
            f"the model does not call router.forward (compiled or fused MoE?), so the override would do nothing"
        )
    if not probe.changed:
        raise RoutingNoOpError(
            f"{session.policy!r} should change routing but chose exactly the model's own experts and weights "
            f"in all {n} MoE layers on a {ids.shape[-1]}-token probe; the override is a no-op"
        )


@contextmanager
def route_with(
    model,
    policy: RoutingPolicy | str | dict,
    *,
    mode: Mode = "patch",
    guard: bool = True,
    probe_ids: torch.Tensor | None = None,
) -> Iterator[RoutingSession]:
    """Route ``model`` with ``policy`` inside the block; statistics on ``session.stats``.

    ``mode="patch"``: the policy routes. ``mode="analyze"``: the model's own routing runs
    and the policy's choices are only recorded. With ``guard`` (patch mode), a policy
    that should change routing is checked on a probe input first (:class:`RoutingNoOpError`).
    """
    if mode not in ("patch", "analyze"):
        raise ValueError(f"mode must be 'patch' or 'analyze', got {mode!r}")
    policy = make_policy(policy)
    sites = find_routers(model)
    policy.bind(sites)
    session = RoutingSession(model, policy, sites, mode, RoutingStats(sites))
    installed: list[tuple[RouterSite, bool, Any]] = []
    try:
        for site in sites:
            current = site.module.forward
            if getattr(current, "_semoe_routing", False):
                raise RoutingError(f"{site.path} already has a routing policy installed")
            own = "forward" in site.module.__dict__
            installed.append((site, own, site.module.__dict__.get("forward")))
            site.module.forward = _PatchedForward(session, site, current)
        if mode == "patch" and guard and any(policy.expects_change(s) for s in sites):
            _verify_changes(session, probe_ids)
        yield session
    finally:
        for site, own, previous in reversed(installed):
            if own:
                site.module.forward = previous
            else:
                del site.module.forward
