"""Install a routing policy on every router of a model, reversibly.

Each router's ``forward`` is shadowed by an instance attribute that runs the original
forward (so logits, recurrent state and output recorders behave as before), asks the
policy for a :class:`Routing`, records statistics, and returns either the policy's
choice (``patch``) or the original one (``analyze``). Leaving the context deletes the
attributes, so the modules are exactly as they were.

Variable-k policies (BH, top-p, entropy-k) pad every token to the batch's largest k with
zero-weight slots, which the model's experts module would compute all the same. In patch
mode the experts module beside each router is shadowed too: when the routing it receives
has inactive slots, it runs the model's own experts code on the selected (token, expert)
pairs only (one pair per row) and sums each token's pairs, so the work follows the experts
actually chosen.
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
    skip_inactive: bool = True
    # site index -> (indices returned by its router, active mask) until its experts run
    pending: dict = field(default_factory=dict)


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
        if session.skip_inactive and site.experts is not None and routing.active is not None:
            session.pending[site.index] = (routing.indices, routing.active)
        return (logits, weights, routing.indices, *out[3:])


class _PatchedExperts:
    """Callable installed as ``experts.forward`` in patch mode: drops the inactive slots of
    the routing its router just returned (see the module docstring)."""

    _semoe_routing = True

    def __init__(self, session: RoutingSession, site: RouterSite, original):
        self.session, self.site, self.original = session, site, original

    def __call__(self, hidden_states, top_k_index, top_k_weights, *args, **kwargs):
        pending = self.session.pending.pop(self.site.index, None)
        # Only the routing this router produced, unchanged on its way here, is known to
        # have zero-weight slots; anything else runs as the block passes it.
        if pending is None or pending[0] is not top_k_index or args or kwargs:
            return self.original(hidden_states, top_k_index, top_k_weights, *args, **kwargs)
        active = pending[1]
        if bool(active.all()):
            return self.original(hidden_states, top_k_index, top_k_weights)
        token, slot = active.nonzero(as_tuple=True)
        pairs = self.original(
            hidden_states[token], top_k_index[token, slot].unsqueeze(1), top_k_weights[token, slot].unsqueeze(1)
        )  # (pairs, hidden): each selected (token, expert) once, already weighted
        return pairs.new_zeros((hidden_states.shape[0], pairs.shape[-1])).index_add_(0, token, pairs)


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
    skip_inactive: bool = True,
) -> Iterator[RoutingSession]:
    """Route ``model`` with ``policy`` inside the block; statistics on ``session.stats``.

    ``mode="patch"``: the policy routes. ``mode="analyze"``: the model's own routing runs
    and the policy's choices are only recorded. With ``guard`` (patch mode), a policy
    that should change routing is checked on a probe input first (:class:`RoutingNoOpError`).
    ``skip_inactive`` (patch mode): variable-k routing computes only each token's selected
    experts; False runs the zero-weight padding slots too (same outputs up to float
    summation order, kept for comparison).
    """
    if mode not in ("patch", "analyze"):
        raise ValueError(f"mode must be 'patch' or 'analyze', got {mode!r}")
    policy = make_policy(policy)
    sites = find_routers(model)
    policy.bind(sites)
    session = RoutingSession(model, policy, sites, mode, RoutingStats(sites), skip_inactive=skip_inactive)
    installed: list[tuple[Any, bool, Any]] = []

    def shadow(site: RouterSite, module, path: str, wrapper) -> None:
        current = module.forward
        if getattr(current, "_semoe_routing", False):
            raise RoutingError(f"{path} already has a routing policy installed")
        own = "forward" in module.__dict__
        installed.append((module, own, module.__dict__.get("forward")))
        module.forward = wrapper(session, site, current)

    try:
        for site in sites:
            shadow(site, site.module, site.path, _PatchedForward)
            if mode == "patch" and skip_inactive and site.experts is not None:
                shadow(site, site.experts, f"{site.path} (experts)", _PatchedExperts)
        if mode == "patch" and guard and any(policy.expects_change(s) for s in sites):
            _verify_changes(session, probe_ids)
        yield session
    finally:
        session.pending.clear()
        for module, own, previous in reversed(installed):
            if own:
                module.forward = previous
            else:
                del module.forward
