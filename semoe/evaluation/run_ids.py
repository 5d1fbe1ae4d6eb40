"""A QA run's id (what its answers and scores depend on) and its registration in the store."""

from __future__ import annotations

import json
from typing import Sequence

from semoe import identity
from semoe.config import SemoeConfig
from semoe.data.schema import Example
from semoe.evaluation.configured import needs_retrieval
from semoe.evaluation.passage_experts import translator_keys
from semoe.storage.results import ResultStore


def register_run(store: ResultStore, run_id: str, cfg: SemoeConfig, config_hash: str, kinds: Sequence[str]) -> str:
    """Register (or resume) a run with its resolved config, the hash of the settings its job
    reads and its code identity; returns its previous status."""
    return store.start_run(
        run_id, cfg.name, config_hash, identity.code_version(kinds), json.dumps(cfg.model_dump(mode="json"))
    )


def qa_run_id(
    cfg: SemoeConfig, examples: dict[str, list[Example]], corpus_key: str | None, required: bool = True
) -> str:
    """The run's id (``identity.qa_run_id``); ``required``: see ``translator_keys``."""
    return identity.qa_run_id(
        cfg, examples, corpus_key if needs_retrieval(cfg) else None, translator_keys(cfg, corpus_key, required)
    )
