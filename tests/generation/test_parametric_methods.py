"""PRAG / combine / SEMoE methods end to end with a tiny random model: its augmentations
are garbage, so every passage fails augmentation — recorded with a reason, no expert, and
the methods still answer every question (one bad passage never crashes a run)."""

from __future__ import annotations

import pytest

from semoe.config import SemoeConfig
from semoe.data import DataContext
from semoe.data.loading import load_examples
from semoe.evaluation.answer_chunks import answer_chunk
from semoe.evaluation.planning import WorkItem
from semoe.evaluation.scoring import expert_use, to_rows
from semoe.indexing import build_index, open_retriever

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_lm_dir):
    cfg = SemoeConfig.model_validate(
        {
            "synthetic": {"seed": 5, "n_entities": 10, "n_questions": 3},
            "methods": ["prag", "combine", "semoe", "semoe-icl"],
            "model": {"spec": tiny_lm_dir},
            "generation": {"max_new_tokens": 6, "few_shot": 0},
            "augment": {"max_attempts": 1, "rewrite_max_new_tokens": 8, "qa_max_new_tokens": 8},
            "trigger": {"hallucination_threshold": 0.0, "max_retrievals": 1},
            "cache": {"root": str(tmp_path_factory.mktemp("cache"))},
        }
    )
    info = build_index(cfg)
    return cfg, open_retriever(cfg, info.corpus_key), load_examples(cfg.datasets[0], DataContext.of(cfg))


@pytest.mark.parametrize("method", ["prag", "combine", "semoe", "semoe-icl"])
def test_expert_methods_answer_every_question_when_augmentation_fails(setup, method):
    cfg, retriever, examples = setup
    outputs, catalogue = answer_chunk(cfg, WorkItem("synthetic", method, examples), retriever)
    rows = to_rows("run", "synthetic", method, examples, outputs, experts=expert_use(cfg, method))
    assert len(rows["predictions"]) == len(examples)
    assert all(r["retrieval_count"] >= 1 for r in rows["predictions"])
    if method.startswith("semoe"):
        assert len(rows["trigger_events"]) == len(examples)  # threshold 0: the first sentence triggers
    assert catalogue["experts"] == []  # nothing trained
    assert all(r["status"] == "failed" and r["reason"] for r in catalogue["augmentations"])


def test_semoe_trains_missing_experts_while_decoding(tmp_path, tiny_lm_dir):
    """SEMoE meets passages no offline step saw: their experts are trained on demand from
    inside the decoding loop (which runs under inference mode) and inserted."""
    from tests.support.helpers import seed_augmentations

    cfg = SemoeConfig.model_validate(
        {
            "synthetic": {"seed": 5, "n_entities": 10, "n_questions": 2},
            "methods": ["semoe"],
            "model": {"spec": tiny_lm_dir},
            "generation": {"max_new_tokens": 6, "few_shot": 0},
            "trigger": {"hallucination_threshold": 0.0, "max_retrievals": 1},
            "retrieval": {"top_k": 1},
            "experts": {"measure_loss": False},
            "augment": {"n_qa": 1},
            "cache": {"root": str(tmp_path / "cache")},
        }
    )
    seed_augmentations(cfg)  # the tiny model cannot write QA pairs
    info = build_index(cfg)
    examples = load_examples(cfg.datasets[0], DataContext.of(cfg))
    item = WorkItem("synthetic", "semoe", examples)
    outputs, catalogue = answer_chunk(cfg, item, open_retriever(cfg, info.corpus_key))
    assert len(outputs) == len(examples) and all(o.retrievals for o in outputs)
    assert len(catalogue["experts"]) >= 1  # trained on demand
    assert all(r["status"] == "ok" for r in catalogue["experts"] if "status" in r)
