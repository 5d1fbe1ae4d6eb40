"""Find a model's routers by class name through the adapter registry."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from semoe.routing.base import RouterAdapter, UnsupportedModelError, transformers_version
from semoe.routing.registry import ADAPTERS

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_MOE_HINT = re.compile(r"moe|router|expert|sparse|gate", re.IGNORECASE)


@dataclass
class RouterSite:
    """One router of the model; ``index`` counts MoE layers (dense layers have none)."""

    index: int
    path: str
    module: Any
    adapter: type[RouterAdapter]
    decoder_layer: int | None
    top_k: int
    num_experts: int
    renormalize: bool
    experts: Any = None  # the MoE block's experts module (``RouterAdapter.experts_attr``), if found


def adapter_index() -> dict[str, type[RouterAdapter]]:
    """Router class name → adapter, over every registered adapter."""

    index: dict[str, type[RouterAdapter]] = {}
    for name in ADAPTERS.names():
        adapter = ADAPTERS.get(name)
        for cls_name in adapter.router_classes:
            if cls_name in index and index[cls_name] is not adapter:
                others = f"{index[cls_name].family} and {adapter.family}"
                raise ValueError(f"router class {cls_name} is claimed by two adapters: {others}")
            index[cls_name] = adapter
    return index


def find_routers(model) -> list[RouterSite]:
    """Every router of ``model`` in layer order; :class:`UnsupportedModelError` when none is known."""
    index = adapter_index()
    sites: list[RouterSite] = []
    for path, module in model.named_modules():
        adapter = index.get(type(module).__name__)
        if adapter is None:
            continue
        adapter.verify()
        adapter.check_router(module, path)
        m = _LAYER_RE.search(path)
        sites.append(
            RouterSite(
                index=len(sites),
                path=path,
                module=module,
                adapter=adapter,
                decoder_layer=int(m.group(1)) if m else None,
                top_k=module.top_k,
                num_experts=module.num_experts,
                renormalize=adapter.renormalize(module),
                experts=_experts_module(model, path, module, adapter),
            )
        )
    if not sites:
        raise UnsupportedModelError(_unsupported_message(model, index))
    return sites


def _experts_module(model, path: str, router, adapter: type[RouterAdapter]):
    """The experts module beside ``router`` in its MoE block, or None when the block has none
    that matches it (then patch mode runs the experts as the block calls them)."""
    if adapter.experts_attr is None:
        return None
    parent = model.get_submodule(path.rpartition(".")[0])
    experts = getattr(parent, adapter.experts_attr, None)
    if experts is None or getattr(experts, "num_experts", None) != router.num_experts:
        return None
    return experts


def _unsupported_message(model, index: dict) -> str:
    hints = sorted({type(m).__name__ for _, m in model.named_modules() if _MOE_HINT.search(type(m).__name__)})
    msg = (
        f"no supported MoE router in {type(model).__name__} (transformers {transformers_version()}); "
        f"known router classes: {', '.join(sorted(index))}."
    )
    if hints:
        msg += (
            f" MoE-looking modules here: {', '.join(hints)} — add an adapter file in semoe/routing/adapters/ "
            f"if their router returns (router_logits, router_scores, router_indices)"
        )
    else:
        msg += " The model has no MoE layers."
    return msg
