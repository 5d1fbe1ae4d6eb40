"""Behaviour that depends on real weights: with the embedded SmolLM2 on fictional
entities, retrieval must help (the model cannot know these facts)."""

from __future__ import annotations

import pytest

from semoe import evaluation
from semoe.config import SemoeConfig
from semoe.data import DataContext
from semoe.data.loading import load_examples
from semoe.indexing import build_index, open_retriever
from semoe.metrics import exact_match

pytestmark = pytest.mark.slow


def test_single_retrieval_beats_no_retrieval_on_synthetic_questions(tmp_path, model_cache_root):
    settings = {
        "synthetic": {"seed": 11, "n_entities": 150, "n_questions": 40},
        "generation": {"max_new_tokens": 20, "batch_size": 8, "few_shot": 2},
    }
    index_cfg = SemoeConfig.model_validate({**settings, "cache": {"root": str(tmp_path)}})
    model_cfg = SemoeConfig.model_validate({**settings, "cache": {"root": model_cache_root}})
    info = build_index(index_cfg)
    retriever = open_retriever(index_cfg, info.corpus_key)
    examples = load_examples(index_cfg.datasets[0], DataContext.of(index_cfg))
    em = {}
    for method in ("no-retrieval", "single-retrieval"):
        outs, _ = evaluation.answer_chunk(model_cfg, evaluation.WorkItem("synthetic", method, examples), retriever)
        em[method] = sum(exact_match(o.prediction, ex.answers) for o, ex in zip(outs, examples)) / len(examples)
    assert em["single-retrieval"] > em["no-retrieval"] + 0.1, em
