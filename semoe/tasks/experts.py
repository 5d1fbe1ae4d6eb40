"""Prefect tasks around :class:`semoe.experts.provider.ExpertProvider`: augment and train
the experts of a chunk of passages (cached per passage, so a rerun trains nothing); build a
parameter translator (cached by its settings and corpus)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from semoe.config import SemoeConfig
from semoe.data.schema import Passage
from semoe.evaluation.answer_chunks import expert_provider, load_lm
from semoe.evaluation.passage_experts import translator_passages
from semoe.generation.methods.parametric import ExpertParams
from semoe.storage.artifacts import content_key
from semoe.tasks.common import hand_back
from semoe.tasks.gpu import gpu_slot
from semoe.tasks.interrupts import interruptible
from semoe.tasks.threads import use_threads


@task(name="build-experts", task_run_name="experts-{first_id}", cache_policy=NONE)
@interruptible
def build_experts_task(
    config: SemoeConfig, params: ExpertParams, passages: list[dict], first_id: str, shard_root: str | None = None
) -> dict[str, list[dict]] | str:
    """The catalogue rows (``augmentations``, ``experts``) of the experts of ``passages`` made
    with ``params`` (augment + experts settings), handed back to the store writer (``hand_back``)."""

    use_threads(config)
    with gpu_slot(config):
        provider = expert_provider(config, load_lm(config), params)
        provider.ensure([Passage(**p) for p in passages])
    key = "experts-" + content_key([p["id"] for p in passages], params.identity())
    return hand_back(provider.drain_rows(), shard_root, key)


@task(name="build-translator", task_run_name="translator-{corpus_key}", cache_policy=NONE)
@interruptible
def build_translator_task(
    config: SemoeConfig, params: ExpertParams, corpus_key: str, shard_root: str | None = None
) -> dict[str, list[dict]] | str:
    """The rows (``augmentations``, ``experts`` of its training passages, ``translator_training``)
    of the parameter translator of ``params`` on the corpus ``corpus_key``, handed back to the
    store writer; nothing is trained when it was built before."""

    use_threads(config)
    with gpu_slot(config):
        provider = expert_provider(config, load_lm(config), params, corpus_key)
        record = provider.build_translator(lambda: translator_passages(config, params.experts.translator))
    return hand_back(provider.drain_rows(), shard_root, "translator-" + content_key(record.key))
