"""The contracts shared by adapters, policies and the patcher (no torch at import time).

A router, as transformers 5.x builds it for OLMoE/Mixtral/Qwen-MoE, is its own module whose
``forward(hidden_states)`` returns ``(router_logits, router_scores, router_indices)`` with
shapes ``(T, E)``, ``(T, k)``, ``(T, k)``; the experts module consumes scores and indices.
A policy only has to turn logits into a :class:`Routing`, so every family that keeps this
contract is supported by a data-only :class:`RouterAdapter`.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from semoe.routing.registry import POLICIES


class RoutingError(RuntimeError):
    """Routing could not be installed or run as asked."""


class UnsupportedModelError(RoutingError):
    """The model has no router a registered adapter recognises (or the installed library changed)."""


class RoutingNoOpError(RoutingError):
    """An override that should change routing left expert choices and weights untouched."""


def transformers_version() -> str:
    try:
        import transformers

        return transformers.__version__
    except ImportError:
        return "not installed"


class RouterAdapter:
    """One model family's router: class names, where they live, and its routing conventions.

    Subclasses are pure data; adding a family is adding a file in ``adapters/`` with a
    subclass registered in ``ADAPTERS``. Routers are matched by class *name*, so a module
    that mirrors the OLMoE router interface elsewhere (semoe's own LM) needs only an entry.
    """

    family: ClassVar[str] = ""
    module: ClassVar[str] = ""  # importable module that defines the router classes
    router_classes: ClassVar[tuple[str, ...]] = ()
    # True/False when the architecture fixes it (Mixtral always renormalises); None: read
    # the router's ``norm_topk_prob`` attribute.
    renormalizes: ClassVar[bool | None] = None
    # OLMoE/Qwen cast top-k weights back to the logits dtype, Mixtral keeps float32.
    scores_in_logits_dtype: ClassVar[bool] = True
    # The family's causal LM computes logits as a bias-free ``lm_head`` on the base model's
    # last hidden state, nothing else (lets RoE run the head itself, see semoe.routing.ensemble).
    plain_lm_head: ClassVar[bool] = False
    # Sibling of the router in the MoE block that runs the experts as
    # ``forward(hidden_states, top_k_index, top_k_weights)``; patch mode wraps it so that
    # variable-k routing computes only the selected (token, expert) pairs. None: no such module.
    experts_attr: ClassVar[str | None] = "experts"
    _verified: ClassVar[bool] = False

    @classmethod
    def verify(cls) -> None:
        """Check that the installed library still defines the router classes with the
        ``forward(hidden_states)`` signature this adapter was written against."""
        if cls._verified:
            return
        where = f"{cls.module} (transformers {transformers_version()})"
        try:
            mod = importlib.import_module(cls.module)
        except ImportError as e:
            raise UnsupportedModelError(f"{cls.family} routing adapter cannot import {where}: {e}") from None
        for name in cls.router_classes:
            klass = getattr(mod, name, None)
            if klass is None:
                raise UnsupportedModelError(
                    f"{where} defines no {name}: the {cls.family} adapter targets transformers 5.x, where "
                    f"the router is its own module returning (router_logits, router_scores, router_indices); "
                    f"update semoe/routing/adapters for this library version"
                )
            params = list(inspect.signature(klass.forward).parameters)
            if params[:2] != ["self", "hidden_states"]:
                raise UnsupportedModelError(
                    f"{where}: {name}.forward{tuple(params)} is not forward(self, hidden_states); "
                    f"the {cls.family} adapter does not know this router interface"
                )
        cls._verified = True

    @classmethod
    def check_router(cls, router: Any, path: str) -> None:
        for attr in ("top_k", "num_experts"):
            if not isinstance(getattr(router, attr, None), int):
                raise UnsupportedModelError(
                    f"router {path} ({type(router).__name__}) has no integer {attr!r}; "
                    f"modules registered with the {cls.family} adapter must mirror OlmoeTopKRouter"
                )
        if not 1 <= router.top_k <= router.num_experts:
            raise UnsupportedModelError(f"router {path}: top_k={router.top_k} outside 1..{router.num_experts}")

    @classmethod
    def renormalize(cls, router: Any) -> bool:
        if cls.renormalizes is not None:
            return cls.renormalizes
        return bool(getattr(router, "norm_topk_prob", False))


@dataclass
class Routing:
    """A policy's decision for ``T`` tokens, padded to ``kmax`` slots.

    Only the first ``counts[t]`` slots of token ``t`` are active (all when ``counts`` is
    None; ``active`` is the matching (T, kmax) mask). Inactive slots repeat the token's
    first expert with weight 0, so every experts implementation (eager loop, grouped_mm,
    batched_mm) accepts them and the output is unchanged; they would still cost one more
    pass of that expert each, which patch mode avoids by running only the active slots
    (``semoe.routing.patch``). ``floor``/``ceiling`` mark tokens
    whose wanted k was raised to ``min_k`` or cut to ``max_k`` (None for policies without
    bounds).
    """

    weights: Any  # (T, kmax) float32
    indices: Any  # (T, kmax) int64
    counts: Any = None  # (T,) int64
    active: Any = None  # (T, kmax) bool
    floor: Any = None  # (T,) bool
    ceiling: Any = None  # (T,) bool


class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoutingPolicy:
    """Turns router logits into a :class:`Routing`; params are validated by ``Params``."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = _NoParams

    def __init__(self, **params: Any):
        self.params = self.Params(**params)

    def needs_calibration(self) -> bool:
        """Whether :meth:`calibrate` must run on calibration text before routing."""
        return False

    def setting_words(self) -> list[str]:
        """The params that define this grid cell, in words (policies name their own)."""
        return [
            f"{k}={v}" for k, v in sorted(self.params.model_dump(exclude_defaults=True).items()) if k != "renormalize"
        ]

    def setting(self) -> str:
        """The grid cell in words, e.g. ``k=4 renorm``, ``alpha=0.05 calibrated``, ``K=8 tau=0.5``."""
        words = self.setting_words()
        renormalize = getattr(self.params, "renormalize", None)
        if renormalize is not None:
            words.append("renorm" if renormalize else "no-renorm")
        return " ".join(words)

    def fixed_k(self, own_k: int) -> int | None:
        """Experts per token when the policy fixes it (``own_k``: the model's); None when adaptive."""
        return None

    def calibrate(self, model, batches) -> None:
        """Fit whatever the policy learns from calibration text (e.g. BH's empirical null)."""

    def bind(self, sites: list) -> None:
        """Validate the params against the model's routers before anything runs."""

    def route(self, logits, site) -> Routing:
        raise NotImplementedError

    def expects_change(self, site) -> bool:
        """Whether this policy should route ``site`` differently from the model (no-op guard)."""
        return True

    def reset(self) -> None:
        """Restart any randomness (called after the guard's probe forward)."""

    def describe(self) -> dict:
        return self.params.model_dump(mode="json")

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.describe().items())})"


def make_policy(spec: Any) -> RoutingPolicy:
    """A policy from an instance, a registered name, or a ``{name, params}`` mapping/object."""

    if isinstance(spec, RoutingPolicy):
        return spec
    if isinstance(spec, str):
        return POLICIES.get(spec)()
    if isinstance(spec, dict):
        name, params = spec["name"], spec.get("params") or {}
    else:
        name, params = spec.name, spec.params or {}
    return POLICIES.get(name)(**params)
