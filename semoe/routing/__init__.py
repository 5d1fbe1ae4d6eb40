"""MoE routing policies for HF MoE models (OLMoE, Mixtral, Qwen2-MoE, Qwen3-MoE, semoe's LM).

Two registries make the package extensible by adding files:

* ``ADAPTERS`` (``semoe/routing/adapters/``) map router module class names to a family
  adapter, so supporting a model family is one file;
* ``POLICIES`` (``semoe/routing/policies/``) map policy names (``topk``, ``bh``, ``roe``,
  ``top-p``, ``entropy-k``) to classes whose ``Params`` model validates config params.

Importing this package stays instant: torch and transformers are imported only by the
functions that need them (the names below are resolved lazily).
"""

from __future__ import annotations

import importlib
from typing import Any

from semoe.routing.base import (
    RouterAdapter,
    RoutingError,
    RoutingNoOpError,
    RoutingPolicy,
    UnsupportedModelError,
)
from semoe.routing.registry import ADAPTERS, POLICIES, register_policy


def benjamini_hochberg(p_values, alpha: float):
    """Benjamini–Hochberg step-up rejection mask along the last dimension (see calibration)."""
    from semoe.routing.calibration import benjamini_hochberg as _bh

    return _bh(p_values, alpha)


_LAZY = {
    "route_with": "semoe.routing.patch",
    "RoutingSession": "semoe.routing.patch",
    "make_policy": "semoe.routing.base",
    "find_routers": "semoe.routing.sites",
    "RouterSite": "semoe.routing.sites",
    "RoutingStats": "semoe.routing.stats",
    "EmpiricalNull": "semoe.routing.calibration",
    "fit_empirical_null": "semoe.routing.calibration",
    "roe_generate": "semoe.routing.ensemble",
    "roe_decode": "semoe.routing.ensemble",
    "roe_next_token_probs": "semoe.routing.ensemble",
    "ensemble_next_token_probs": "semoe.routing.ensemble",
    "create_tau_map": "semoe.routing.policies.roe",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'semoe.routing' has no attribute {name!r}")


__all__ = [
    "ADAPTERS",
    "POLICIES",
    "RouterAdapter",
    "RoutingError",
    "RoutingNoOpError",
    "RoutingPolicy",
    "UnsupportedModelError",
    "benjamini_hochberg",
    "register_policy",
    *_LAZY,
]
