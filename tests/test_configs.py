"""The benchmark suites: the paper configs carry the values their comments cite from DRAGIN's and
PRAG's repositories (so an edit cannot drift from the papers silently), and configs/real-cpu.yaml
passes `semoe validate`'s preflight on ../shared/data. That every config under configs/ passes the
registry checks is tests/config/test_config.py's test_every_shipped_config_validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from semoe.config import load_config
from semoe.data import DataContext
from semoe.data.loading import load_examples
from semoe.evaluation.preflight import preflight
from tests.support.helpers import ROOT, SHARED

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
PAPER = ("dragin-", "prag-")

# DRAGIN: config/Llama2-13b-chat/<Dataset>/{DRAGIN,FLARE,FL-RAG}.json (github.com/oneal2000/DRAGIN):
# generate_max_length, fewshot (capped at the template's exemplars), DRAGIN's threshold and
# retrieve_keep_top_k, FLARE's threshold, FL-RAG's fix_length.
DRAGIN = {
    "2wikimultihopqa": (64, 6, 0.9, 25, 0.08, 16),
    "hotpotqa": (100, 6, 1.4, 35, 0.1, 32),
    "strategyqa": (100, 6, 1.0, 25, 0.06, 32),
    "iirc": (128, 5, 1.25, 25, 0.1, 32),
}
# PRAG: configs/<dataset>_llama3.2-1b-instruct.sh (github.com/oneal2000/PRAG): max_new_tokens,
# --with_cot, num_train_epochs; 300 questions (per type where augment.py splits by type).
PRAG = {
    "2wikimultihopqa": (
        128,
        True,
        1,
        {t: 300 for t in ("compositional", "comparison", "inference", "bridge_comparison")},
    ),
    "hotpotqa": (128, True, 1, {"bridge": 300, "comparison": 300}),
    "popqa": (20, False, 2, None),
    "cwq": (20, False, 1, None),
}


def _config(name: str, overrides=()):
    return load_config(ROOT / "configs" / name, list(overrides))


def test_every_paper_suite_has_its_config():
    names = {p.name for p in CONFIGS}
    assert {f"dragin-{d}.yaml" for d in DRAGIN} | {f"prag-{d}.yaml" for d in PRAG} | {"real-cpu.yaml"} <= names


@pytest.mark.parametrize("dataset", sorted(DRAGIN))
def test_dragin_config_carries_the_papers_values(dataset):
    cfg = _config(f"dragin-{dataset}.yaml")
    max_new, shots, threshold, keep, flare, fix = DRAGIN[dataset]
    assert [m.display_name for m in cfg.methods] == ["wo-RAG", "SR-RAG", "FL-RAG", "FS-RAG", "FLARE", "DRAGIN"]
    assert [m.name for m in cfg.methods][2:] == ["fix-length-retrieval", "fix-sentence-retrieval", "token", "dragin"]
    assert cfg.model.spec == "meta-llama/Llama-2-13b-chat-hf"
    assert (cfg.datasets[0].name, cfg.datasets[0].sample, cfg.datasets[0].shuffle) == (dataset, 1000, False)
    assert (cfg.retrieval.top_k, cfg.retrieval.backend, cfg.corpus.format) == (3, "elasticsearch", "dpr-tsv")
    assert (cfg.generation.max_new_tokens, cfg.generation.few_shot, cfg.generation.chain_of_thought) == (
        max_new,
        shots,
        True,
    )
    dragin = cfg.method("DRAGIN").params
    assert (dragin["hallucination_threshold"], dragin["retrieve_keep_top_k"], dragin["query_formulation"]) == (
        threshold,
        keep,
        "real_words",
    )
    assert cfg.method("FLARE").params["hallucination_threshold"] == flare
    assert cfg.method("FL-RAG").params.get("fix_length", cfg.trigger.fix_length) == fix
    # DRAGIN's FixLengthRAG asserts query_formulation "direct" and retrieves with the question
    assert (
        cfg.method("FL-RAG").params["query_formulation"] == cfg.method("FS-RAG").params["query_formulation"] == "direct"
    )


@pytest.mark.parametrize("dataset", sorted(PRAG))
def test_prag_config_carries_the_papers_values(dataset):
    cfg = _config(f"prag-{dataset}.yaml")
    max_new, cot, epochs, per_type = PRAG[dataset]
    assert [(m.name, m.display_name) for m in cfg.methods] == [
        ("single-retrieval", "Standard RAG"),
        ("prag", "PRAG"),
        ("combine", "Combine"),
    ]
    assert cfg.model.spec == "meta-llama/Llama-3.2-1B-Instruct"
    ds = cfg.datasets[0]
    assert (ds.name, ds.sample_per_type, ds.sample) == (dataset, per_type, None if per_type else 300)
    assert (cfg.retrieval.top_k, cfg.retrieval.backend, cfg.corpus.format) == (3, "elasticsearch", "dpr-tsv")
    assert (cfg.generation.max_new_tokens, cfg.generation.chain_of_thought) == (max_new, cot)
    assert (cfg.experts.rank, cfg.experts.alpha, cfg.experts.lr, cfg.experts.epochs, cfg.experts.dropout) == (
        2,
        32,
        3e-4,
        epochs,
        0.0,
    )
    assert (cfg.augment.n_rewrites, cfg.augment.n_qa) == (1, 3)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.startswith(PAPER)], ids=lambda p: p.name)
def test_paper_configs_point_at_user_downloads(path: Path):
    """Relative paths under data/ (a user's clone has no ../shared), each named in the header."""
    cfg = load_config(path)
    header = path.read_text().split("\nname:")[0]
    for p in (cfg.corpus.path, *(d.path for d in cfg.datasets)):
        assert p.startswith("data/"), p
        assert p in header, f"{path.name}: the header does not say where {p} comes from"


def test_real_cpu_config_passes_preflight_on_shared_data(tmp_path, monkeypatch):
    """The same preflight as `semoe validate configs/real-cpu.yaml` from the repo root: every
    dataset file parsed whole, the corpus head read, store and cache writable, the model spec."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared/data not present ({SHARED}): configs/real-cpu.yaml reads it")
    monkeypatch.chdir(ROOT)  # its paths are relative to the repo root
    cfg = _config("real-cpu.yaml", [f"store.path={tmp_path / 'r.duckdb'}", f"cache.root={tmp_path / 'cache'}"])
    assert all(d.path.startswith("../shared/data/") for d in cfg.datasets)
    assert preflight(cfg)
    ctx = DataContext.of(cfg)
    for ds in cfg.datasets:
        examples = load_examples(ds, ctx)
        if ds.sample_per_type:  # every listed type exists in the file, so each gets its rows
            assert {t: sum(e.type == t for e in examples) for t in ds.sample_per_type} == ds.sample_per_type
