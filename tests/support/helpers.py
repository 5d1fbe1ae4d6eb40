"""Shared test data: small corpora, files of ../shared/data (skipped when absent), a tiny model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pytest

from semoe.config import MoeLMConfig
from semoe.data.schema import Passage

ROOT = Path(__file__).resolve().parents[2]  # the repository
SHARED = ROOT.parent / "shared" / "data"


def shared_file(rel: str) -> Path:
    path = SHARED / rel
    if not path.is_file():
        pytest.skip(f"../shared/data not present: {path}")
    return path


CORPUS = [
    Passage("p1", "Quorvanthe", "Quorvanthe is a river town famous for glass bells and a winter market."),
    Passage("p2", "Meridel Abbey", "Meridel Abbey was founded by monks who copied star charts."),
    Passage("p3", "Tobin Ashcroft", "Tobin Ashcroft (born 1871) was a painter of harbours and lighthouses."),
    Passage("p4", "The Glass Bell", "The Glass Bell is a novel about a bell maker in a small town."),
    Passage("p5", "Harbour Lights", "Harbour Lights is a painting of a harbour at night by an unknown painter."),
    Passage("p6", "Winter Market", "A winter market is held in many towns; the market sells bells, bread and wool."),
]

AWKWARD_QUERIES = [
    'Who painted "Harbour Lights"?',
    "title:Quorvanthe AND (river OR town)",
    "NOT OR AND",
    "((( unbalanced",
    'say "unterminated',
    "a:b:c -minus +plus ~tilde ^2 * ? [1 TO 5] {x} \\ / !",
    "IN [a b]",
    "   ",
    "",
    "x" * 200,
    "Ünïcödé naïve café — 東京 🎉",
]


def _tiny_tokenizer(extra_tokens: Sequence[str] = ()):
    """SmolLM2's real tokenizer from the converted embedded model (cached under
    SEMOE_TEST_MODEL_CACHE, default: the user's cache), ``extra_tokens`` added as special tokens."""
    from transformers import AutoTokenizer

    from semoe.models.loading import resolve_model_dir

    cache = os.environ.get("SEMOE_TEST_MODEL_CACHE", str(Path("~/.cache/semoe").expanduser()))
    tok = AutoTokenizer.from_pretrained(resolve_model_dir("smollm2-135m-instruct", cache))
    if extra_tokens:
        tok.add_tokens(list(extra_tokens), special_tokens=True)
    return tok


def make_tiny_lm(out: Path, extra_tokens: Sequence[str] = ()) -> str:
    """Save a tiny random Llama with SmolLM2's real tokenizer (plus ``extra_tokens``, e.g.
    Self-RAG's reflection tokens) into ``out``: generation logic without real weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tiny_tokenizer(extra_tokens)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def make_tiny_olmoe(out: Path, extra_tokens: Sequence[str] = ()) -> str:
    """Save a tiny random OLMoE (8 experts, top-2, 3 layers) with SmolLM2's tokenizer (chat
    template included; plus ``extra_tokens``) into ``out``. Its gates are scaled up so that
    routing is decisive and policies visibly change expert choices."""
    import torch
    from transformers import OlmoeConfig, OlmoeForCausalLM

    tok = _tiny_tokenizer(extra_tokens)
    torch.manual_seed(0)
    cfg = OlmoeConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = OlmoeForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.mul_(30)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def session_artifact(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """The directory ``name`` that ``build(dir)`` writes, built once per test session: under
    xdist the first worker to ask builds it in the session's shared temp dir (the parent of
    each worker's) while the others wait, then all read it (semoe's ``ArtifactCache``: a file
    lock, a temp dir renamed into place). ``build`` must give the same files every time."""
    from semoe.storage.artifacts import ArtifactCache

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return ArtifactCache(root / "shared").get_or_build("session", name, lambda out: build(out) and None)


DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
DEMO_METHODS = ("no-retrieval", "single-retrieval")


@dataclass(frozen=True)
class DemoAnswers:
    """The README demo's first questions answered by the embedded SmolLM2 (``answer_demo``)."""

    cfg: object  # the demo's SemoeConfig, its cache root holding the converted model
    retriever: object  # over the demo's corpus
    examples: list  # Example, in the dataset's order
    outputs: dict[str, list]  # method -> MethodOutput per example, answered with the answer stop
    chunk: int  # examples per call: outputs[:chunk] are what a call on examples[:chunk] alone gives


def answer_demo(index_root: Path, model_cache_root: str, n_questions: int) -> DemoAnswers:
    """Answer the demo's first ``n_questions`` with ``DEMO_METHODS`` as the pipeline does: in
    calls of one batch (``generation.batch_size``) each, so every batch's rows are those of a
    run on that chunk alone (``ChatLM`` batches a call's prompts sorted by length). The index is
    built under ``index_root``; the model comes from ``model_cache_root``."""
    from semoe.config import load_config
    from semoe.data import DataContext
    from semoe.data.loading import load_examples
    from semoe.evaluation.answer_chunks import answer_chunk
    from semoe.evaluation.planning import WorkItem
    from semoe.indexing import build_index, open_retriever

    index_cfg = load_config(DEMO_CONFIG, [f"cache.root={index_root}"])
    cfg = load_config(DEMO_CONFIG, [f"cache.root={model_cache_root}"])
    retriever = open_retriever(index_cfg, build_index(index_cfg).corpus_key)
    examples = load_examples(index_cfg.datasets[0], DataContext.of(index_cfg))[:n_questions]
    chunk = cfg.generation.batch_size
    outputs = {
        method: [
            out
            for start in range(0, len(examples), chunk)
            for out in answer_chunk(cfg, WorkItem("synthetic", method, examples[start : start + chunk]), retriever)[0]
        ]
        for method in DEMO_METHODS
    }
    return DemoAnswers(cfg, retriever, examples, outputs, chunk)


# Result tables without the columns that measure time: equal for runs that computed the same.
_TIMING = "created_at, latency_s, latency_retrieve_s, latency_generate_s, latency_experts_s"
RESULT_QUERIES = {
    "predictions": f"select * exclude ({_TIMING}) from predictions order by all",
    "retrievals": "select * from retrievals order by all",
    "trigger_events": "select * from trigger_events order by all",
    "metrics": "select * exclude (seconds_per_question, computed_at) from metrics order by all",
    "augmentations": "select * exclude (seconds, created_at) from augmentations order by all",
    "runs": "select run_id, status, error, n_predictions from runs order by all",
}


def result_tables(store_path, tables) -> dict[str, list[dict]]:
    from semoe.storage.results import ResultStore

    store = ResultStore(store_path)
    return {name: store.query(RESULT_QUERIES[name]) for name in tables}


def seed_augmentations(cfg) -> int:
    """Cache a usable augmentation (one QA pair naming the title) for every corpus passage of
    ``cfg``, as if the LLM had written it: a tiny random model cannot, and experts are then
    trained from these. Returns the number of passages seeded."""
    from semoe.data import DataContext
    from semoe.data.loading import iter_passages
    from semoe.experts import augment
    from semoe.experts.qa_reply import QAPair
    from semoe.storage.artifacts import ArtifactCache

    a, cache, n = cfg.augment, ArtifactCache(cfg.cache.root), 0
    for p in iter_passages(cfg.corpus, DataContext(synthetic=cfg.synthetic)):
        qa = QAPair(f"What is {p.title}?", p.title, f"It is {p.title}.")
        record = augment.Augmentation(
            p.id,
            augment.passage_hash(p.text),
            cfg.model.spec,
            augment.PROMPT_VERSION,
            "ok",
            rewrites=[p.text] * a.n_rewrites,
            qa=[qa] * a.n_qa,
        )
        cache.get_or_build(
            augment.CACHE_KIND,
            augment.augmentation_key(record.passage_text_hash, cfg.model.spec, a.n_qa, a.n_rewrites),
            lambda out, r=record: (out / augment.CACHE_FILE).write_text(r.to_json(), encoding="utf-8") and None,
        )
        n += 1
    return n


def tiny_moe_lm_config(**overrides) -> MoeLMConfig:
    """The small MoE LM the routing and MoE LM tests share: 2 layers, 4 MoE experts, top-2,
    d_model 32 (``overrides`` for the router, the depth or training settings)."""
    base = dict(
        d_model=32,
        n_layers=2,
        num_heads=4,
        num_experts=4,
        k=2,
        ffn_hidden_dim=32,
        max_seq_len=64,
        router_hidden_dim=8,
        seq_len=32,
    )
    return MoeLMConfig(**{**base, **overrides})


class TrackedPassages:
    """``n`` generated passages (``g{i}``, text holding ``tok{i}x``) streamed one by one, each
    tracked until it is garbage: ``produced`` and ``peak_alive`` tell whether a consumer
    streamed them or held them in memory."""

    def __init__(self, n: int):
        self.n, self.produced, self.alive, self.peak_alive = n, 0, 0, 0

    def _released(self) -> None:
        self.alive -= 1

    def __iter__(self):
        import weakref

        for i in range(self.n):
            p = Passage(f"g{i}", f"Entity {i}", f"filler text number {i} with token tok{i}x")
            weakref.finalize(p, self._released)
            self.produced += 1
            self.alive += 1
            self.peak_alive = max(self.peak_alive, self.alive)
            yield p
            del p
