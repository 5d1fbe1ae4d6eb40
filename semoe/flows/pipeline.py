"""Prefect flows: ``index_corpus`` and ``evaluate``, composed by ``pipeline``.

The flow process is the single writer of the DuckDB store: tasks return rows (or, on Dask
workers, leave them as Parquet shards) and the flow commits them chunk by chunk, so a
killed run resumes where it stopped.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from semoe import identity
from semoe.checks import check_config
from semoe.config import SemoeConfig
from semoe.data import DataContext
from semoe.data.loading import corpus_key
from semoe.data.schema import Example
from semoe.evaluation.configured import method_uses_retrieval
from semoe.evaluation.passage_experts import expert_passages, expert_settings, translator_settings
from semoe.evaluation.passage_sources import needs_index
from semoe.evaluation.planning import reuse_stored_answers
from semoe.evaluation.run_ids import qa_run_id
from semoe.flows.lifecycle import run_lifecycle
from semoe.flows.progress import Progress
from semoe.flows.runners import runner_for, shared_cluster, with_runner
from semoe.indexing import IndexInfo, describe_corpus, open_retriever, record_index
from semoe.reporting import LEADERBOARD_COLUMNS, REPORT_FORMATS, write_run_report
from semoe.storage.results import ResultStore
from semoe.tasks.answering import answer_chunk_task, load_examples_task
from semoe.tasks.experts import build_experts_task, build_translator_task
from semoe.tasks.gpu import ensure_gpu_limits
from semoe.tasks.indexing import build_index_task


@flow(name="index_corpus", log_prints=True)
def index_corpus(config: SemoeConfig) -> dict:
    """Index the configured corpus with the configured backend (reused when unchanged)."""
    logger = get_run_logger()
    key = corpus_key(config.corpus, DataContext.of(config))
    built = open_retriever(config, key).is_built()
    info = build_index_task.with_options(refresh_cache=not built)(config, key)
    if built:  # the task's (possibly cached) result describes an earlier build
        logger.info("index %s for %s reused (%s)", info["backend"], describe_corpus(config.corpus), info["index_dir"])
    else:
        built = IndexInfo(**info)
        logger.info(
            "indexed %s passages in %.1f s (%.0f passages/s)", built.passages, built.seconds, built.passages_per_s or 0
        )
        record_index(config.store.path, built)
    return info


@flow(name="evaluate", log_prints=True)
def evaluate(config: SemoeConfig, corpus_key: str | None = None) -> dict:
    """Load questions → copy the answers stored for the same inputs → answer the rest → score
    → store; a killed run resumes where it stopped."""
    check_config(config)
    ensure_gpu_limits(config)
    examples = _load_examples(config)
    run_id = qa_run_id(config, examples, corpus_key)
    store = ResultStore(config.store.path)
    with (
        run_lifecycle(store, run_id, config, identity.qa_config_hash(config), ("answers", "scores")) as previous,
        runner_for(config.runner.kind, store, run_id) as runner,
    ):
        runner.resume()
        items, reused = reuse_stored_answers(config, store, run_id, examples, corpus_key)
        logger = get_run_logger()
        logger.info(
            "run %s (%s before): %d answers reused from earlier runs, %d to produce",
            run_id,
            previous,
            reused,
            sum(len(i.examples) for i in items),
        )
        calls = [_answer_call(config, run_id, item, corpus_key) for item in items]
        progress = Progress(f"run {run_id}", [len(i.examples) for i in items], "answers")
        for i in runner.run(answer_chunk_task, calls):
            progress.advance(i)
        store.compute_metrics(run_id)
    published = _publish_leaderboard(store, run_id, config.report.write)
    return published | {"produced": sum(len(i.examples) for i in items), "reused": reused}


def _load_examples(config: SemoeConfig) -> dict[str, list[Example]]:
    return {d.display_name: [Example.from_dict(e) for e in load_examples_task(config, d)] for d in config.datasets}


def _answer_call(config: SemoeConfig, run_id: str, item, corpus_key: str | None) -> tuple:
    retrieves = method_uses_retrieval(config, item.method)
    return (
        config,
        run_id,
        item.dataset,
        item.method,
        [e.as_dict() for e in item.examples],
        item.answer_keys,
        corpus_key if retrieves else None,
        item.examples[0].id,
    )


def _publish_leaderboard(store: ResultStore, run_id: str, write_report: bool) -> dict:
    """The run's leaderboard and (``report.write``) its report as Prefect artifacts; the flow's
    result, whose ``report`` lists the report's files (none when not written)."""
    board = store.leaderboard(run_id)
    create_table_artifact(
        [{k: r[k] for k in LEADERBOARD_COLUMNS} for r in board],
        key="semoe-leaderboard",
        description=f"leaderboard of run {run_id}",
    )
    if not write_report:
        return {"run_id": run_id, "store": str(store.path), "leaderboard": board, "report": []}
    report = write_run_report(store.path, run_id)
    create_markdown_artifact(
        report.artifact_markdown(), key="semoe-summary", description=f"report of run {run_id}: {report.paths['html']}"
    )
    files = [str(report.paths[f]) for f in REPORT_FORMATS]
    return {"run_id": run_id, "store": str(store.path), "leaderboard": board, "report": files}


@flow(name="build_experts", log_prints=True)
def build_experts(config: SemoeConfig, corpus_key: str | None = None) -> dict:
    """Augment and train the experts of every question's top-k passages (PRAG's offline
    step) for each expert setting of the configured methods, chunk by chunk; cached per
    passage, catalogued in ``augmentations``/``experts``. Without ``corpus_key`` (a deployment
    run) it indexes the corpus first (reused when built) if a dataset retrieves from it."""
    ensure_gpu_limits(config)
    examples = _load_examples(config)
    if corpus_key is None and needs_index(config, examples):
        corpus_key = index_corpus(config)["corpus_key"]
    passages = [p.as_dict() for p in expert_passages(config, examples, corpus_key)]
    calls = [  # every distinct expert setting of the configured methods, chunk by chunk
        (config, params, passages[i : i + params.augment.chunk_size], passages[i]["id"])
        for params in expert_settings(config)
        for i in range(0, len(passages), params.augment.chunk_size)
    ]
    store = ResultStore(config.store.path)
    with runner_for(
        config.runner.kind, store, "experts-" + identity.digest([corpus_key, [c[1].identity() for c in calls]])
    ) as runner:
        runner.resume()
        progress = Progress("passage experts", [len(c[2]) for c in calls], "passages")
        for i in runner.run(build_experts_task, calls):
            progress.advance(i)
    return {"passages": len(passages), "chunks": len(calls)}


@flow(name="build_translator", log_prints=True)
def build_translator(config: SemoeConfig, corpus_key: str | None = None) -> dict:
    """Train the DyPRAG parameter translator of each translator setting of the configured
    methods (``experts.source: translator``) on the PRAG experts of ``translator.passages``
    corpus passages (augmented and trained first, cached); reused when built. Without
    ``corpus_key`` (a deployment run) it indexes the corpus first (reused when built)."""
    ensure_gpu_limits(config)
    corpus_key = corpus_key or index_corpus(config)["corpus_key"]
    calls = [(config, params, corpus_key) for params in translator_settings(config)]
    store = ResultStore(config.store.path)
    key = "translator-" + identity.digest([corpus_key, [c[1].identity() for c in calls]])
    with runner_for(config.runner.kind, store, key) as runner:
        runner.resume()
        for _ in runner.run(build_translator_task, calls):
            pass
    return {"translators": len(calls)}


def build_translators_first(config: SemoeConfig) -> None:
    """Build the parameter translators ``pipeline`` would build (reused when built), before
    it: ``semoe run`` calls it before locking the run, whose id names their checkpoints."""
    with shared_cluster(config) as config:
        with_runner(build_translator, config)(config)


@flow(name="pipeline", log_prints=True)
def pipeline(config: SemoeConfig) -> dict:
    """The main job: index the corpus when a method retrieves from it (not on datasets whose
    questions bring their own passages), build passage experts when a method inserts trained
    ones and the parameter translator when one translates them, then evaluate."""
    check_config(config)
    key = index_corpus(config)["corpus_key"] if needs_index(config, _load_examples(config)) else None
    with shared_cluster(config) as config:
        if expert_settings(config):
            with_runner(build_experts, config)(config, key)
        if translator_settings(config):
            with_runner(build_translator, config)(config, key)
        return with_runner(evaluate, config)(config, corpus_key=key)
