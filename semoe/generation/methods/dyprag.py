"""DyPRAG's two modes (Tan et al. 2025, github.com/Trae1ounG/DyPRAG): PRAG's ``prag`` and
``combine`` with every passage expert made by the parameter translator
(``experts.source: translator``) instead of augmentation and training. Any other expert
method runs with translator experts through its params (``{name: semoe, params: {experts:
{source: translator}}}``)."""

from __future__ import annotations

from typing import Mapping

from semoe.config import ConfigError, MethodSpec, Section, deep_merge
from semoe.generation import METHODS
from semoe.generation.methods.parametric import Combine, Prag


class _TranslatorExperts:
    """Resolves its params with ``experts.source: translator``; asking for another source is an error."""

    @classmethod
    def resolve(cls, spec: MethodSpec, shared: Mapping[str, Section]) -> Section:
        source = (spec.params.get("experts") or {}).get("source", "translator")
        if source != "translator":
            raise ConfigError(
                f"methods: {spec.display_name!r} ({spec.name}) params: experts.source: {spec.name} always uses "
                f"translator experts, not {source!r} (PRAG's trained experts: `prag` / `combine`)"
            )
        forced = spec.model_copy(update={"params": deep_merge(spec.params, {"experts": {"source": "translator"}})})
        return super().resolve(forced, shared)


@METHODS.register("dyprag", "DyPRAG: top-k passages' experts from the parameter translator, no passages in context")
class Dyprag(_TranslatorExperts, Prag):
    pass


@METHODS.register("dyprag-combine", "DyPRAG combine: translator experts and the passages in context")
class DypragCombine(_TranslatorExperts, Combine):
    pass
