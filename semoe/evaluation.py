"""Evaluation logic, free of Prefect: plan the work a run still needs, answer a chunk of
questions with one method, turn outputs into store rows.

The Prefect flows (``semoe.flows``) only wrap these functions in tasks.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from semoe import identity
from semoe.checks import check_config
from semoe.config import ConfigError, DatasetConfig, SemoeConfig
from semoe.data import DataContext
from semoe.data.loading import check_corpus_head, corpus_key, iter_passages, load_examples
from semoe.data.schema import Example
from semoe.experts.provider import ExpertProvider
from semoe.experts.translator import TranslatorError, built_translator, file_key, recipe_key
from semoe.generation import METHODS
from semoe.generation.answer import has_answer_marker
from semoe.generation.base import Method, MethodContext, MethodOutput, build_method
from semoe.generation.loading import load_chat_lm
from semoe.generation.templates import template_for
from semoe.hashing import digest
from semoe.indexing import open_retriever
from semoe.metrics import exact_match, f1_score, recall_at_k
from semoe.models.loading import check_model_spec
from semoe.retrieval.provided import ProvidedContexts
from semoe.storage.artifacts import ArtifactCache
from semoe.storage.results import ResultStore, utcnow
from semoe.storage.rows import PredictionRow, RetrievalRow, TriggerEventRow, rekeyed


def register_run(store: "ResultStore", run_id: str, cfg: SemoeConfig, config_hash: str, kinds: Sequence[str]) -> str:  # noqa: F821
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


def methods(cfg: SemoeConfig) -> dict[str, Method]:
    """The configured methods by label, params resolved (a ``ConfigError`` for bad params)."""
    return {spec.display_name: build_method(spec, cfg) for spec in cfg.methods}


def method_uses_retrieval(cfg: SemoeConfig, label: str) -> bool:
    return METHODS.get(cfg.method(label).name).uses_retrieval


def needs_retrieval(cfg: SemoeConfig) -> bool:
    return any(METHODS.get(m.name).uses_retrieval for m in cfg.methods)


def needs_experts(cfg: SemoeConfig) -> bool:
    return any(METHODS.get(m.name).uses_experts for m in cfg.methods)


def dataset_config(cfg: SemoeConfig, label: str) -> DatasetConfig:
    """The dataset listed under ``label`` (its display name)."""
    for ds in cfg.datasets:
        if ds.display_name == label:
            return ds
    raise ConfigError(f"no dataset labelled {label!r}; configured: {[d.display_name for d in cfg.datasets]}")


def passage_source(ds: DatasetConfig, examples: Sequence[Example]) -> str:
    """Where retrieving methods find the passages of ``ds``'s questions: ``"provided"`` (each
    question's own contexts, served by ``ProvidedContexts``; no index, as Self-RAG and Open-RAG
    evaluate) or ``"corpus"`` (the index). ``datasets[].passages: auto`` is ``provided`` when
    the questions carry contexts. DataFormatError when a provided dataset has a question
    without contexts, or one question text with two sets of contexts."""
    if ds.passages == "corpus" or (ds.passages == "auto" and not any(ex.contexts for ex in examples)):
        return "corpus"
    ProvidedContexts(examples, ds.display_name)  # raises for the cases above
    return "provided"


def provided_datasets(cfg: SemoeConfig, examples: Mapping[str, Sequence[Example]]) -> set[str]:
    """The datasets (of ``examples``, by label) whose questions bring their own passages. A
    ConfigError when a configured method retrieves with queries it generates (triggered
    methods, unless ``query_formulation: direct``): provided contexts answer the question only,
    as Open-RAG retrieves only with the question, and another query would have no passages."""
    provided = {name for name, exs in examples.items() if passage_source(dataset_config(cfg, name), exs) == "provided"}
    for spec in cfg.methods if provided else ():
        method = build_method(spec, cfg)
        if method.uses_retrieval and method.generates_queries():
            raise ConfigError(
                f"methods: {spec.display_name!r} ({spec.name}) retrieves with queries it generates, but dataset "
                f"{sorted(provided)[0]!r} answers from its questions' own contexts (datasets[].passages), which serve "
                f"only the question: give the dataset `passages: corpus`, or the method `query_formulation: direct`"
            )
    return provided


def needs_index(cfg: SemoeConfig, examples: Mapping[str, Sequence[Example]]) -> bool:
    """A retrieving method runs on a dataset that retrieves from the corpus (not its own contexts)."""
    return needs_retrieval(cfg) and bool(set(examples) - provided_datasets(cfg, examples))


def retriever_for(cfg: SemoeConfig, dataset: str, examples: Sequence[Example], corpus_key: str | None):
    """What retrieving methods search for ``examples`` of ``dataset``: their own contexts on a
    dataset that provides them (``passage_source``), else the corpus index of ``corpus_key``."""

    if passage_source(dataset_config(cfg, dataset), examples) == "provided":
        return ProvidedContexts(examples, dataset)
    if corpus_key is None:
        raise RuntimeError(f"dataset {dataset!r} retrieves from the corpus, but no index was opened")
    return open_retriever(cfg, corpus_key)


def expert_settings(cfg: SemoeConfig, source: str = "trained") -> list:
    """The distinct passage-expert settings (``ExpertParams``: augment + experts) of the
    methods that insert experts from ``source`` (``experts.source``), one per setting however
    many methods share it."""
    from semoe.generation.methods.parametric import ExpertParams

    found: dict[str, ExpertParams] = {}
    for method in methods(cfg).values():
        if method.uses_experts and method.params.experts.source == source:
            params = ExpertParams(augment=method.params.augment, experts=method.params.experts)
            found.setdefault(identity.digest(params.identity()), params)
    return list(found.values())


def expert_passages(cfg: SemoeConfig, examples: Mapping[str, Sequence[Example]], corpus_key: str | None) -> list:
    """PRAG's offline step: the passages whose experts the questions (by dataset) will ask for
    first — the top-k retrieved with each question, from the corpus or the question's own
    contexts (``retriever_for``; triggered methods may ask for more, trained on demand)."""
    found: dict = {}
    for dataset, exs in examples.items():
        if exs:
            hits = retriever_for(cfg, dataset, exs, corpus_key).search([ex.question for ex in exs], cfg.retrieval.top_k)
            found.update((h.passage.id, h.passage) for hs in hits for h in hs if h.passage.id not in found)
    return list(found.values())


def translator_settings(cfg: SemoeConfig) -> list:
    """The distinct settings of the translators the configured methods need built (translator
    experts without a given ``translator.checkpoint``)."""
    return [p for p in expert_settings(cfg, "translator") if p.experts.translator.checkpoint is None]


def translator_passages(cfg: SemoeConfig, translator) -> list:
    """The corpus passages whose PRAG experts train the translator (``TranslatorConfig``): the
    ``translator.passages`` with the smallest hashes of (seed, passage id), in that order, so
    the choice depends on the corpus content, not its order (one pass over the corpus)."""

    stream = iter_passages(cfg.corpus, DataContext.of(cfg), progress="translator passages")
    ranked = ((digest([translator.seed, p.id], 16), p) for p in stream)
    return [p for _, p in heapq.nsmallest(translator.passages, ranked, key=lambda x: x[0])]


def translator_keys(cfg: SemoeConfig, corpus_key: str | None, required: bool = True) -> dict[str, str]:
    """Method label → content key of the translator checkpoint its experts come from, for the
    methods with ``experts.source: translator`` (``identity.answer_scope``). A translator not
    built yet is a ``TranslatorError`` when ``required``, else keyed by its recipe (what a
    run's id is before its pipeline built it)."""

    keys = {}
    for label, method in methods(cfg).items():
        experts = method.params.experts if method.uses_experts else None
        if experts is None or experts.source != "translator":
            continue
        if experts.translator.checkpoint is not None:
            keys[label] = file_key(experts.translator.checkpoint)
            continue
        recipe = recipe_key(cfg.model.spec, corpus_key, method.params.augment.identity(), experts)
        record = built_translator(ArtifactCache(cfg.cache.root), recipe)
        if record is not None:
            keys[label] = record.key
        elif not required:
            keys[label] = f"recipe:{recipe}"
        else:
            pass

            raise TranslatorError(
                f"method {label!r} uses translator experts but no translator was built for its settings: "
                "run the pipeline (`semoe run`), which builds it first"
            )
    return keys


@dataclass
class WorkItem:
    dataset: str
    method: str  # the method's label
    examples: list[Example]
    answer_keys: list[str] = field(default_factory=list)  # one per example (identity.answer_key)


def plan_work(
    cfg: SemoeConfig,
    examples_by_dataset: dict[str, list[Example]],
    done: set[tuple[str, str, str]],
    corpus_key: str | None = None,
) -> list[WorkItem]:
    """Chunks of (dataset, method, examples) not yet stored, in store-commit-sized pieces,
    each example with the identity of its answer."""
    size = cfg.store.write_every
    provided = provided_datasets(cfg, examples_by_dataset)
    items: list[WorkItem] = []
    translators = translator_keys(cfg, corpus_key)
    for spec in cfg.methods:
        label, retrieves = spec.display_name, METHODS.get(spec.name).uses_retrieval
        for dataset, examples in examples_by_dataset.items():
            own = retrieves and dataset in provided  # the question's contexts, not the corpus, decide the answer
            scope = identity.answer_scope(
                cfg, spec, None if own else corpus_key, cfg.dataset(dataset), translators.get(label)
            )
            todo = [ex for ex in examples if (dataset, ex.id, label) not in done]
            for i in range(0, len(todo), size):
                chunk = todo[i : i + size]
                keys = [identity.answer_key(scope, ex.question, ex.contexts if own else None) for ex in chunk]
                items.append(WorkItem(dataset, label, chunk, keys))
    return items


def split_reusable(items: list[WorkItem], stored: set[str]) -> tuple[list[WorkItem], list[WorkItem]]:
    """(items whose answers are all stored under their answer keys, items still to answer),
    splitting a chunk where only some answers are stored."""
    reuse: list[WorkItem] = []
    answer: list[WorkItem] = []
    for item in items:
        for target, keep in ((reuse, True), (answer, False)):
            pairs = [(ex, k) for ex, k in zip(item.examples, item.answer_keys, strict=True) if (k in stored) == keep]
            if pairs:
                target.append(WorkItem(item.dataset, item.method, [p[0] for p in pairs], [p[1] for p in pairs]))
    return reuse, answer


def load_lm(cfg: SemoeConfig):
    """The configured model as a ``ChatLM`` (loaded once per process: ``load_model`` is memoised)."""

    return load_chat_lm(cfg.model.spec, cfg.cache.root, cfg.model.dtype, cfg.model.device, cfg.generation.system_prompt)


def expert_provider(cfg: SemoeConfig, lm, params, corpus_key: str | None = None):
    """Passage experts for ``lm`` with ``params.augment`` / ``params.experts`` (``ExpertParams``);
    ``corpus_key``: the corpus a built translator was trained on (translator experts)."""

    return ExpertProvider(lm, cfg.model, params.augment, params.experts, cfg.cache.root, corpus_key)


def reuse_stored_answers(
    cfg: SemoeConfig, store, run_id: str, examples: dict[str, list[Example]], corpus_key: str | None
) -> tuple[list[WorkItem], int]:
    """Plan the answers ``run_id`` still lacks, copy (re-scored) those stored under the same
    answer keys by any run, and return (the chunks still to answer, the number copied)."""
    planned = plan_work(cfg, examples, store.done_keys(run_id), corpus_key)
    stored = store.stored_answers([k for item in planned for k in item.answer_keys])
    reusable, todo = split_reusable(planned, set(stored))
    for item in reusable:
        store.write_predictions(reused_rows(run_id, item, stored))
    return todo, sum(len(i.examples) for i in reusable)


def answer_chunk(cfg: SemoeConfig, item: WorkItem, retriever=None) -> tuple[list[MethodOutput], dict[str, list[dict]]]:
    """(outputs of ``item``'s method, catalogue rows of the passage experts it built)."""
    method = build_method(cfg.method(item.method), cfg)
    if method.uses_retrieval and retriever is None:
        raise RuntimeError(f"method {item.method!r} needs a retriever but none was opened")
    ctx = method_context(cfg, item.dataset, retriever, method.params if method.uses_experts else None)
    outputs = method.run(item.examples, ctx)
    return outputs, ctx.experts.drain_rows() if ctx.experts else {}


def method_context(cfg: SemoeConfig, dataset: str, retriever=None, expert_params=None) -> MethodContext:
    """What a method runs with on the dataset labelled ``dataset``: the configured model,
    generation and retrieval settings, the dataset's prompt template (``template_for``), the
    retriever, and passage experts made with ``expert_params`` (``ExpertParams``) if given."""
    lm = load_lm(cfg)
    corpus_key = retriever.corpus_key if retriever is not None else None
    experts = expert_provider(cfg, lm, expert_params, corpus_key) if expert_params is not None else None
    return MethodContext(
        generation=cfg.generation,
        lm=lm,
        retrieval=cfg.retrieval,
        retriever=retriever,
        experts=experts,
        template=template_for(cfg.dataset(dataset)),
    )


def score(
    ex: Example, prediction: str | None, hit_ids: Sequence[str], hit_titles: Sequence[str], retrieved: bool
) -> dict:
    """EM, F1 (official SQuAD normalisation, best over the golds) and recall@k of the gold
    passages of one prediction: ``recall`` None when the answer retrieved nothing,
    ``recall_all`` 0 then (both None when the question names no gold passage); no prediction
    (an error row) scores 0."""
    recall = recall_at_k(list(hit_ids), list(hit_titles), ex.gold_passage_ids, ex.gold_titles)
    return {
        "em": 0.0 if prediction is None else exact_match(prediction, ex.answers),
        "f1": 0.0 if prediction is None else f1_score(prediction, ex.answers),
        "recall": recall if retrieved else None,
        "recall_all": recall,  # no passage retrieved: 0 of the golds found
    }


# Keys of ``MethodOutput.extra`` stored in columns or tables of their own, never again in ``extra``.
STORED_APART = ("trigger_events", "hallucination_events", "sentences")


@dataclass(frozen=True)
class ExpertUse:
    """What fixes the size of a method's passage experts: the ``predictions`` columns
    ``base_model``, ``expert_rank`` and ``expert_targets`` (joined with ``experts`` by the
    ``cost_by_method`` view)."""

    base_model: str
    rank: int
    targets: tuple[str, ...]


def expert_use(cfg: SemoeConfig, label: str) -> ExpertUse | None:
    """The expert settings of the method labelled ``label`` (its resolved params), None for a
    method without passage expert files (none, or translated ones)."""
    method = build_method(cfg.method(label), cfg)
    # Translated experts are never files: joining them with the trained ones of the same
    # passages would charge the method their bytes.
    if not method.uses_experts or method.params.experts.source == "translator":
        return None
    experts = method.params.experts
    return ExpertUse(cfg.model.spec, experts.rank, tuple(experts.targets))


def trigger_event_rows(run_id: str, dataset: str, example_id: str, method: str, extra: Mapping | None) -> list[dict]:
    """``trigger_events`` rows (``semoe.storage.rows.TriggerEventRow``) from a method output's
    ``extra`` (``MethodOutput.extra``); methods without triggers give none. The table is where
    trigger events are stored: ``predictions.extra`` does not keep them."""
    return [
        TriggerEventRow(
            run_id=run_id,
            dataset=dataset,
            example_id=example_id,
            method=method,
            step=int(e["step"]),
            token_index=e.get("token_index"),
            token=e.get("token"),
            score=None if e.get("score") is None else float(e["score"]),
            query=e.get("query"),
            passage_ids=[str(p) for p in e.get("passage_ids", [])],
        ).as_dict()
        for e in (extra or {}).get("trigger_events", [])
    ]


def to_rows(
    run_id: str,
    dataset: str,
    method: str,
    examples: Sequence[Example],
    outputs: Sequence[MethodOutput],
    answer_keys: Sequence[str] | None = None,
    *,
    experts: ExpertUse | None,
) -> dict[str, list[dict]]:
    """Score outputs and build the rows of ``predictions`` and its per-example tables;
    ``answer_keys`` (one per example, ``semoe.identity.answer_key``) make them reusable;
    ``experts`` is the method's ``expert_use`` (required: a forgotten setting would leave the
    method's experts out of the cost view).

    An output with ``error`` (e.g. a question over the context) is stored with a NULL
    prediction and the reason, and scored em = f1 = 0: it stays in n, so accuracy is not
    inflated by leaving hard questions out, and metrics count it under ``errors``.
    ``answer_marker_found``: whether the reply has the "the answer is" its prediction was
    taken after (``has_answer_marker``; NULL for an error row); metrics count the replies
    without it under ``answer_marker_missing``."""
    now = utcnow()
    tables: dict[str, list[dict]] = {"predictions": [], "retrievals": [], "trigger_events": []}
    keys = [None] * len(examples) if answer_keys is None else answer_keys
    for ex, out, answer_key in zip(examples, outputs, keys, strict=True):
        hits = [h for step in out.retrievals for h in step.hits]
        key = {"run_id": run_id, "dataset": dataset, "example_id": ex.id, "method": method}
        failed = out.error is not None
        extra = {k: v for k, v in out.extra.items() if k not in STORED_APART}
        tables["predictions"].append(
            PredictionRow(
                **key,
                question=ex.question,
                question_type=ex.type,
                golds=list(ex.answers),
                prediction=None if failed else out.prediction,
                raw_output=None if failed else out.raw_output,
                **score(
                    ex,
                    None if failed else out.prediction,
                    [h.passage.id for h in hits],
                    [h.passage.title for h in hits],
                    bool(out.retrievals),
                ),
                truncated=out.truncated,
                error=out.error,
                answer_marker_found=None if failed else has_answer_marker(out.raw_output),
                retrieval_count=len(out.retrievals),
                generation_count=out.generation_count,
                prompt_tokens=out.prompt_tokens,
                generated_tokens=out.generated_tokens,
                hallucination_events=out.extra.get("hallucination_events"),
                sentences=out.extra.get("sentences"),
                latency_s=sum(out.latency.values()),
                latency_retrieve_s=out.latency.get("retrieve", 0.0),
                latency_generate_s=out.latency.get("generate", 0.0),
                latency_experts_s=out.latency.get("experts", 0.0),
                extra=json.dumps(extra, sort_keys=True, default=str),
                answer_key=answer_key,
                answered_in=run_id,
                created_at=now,
                base_model=experts.base_model if experts else None,
                expert_rank=experts.rank if experts else None,
                expert_targets=list(experts.targets) if experts else None,
            ).as_dict()
        )
        tables["retrievals"].extend(
            RetrievalRow(
                **key,
                step=step.step,
                rank=h.rank,
                query=step.query,
                passage_id=h.passage.id,
                title=h.passage.title,
                score=float(h.score),
            ).as_dict()
            for step in out.retrievals
            for h in step.hits
        )
        tables["trigger_events"].extend(trigger_event_rows(run_id, dataset, ex.id, method, out.extra))
    return tables


def reused_rows(run_id: str, item: WorkItem, stored: dict[str, dict[str, list[dict]]]) -> dict[str, list[dict]]:
    """Rows of ``item`` copied from stored answers with the same answer keys (``stored``:
    answer key → the tables of that answer, as ``ResultStore.stored_answers`` returns),
    re-keyed to this run and re-scored against this run's golds. The answer key covers the
    method's resolved params and the model, so the copied expert settings are this run's."""
    tables: dict[str, list[dict]] = {"predictions": [], "retrievals": [], "trigger_events": []}
    for ex, answer_key in zip(item.examples, item.answer_keys, strict=True):
        src = stored[answer_key]
        key = {"run_id": run_id, "dataset": item.dataset, "example_id": ex.id, "method": item.method}
        pred = src["predictions"][0]
        hits = sorted(src["retrievals"], key=lambda r: (r["step"], r["rank"]))
        scores = score(
            ex,
            pred["prediction"],
            [h["passage_id"] for h in hits],
            [h["title"] for h in hits],
            bool(pred["retrieval_count"]),
        )
        tables["predictions"] += rekeyed(
            "predictions", [pred], **key, **scores, question=ex.question, question_type=ex.type, golds=list(ex.answers)
        )
        for table in ("retrievals", "trigger_events"):
            tables[table] += rekeyed(table, src[table], **key)
    return tables


def preflight(cfg: SemoeConfig) -> str:
    """Check everything that can be checked before a run starts, so bad input fails with
    one clear error and no run row: registered names, the results store (locked?), the
    artifact cache (writable?), the dataset files (parsed whole: they are small), the
    corpus file (its first passages, :func:`~semoe.data.loading.check_corpus_head`), the
    retrieval backend (an Elasticsearch ping) and the model spec. Imports no Prefect and
    starts no server: ``semoe run`` calls it before the flow, ``semoe validate`` alone.
    Returns the id of the QA run these inputs make (``qa_run_id``)."""

    check_config(cfg)
    ResultStore(cfg.store.path)
    ArtifactCache(cfg.cache.root).check_writable()
    ctx = DataContext.of(cfg)
    examples = {ds.display_name: load_examples(ds, ctx) for ds in cfg.datasets}
    key = corpus_key(cfg.corpus, ctx) if needs_index(cfg, examples) else None
    if key is not None:
        check_corpus_head(cfg.corpus, ctx)
        open_retriever(cfg, key).is_built()
    check_model_spec(cfg.model.spec)
    return qa_run_id(cfg, examples, key, required=False)  # the pipeline builds missing translators first
