"""Passages → their LoRA experts, augmenting and training on demand.

Both steps are cached in the artifact cache (augmentations per passage text and
augmenting model, experts per training content and hyperparameters), so a passage is
augmented and trained once across runs; methods only ask for passages' experts. New
catalogue rows (``augmentations``, ``experts``) are collected for the single store writer.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

from semoe.data.schema import Passage
from semoe.experts.format import LoraExpert
from semoe.storage.artifacts import ArtifactCache

if TYPE_CHECKING:
    from semoe.config import AugmentConfig, ExpertConfig, ModelConfig
    from semoe.generation.lm import ChatLM


class ExpertProvider:
    """Experts of passages for ``lm`` (the model of ``model``), made with ``augment`` and
    ``experts`` settings, cached under ``cache_root``."""

    def __init__(
        self, lm: "ChatLM", model: "ModelConfig", augment: "AugmentConfig", experts: "ExpertConfig", cache_root: str
    ):
        self.lm = lm
        self.model = model
        self.augment = augment
        self.experts = experts
        self.cache_root = cache_root
        self.cache = ArtifactCache(cache_root)
        self._experts: dict[str, LoraExpert | None] = {}  # passage id -> expert (None: augmentation failed)
        self.rows: dict[str, list[dict]] = {"augmentations": [], "experts": []}
        self.trained = 0
        self.seconds = 0.0

    def _augmenting_lm(self) -> tuple["ChatLM", str]:
        from semoe.generation.lm import ChatLM
        from semoe.models.loading import load_model

        spec = self.augment.augmenting_model(self.model.spec)
        if spec == self.model.spec:
            return self.lm, spec
        model, tok = load_model(spec, self.cache_root, self.model.dtype, self.model.device)
        return ChatLM(model, tok), spec

    def ensure(self, passages: Sequence[Passage]) -> None:
        """Augment and train (batched) whatever of ``passages`` has no expert loaded yet."""
        import torch

        from semoe.experts.augment import augment_passages
        from semoe.experts.cache import ensure_experts
        from semoe.experts.inference import load_experts
        from semoe.experts.training_data import TrainingItem

        todo = list({p.id: p for p in passages if p.id not in self._experts}.values())
        if not todo:
            return
        t0 = time.perf_counter()
        aug_lm, aug_spec = self._augmenting_lm()
        augs = augment_passages(todo, self.augment, aug_lm, self.cache, model_spec=aug_spec)
        self.rows["augmentations"].extend(a.to_row() for a in augs)
        ok = [(p, a) for p, a in zip(todo, augs) if a.status == "ok"]
        for p, a in zip(todo, augs):
            if a.status != "ok":
                self._experts[p.id] = None
        items = [TrainingItem.create(p.id, p.text, a.rewrites, a.qa) for p, a in ok]
        with torch.inference_mode(False), torch.enable_grad():  # callers may be decoding (SEMoE's trigger)
            records = ensure_experts(items, self.model.spec, self.experts, self.cache, self.lm.model, self.lm.tokenizer)
        self.lm.model.eval()
        for rec in records:
            self.rows["experts"].append(rec.to_row())
            self.trained += rec.trained
            self._experts[rec.passage_id] = load_experts(
                [rec.path], device=str(self.lm.device), model=self.lm.model, base_model=self.model.spec
            )[0]
        self.seconds += time.perf_counter() - t0

    def experts_for(self, passages: Sequence[Passage]) -> list[LoraExpert]:
        """The experts of ``passages`` that could be built (a failed augmentation has none)."""
        self.ensure(passages)
        return [e for e in (self._experts[p.id] for p in passages) if e is not None]

    def drain_rows(self) -> dict[str, list[dict]]:
        rows, self.rows = self.rows, {"augmentations": [], "experts": []}
        return rows
