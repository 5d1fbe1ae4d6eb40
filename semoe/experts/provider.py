"""Passages → their LoRA experts: augmented and trained on demand (PRAG), or translated by a
parameter translator (DyPRAG, ``experts.source: translator``).

Augmentation and training are cached in the artifact cache (augmentations per passage text
and augmenting model, experts per training content and hyperparameters), so a passage is
augmented and trained once across runs; methods only ask for passages' experts. New
catalogue rows (``augmentations``, ``experts``, ``translator_training``) are collected for
the single store writer. Translated experts live in memory only (``translator.save_experts``
writes them to the cache too).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Sequence

from semoe.data.schema import Passage
from semoe.experts.augment import augment_passages
from semoe.experts.cache import ensure_experts
from semoe.experts.format import LoraExpert, save_expert
from semoe.experts.inference import load_experts
from semoe.experts.training_data import TrainingItem
from semoe.experts.translator import (
    Pair,
    TranslatorError,
    built_translator,
    ensure_translator,
    load_translator,
    recipe_key,
    translate,
)
from semoe.generation.lm import ChatLM
from semoe.models.loading import load_model
from semoe.storage.artifacts import ArtifactCache, content_key

if TYPE_CHECKING:
    from semoe.config import AugmentConfig, ExpertConfig, ModelConfig
    from semoe.experts.training_data import TrainingItem
    from semoe.experts.translator import ParameterTranslator, TranslatorRecord
    from semoe.generation.lm import ChatLM

TRANSLATED_KIND = "translated-experts"
_TRANSLATORS: dict[tuple[str, int], "ParameterTranslator"] = {}  # (checkpoint path, id(model)) -> loaded


class ExpertProvider:
    """Experts of passages for ``lm`` (the model of ``model``), made with ``augment`` and
    ``experts`` settings, cached under ``cache_root``. ``corpus_key``: the corpus a built
    translator was trained on (``experts.source: translator`` without a ``checkpoint``)."""

    def __init__(
        self,
        lm: "ChatLM",
        model: "ModelConfig",
        augment: "AugmentConfig",
        experts: "ExpertConfig",
        cache_root: str,
        corpus_key: str | None = None,
    ):
        self.lm = lm
        self.model = model
        self.augment = augment
        self.experts = experts
        self.cache_root = cache_root
        self.corpus_key = corpus_key
        self.cache = ArtifactCache(cache_root)
        self._experts: dict[str, LoraExpert | None] = {}  # passage id -> expert (None: augmentation failed)
        # passage id -> (what its PRAG expert learned from, the expert's key, the expert)
        self._trained: dict[str, tuple["TrainingItem", str, LoraExpert]] = {}
        self.rows: dict[str, list[dict]] = {"augmentations": [], "experts": []}
        self.trained = 0
        self.translated = 0
        self.seconds = 0.0

    def _augmenting_lm(self) -> tuple["ChatLM", str]:
        spec = self.augment.augmenting_model(self.model.spec)
        if spec == self.model.spec:
            return self.lm, spec
        model, tok = load_model(spec, self.cache_root, self.model.dtype, self.model.device)
        return ChatLM(model, tok), spec

    def ensure(self, passages: Sequence[Passage]) -> None:
        """Make (batched) whatever of ``passages`` has no expert loaded yet."""
        todo = list({p.id: p for p in passages if p.id not in self._experts}.values())
        if not todo:
            return
        t0 = time.perf_counter()
        if self.experts.source == "translator":
            self._translate(todo)
        else:
            self._train(todo)
            self._experts.update((p.id, self._trained[p.id][2] if p.id in self._trained else None) for p in todo)
        self.seconds += time.perf_counter() - t0

    def _train(self, todo: list[Passage]) -> None:
        """Augment, then train the LoRA of each passage whose augmentation succeeded (PRAG),
        into ``_trained``."""
        import torch

        aug_lm, aug_spec = self._augmenting_lm()
        augs = augment_passages(todo, self.augment, aug_lm, self.cache, model_spec=aug_spec)
        self.rows["augmentations"].extend(a.to_row() for a in augs)
        ok = [(p, a) for p, a in zip(todo, augs) if a.status == "ok"]
        items = [TrainingItem.create(p.id, p.text, a.rewrites, a.qa) for p, a in ok]
        with torch.inference_mode(False), torch.enable_grad():  # callers may be decoding (SEMoE's trigger)
            records = ensure_experts(
                items, self.model.spec, self.experts.trained(), self.cache, self.lm.model, self.lm.tokenizer
            )
        self.lm.model.eval()
        for item, rec in zip(items, records):
            self.rows["experts"].append(rec.to_row())
            self.trained += rec.trained
            expert = load_experts(
                [rec.path], device=str(self.lm.device), model=self.lm.model, base_model=self.model.spec
            )
            self._trained[rec.passage_id] = (item, rec.expert_key, expert[0])

    # ------------------------------------------------------------------ translator

    def translator_recipe(self) -> str:
        return recipe_key(self.model.spec, self.corpus_key, self.augment.identity(), self.experts)

    def translator_path(self) -> str:
        """The checkpoint this provider translates with: ``translator.checkpoint``, else the one
        built for these settings and corpus; a ``TranslatorError`` when none was built."""

        given = self.experts.translator.checkpoint
        if given is not None:
            return given
        record = built_translator(self.cache, self.translator_recipe())
        if record is None:
            raise TranslatorError(
                f"no parameter translator built for model {self.model.spec!r} and these experts settings on corpus "
                f"{self.corpus_key}: build it first (`semoe run` does; the build_translator flow alone)"
            )
        return record.path

    def translator(self) -> "ParameterTranslator":
        """The translator, loaded once per process and model."""

        path = self.translator_path()
        loaded = _TRANSLATORS.get((path, id(self.lm.model)))
        if loaded is None:
            loaded = load_translator(path, model=self.lm.model, device=str(self.lm.device))
            _TRANSLATORS[(path, id(self.lm.model))] = loaded
        return loaded

    def _translate(self, todo: list[Passage]) -> None:
        translator, tcfg = self.translator(), self.experts.translator
        experts = translate(
            translator,
            self.lm.model,
            self.lm.tokenizer,
            [(p.id, p.text) for p in todo],
            tcfg.max_passage_tokens,
            tcfg.batch_passages,
        )
        for p, expert in zip(todo, experts):
            self._experts[p.id] = expert
            if tcfg.save_experts:
                key = content_key("translated", translator.key, p.text, tcfg.max_passage_tokens)
                self.cache.get_or_build(
                    TRANSLATED_KIND, key, lambda out, e=expert: save_expert(out / "expert.safetensors", e) or None
                )
        self.translated += len(experts)

    def build_translator(self, passages: Callable[[], Sequence[Passage]]) -> "TranslatorRecord":
        """The translator of these settings on ``self.corpus_key``, trained (when not built) on
        the PRAG experts of the passages ``passages()`` lists that augment successfully; their
        catalogue rows and the training curve (``translator_training``) are added to ``rows``."""
        import torch

        def pairs() -> list[Pair]:
            todo = list({p.id: p for p in passages()}.values())
            self._train([p for p in todo if p.id not in self._trained])
            return [Pair(*self._trained[p.id]) for p in todo if p.id in self._trained]

        t0 = time.perf_counter()
        with torch.inference_mode(False):
            record = ensure_translator(
                self.cache,
                self.translator_recipe(),
                pairs,
                self.model.spec,
                self.experts,
                self.lm.model,
                self.lm.tokenizer,
            )
        self.lm.model.eval()
        self.rows.setdefault("translator_training", []).extend(record.curve)
        self.seconds += time.perf_counter() - t0
        return record

    def experts_for(self, passages: Sequence[Passage]) -> list[LoraExpert]:
        """The experts of ``passages`` that could be built (a failed augmentation has none)."""
        self.ensure(passages)
        return [e for e in (self._experts[p.id] for p in passages) if e is not None]

    def drain_rows(self) -> dict[str, list[dict]]:
        rows, self.rows = self.rows, {"augmentations": [], "experts": []}
        return rows
