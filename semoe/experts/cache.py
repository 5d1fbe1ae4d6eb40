"""Passage experts in the artifact cache: keyed by content, trained only when missing.

:func:`ensure_experts` keys each expert by content (passage and augmentation text, base
model, training settings, the initial LoRA's hash), stores it in the artifact cache and
trains (with the lockstep trainer) only those not there yet. Each expert comes back as an
:class:`ExpertRecord`: its row of the ``experts`` table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from semoe.config import ExpertConfig
from semoe.experts.format import save_expert
from semoe.experts.lora_init import ensure_init, file_sha256
from semoe.experts.training_data import TrainingItem, TrainResult
from semoe.progress import RateMeter
from semoe.storage.artifacts import ArtifactCache, content_key
from semoe.storage.rows import ExpertRow

log = logging.getLogger(__name__)

EXPERTS_KIND = "experts"
EXPERT_FILE = "expert.safetensors"
# Bump when a change to the training data, the initial LoRA or the trainers changes the
# experts trained from the same inputs.
TRAINER_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class ExpertRecord(ExpertRow):
    """One expert's row of the ``experts`` table, and whether this call trained it."""

    trained: bool = field(default=False, compare=False)  # not a column

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return ExpertRow.columns()

    def to_row(self) -> dict:
        """A row of the ``experts`` table (``semoe.storage.rows.ExpertRow``)."""
        return self.as_dict()


def expert_key(item: TrainingItem, model_spec: str, cfg: ExpertConfig, init_sha256: str) -> str:
    return content_key("expert", TRAINER_VERSION, item.content(), model_spec, cfg.identity(), init_sha256)


def _store(out: Path, result: TrainResult, model_spec: str, cfg: ExpertConfig, key: str, init_sha256: str) -> dict:
    result.expert.meta.update(
        {
            "base_model": model_spec,
            "expert_key": key,
            "init_sha256": init_sha256,
            "config": json.dumps(cfg.identity(), sort_keys=True),
        }
    )
    path = out / EXPERT_FILE
    save_expert(path, result.expert)
    return {
        "passage_id": result.expert.passage_id,
        "loss_before": result.loss_before,
        "loss_after": result.loss_after,
        "train_seconds": result.seconds,
        "sequences": result.sequences,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
    }


def ensure_experts(
    items: Sequence[TrainingItem], model_spec: str, cfg: ExpertConfig, cache: ArtifactCache, model, tokenizer
) -> list[ExpertRecord]:
    """Records for ``items`` (in order), training (batched) only experts not yet cached.
    Items with identical content share one expert."""
    from semoe.experts.lockstep import iter_trained_experts  # torch at import: only when training

    init_sha, init = ensure_init(model, model_spec, cfg, cache)
    keys = [expert_key(it, model_spec, cfg, init_sha) for it in items]
    missing: dict[str, TrainingItem] = {}
    for k, it in zip(keys, items):
        if not cache.is_complete(EXPERTS_KIND, k):
            missing.setdefault(k, it)
    todo = list(missing.items())
    meter = RateMeter("expert training", len(todo), "experts", log.info)
    for i, result in iter_trained_experts(model, tokenizer, [it for _, it in todo], cfg, init):
        key = todo[i][0]
        cache.get_or_build(
            EXPERTS_KIND, key, lambda out, result=result, key=key: _store(out, result, model_spec, cfg, key, init_sha)
        )
        meter.advance()
    records = []
    for k, it in zip(keys, items):
        info = cache.info(EXPERTS_KIND, k)
        records.append(
            ExpertRecord(
                expert_key=k,
                passage_id=it.passage_id,
                path=str(cache.path(EXPERTS_KIND, k) / EXPERT_FILE),
                base_model=model_spec,
                rank=cfg.rank,
                alpha=cfg.alpha,
                lr=cfg.lr,
                epochs=cfg.epochs,
                targets=list(cfg.targets),
                loss_before=info["loss_before"],
                loss_after=info["loss_after"],
                seconds=info["train_seconds"],
                bytes=info["bytes"],
                sha256=info["sha256"],
                trained=k in missing,
            )
        )
    return records
