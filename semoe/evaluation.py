"""Evaluation logic, free of Prefect: plan the work a run still needs, answer a chunk of
questions with one method, turn outputs into store rows.

The Prefect flows (``semoe.flows``) only wrap these functions in tasks.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import semoe
from semoe.config import SemoeConfig
from semoe.data import DataContext
from semoe.data.schema import Example
from semoe.generation import METHODS
from semoe.generation.base import MethodContext, MethodOutput
from semoe.metrics import exact_match, f1_score, recall_at_k
from semoe.storage.results import utcnow


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus a hash of the package's source, so a code change is a new run."""
    h = hashlib.sha256()
    root = Path(semoe.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return f"{semoe.__version__}+{h.hexdigest()[:12]}"


def run_id_for(cfg: SemoeConfig) -> str:
    return hashlib.sha256(f"{cfg.config_hash()}:{code_version()}".encode()).hexdigest()[:16]


def register_run(store: "ResultStore", run_id: str, cfg: SemoeConfig) -> str:  # noqa: F821
    """Register (or resume) a run with its resolved config and hash; returns its previous status."""
    return store.start_run(run_id, cfg.name, cfg.config_hash(), code_version(), json.dumps(cfg.model_dump(mode="json")))


def data_context(cfg: SemoeConfig) -> DataContext:
    return DataContext(synthetic=cfg.synthetic)


def method_uses_retrieval(name: str) -> bool:
    return METHODS.get(name).uses_retrieval


def needs_retrieval(cfg: SemoeConfig) -> bool:
    return any(method_uses_retrieval(m) for m in cfg.methods)


def needs_experts(cfg: SemoeConfig) -> bool:
    return any(METHODS.get(m).uses_experts for m in cfg.methods)


def expert_passages(cfg: SemoeConfig, examples: Sequence[Example], retriever) -> list:
    """PRAG's offline step: the passages whose experts the questions will ask for first —
    the top-k retrieved with each question (triggered methods may ask for more, trained on
    demand)."""
    hits = retriever.search([ex.question for ex in examples], cfg.retrieval.top_k)
    return list({h.passage.id: h.passage for hs in hits for h in hs}.values())



@dataclass
class WorkItem:
    dataset: str
    method: str
    examples: list[Example]


def plan_work(
    cfg: SemoeConfig, examples_by_dataset: dict[str, list[Example]], done: set[tuple[str, str, str]]
) -> list[WorkItem]:
    """Chunks of (dataset, method, examples) not yet stored, in store-commit-sized pieces."""
    size = cfg.store.write_every
    items: list[WorkItem] = []
    for dataset, examples in examples_by_dataset.items():
        for method in cfg.methods:
            todo = [ex for ex in examples if (dataset, ex.id, method) not in done]
            items.extend(WorkItem(dataset, method, todo[i : i + size]) for i in range(0, len(todo), size))
    return items


def method_context(cfg: SemoeConfig, retriever=None) -> MethodContext:
    from semoe.generation.lm import ChatLM
    from semoe.models.loading import load_model

    from semoe.experts.provider import ExpertProvider

    model, tokenizer = load_model(cfg.model.spec, cfg.cache.root, cfg.model.dtype, cfg.model.device)
    lm = ChatLM(model, tokenizer, cfg.generation.system_prompt)
    return MethodContext(cfg=cfg, lm=lm, retriever=retriever, experts=ExpertProvider(cfg, lm))


def answer_chunk(item: WorkItem, ctx: MethodContext) -> list[MethodOutput]:
    method = METHODS.get(item.method)()
    if method.uses_retrieval and ctx.retriever is None:
        raise RuntimeError(f"method {item.method!r} needs a retriever but none was opened")
    return method.run(item.examples, ctx)


def to_rows(
    run_id: str, dataset: str, method: str, examples: Sequence[Example], outputs: Sequence[MethodOutput]
) -> dict[str, list[dict]]:
    """Score outputs and build the rows of ``predictions`` and its per-example tables.

    An output with ``error`` (e.g. a question over the context) is stored with a NULL
    prediction and the reason, and scored em = f1 = 0: it stays in n, so accuracy is not
    inflated by leaving hard questions out, and metrics count it under ``errors``."""
    from semoe.generation.triggered import trigger_event_rows

    now = utcnow()
    tables: dict[str, list[dict]] = {"predictions": [], "retrievals": [], "trigger_events": []}
    for ex, out in zip(examples, outputs, strict=True):
        hits = [h for step in out.retrievals for h in step.hits]
        key = {"run_id": run_id, "dataset": dataset, "example_id": ex.id, "method": method}
        recall = (
            recall_at_k([h.passage.id for h in hits], [h.passage.title for h in hits], ex.gold_passage_ids, ex.gold_titles)
            if out.retrievals
            else None
        )
        failed = out.error is not None
        tables["predictions"].append(
            {
                **key,
                "question": ex.question,
                "question_type": ex.type,
                "golds": list(ex.answers),
                "prediction": None if failed else out.prediction,
                "raw_output": None if failed else out.raw_output,
                "em": 0.0 if failed else exact_match(out.prediction, ex.answers),
                "f1": 0.0 if failed else f1_score(out.prediction, ex.answers),
                "truncated": out.truncated,
                "error": out.error,
                "recall": recall,
                "retrieval_count": len(out.retrievals),
                "generation_count": out.generation_count,
                "prompt_tokens": out.prompt_tokens,
                "generated_tokens": out.generated_tokens,
                "hallucination_events": out.extra.get("hallucination_events"),
                "sentences": out.extra.get("sentences"),
                "latency_s": sum(out.latency.values()),
                "latency_retrieve_s": out.latency.get("retrieve", 0.0),
                "latency_generate_s": out.latency.get("generate", 0.0),
                "latency_experts_s": out.latency.get("experts", 0.0),
                "extra": json.dumps(out.extra, sort_keys=True, default=str),
                "created_at": now,
            }
        )
        tables["retrievals"].extend(
            {**key, "step": step.step, "rank": h.rank, "query": step.query, "passage_id": h.passage.id,
             "title": h.passage.title, "score": float(h.score)}
            for step in out.retrievals
            for h in step.hits
        )
        tables["trigger_events"].extend(trigger_event_rows(run_id, dataset, ex.id, method, out.extra))
    return tables


def preflight(cfg: SemoeConfig) -> None:
    """Check everything that can be checked before a run starts, so bad input fails with
    one clear error and no run row: registered names, the results store (locked?), the
    artifact cache (writable?), the dataset files (parsed whole: they are small), the
    corpus file, the retrieval backend (an Elasticsearch ping) and the model spec."""
    from semoe.data.loading import corpus_key, load_examples
    from semoe.indexing import open_retriever
    from semoe.models.loading import check_model_spec
    from semoe.storage.artifacts import ArtifactCache
    from semoe.storage.results import ResultStore

    cfg.check_names()
    ResultStore(cfg.store.path)
    ArtifactCache(cfg.cache.root).check_writable()
    ctx = data_context(cfg)
    for ds in cfg.datasets:
        load_examples(ds, ctx)
    if needs_retrieval(cfg):
        open_retriever(cfg, corpus_key(cfg.corpus, ctx)).is_built()
    check_model_spec(cfg.model.spec)
