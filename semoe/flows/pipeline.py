"""Prefect flows: ``index_corpus`` and ``evaluate``, composed by ``pipeline``.

The flow process is the single writer of the DuckDB store: tasks return rows (or, on Dask
workers, leave them as Parquet shards) and the flow commits them chunk by chunk, so a
killed run resumes where it stopped.
"""

from __future__ import annotations

from typing import Iterator

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact

from semoe import evaluation, identity
from semoe.checks import check_config
from semoe.config import SemoeConfig
from semoe.data.loading import corpus_key
from semoe.data.schema import Example
from semoe.indexing import describe_corpus, open_retriever
from semoe.flows.runners import shared_cluster, with_runner
from semoe.reporting import LEADERBOARD_COLUMNS, write_run_report
from semoe.storage.locks import run_lock
from semoe.storage.results import ResultStore, utcnow
from semoe.storage.rows import IndexRow
from semoe.storage.shards import ingest_pending, ingest_shard, remove_root, shard_root
from semoe.tasks.evaluation import answer_chunk_task, answer_shard_task, load_examples_task
from semoe.tasks.experts import build_experts_task
from semoe.tasks.gpu import ensure_gpu_limits
from semoe.tasks import interrupts
from semoe.tasks.indexing import build_index_task


@flow(name="index_corpus", log_prints=True)
def index_corpus(config: SemoeConfig) -> dict:
    """Index the configured corpus with the configured backend (reused when unchanged)."""
    logger = get_run_logger()
    key = corpus_key(config.corpus, evaluation.data_context(config))
    built = open_retriever(config, key).is_built()
    info = build_index_task.with_options(refresh_cache=not built)(config, key)
    if built:  # the task's (possibly cached) result describes an earlier build
        logger.info("index %s for %s reused (%s)", info["backend"], describe_corpus(config.corpus), info["index_dir"])
    else:
        rate = info["passages"] / info["seconds"] if info["seconds"] else None
        logger.info("indexed %s passages in %.1f s (%.0f passages/s)", info["passages"], info["seconds"], rate or 0)
        ResultStore(config.store.path).write_rows("indexes", [
            IndexRow(corpus_key=key, backend=info["backend"], passages=info["passages"], seconds=info["seconds"],
                     passages_per_s=rate, location=info["index_dir"], built_at=utcnow(),
                     skipped_rows=info.get("skipped_rows", 0))
        ])  # fmt: skip
    return info


@flow(name="evaluate", log_prints=True)
def evaluate(config: SemoeConfig, corpus_key: str | None = None) -> dict:
    """Load questions → retrieve → generate → score → store, resuming a killed run."""
    logger = get_run_logger()
    check_config(config)
    ensure_gpu_limits(config)
    examples = {
        ds.display_name: [Example.from_dict(e) for e in load_examples_task(config, ds)] for ds in config.datasets
    }
    run_id = evaluation.qa_run_id(config, examples, corpus_key)
    store = ResultStore(config.store.path)
    with run_lock(store.path, run_id):  # one process per run id (the CLI holds it already)
        previous = evaluation.register_run(store, run_id, config, identity.qa_config_hash(config), ("answers", "scores"))
        try:
            shards = shard_root(store.path, run_id)
            if ingest_pending(store, shards):  # chunks a killed run finished on workers but never ingested
                logger.info("ingested the shards a previous attempt left in %s", shards)
            planned = evaluation.plan_work(config, examples, store.done_keys(run_id), corpus_key)
            stored = store.stored_answers([k for item in planned for k in item.answer_keys])
            reusable, items = evaluation.split_reusable(planned, set(stored))
            for item in reusable:  # same question, settings, corpus and code: copy and re-score
                store.write_predictions(evaluation.reused_rows(run_id, item, stored))
            reused = sum(len(i.examples) for i in reusable)
            total = sum(len(i.examples) for i in items)
            logger.info("run %s (%s before): %d answers reused from earlier runs, %d to produce", run_id, previous, reused, total)
            if items:
                progress = create_progress_artifact(0.0, key="semoe-progress", description=f"run {run_id}")
                done = 0
                for n in _answer_and_commit(config, run_id, items, corpus_key, store):
                    done += n
                    update_progress_artifact(progress, 100.0 * done / total)
                    logger.info("committed %d/%d answers", done, total)
                    interrupts.check()
            remove_root(shards)
            store.compute_metrics(run_id)
            store.finish_run(run_id)
        except BaseException as e:
            store.finish_run(run_id, status="failed", error=f"{type(e).__name__}: {e}")
            raise
    board = store.leaderboard(run_id)
    create_table_artifact(
        [{k: r[k] for k in LEADERBOARD_COLUMNS} for r in board],
        key="semoe-leaderboard",
        description=f"leaderboard of run {run_id}",
    )
    report = write_run_report(store.path, run_id)
    create_markdown_artifact(
        report.artifact_markdown(), key="semoe-summary", description=f"report of run {run_id}: {report.paths['html']}"
    )
    return {"run_id": run_id, "store": str(store.path), "leaderboard": board, "produced": total, "reused": reused}


def _answer_and_commit(config: SemoeConfig, run_id: str, items: list, corpus_key: str | None, store: ResultStore) -> Iterator[int]:
    """Answer the planned chunks and commit each, yielding its size. Default runner: chunk
    by chunk in this process. Dask: all chunks at once on the workers, which leave Parquet
    shards that this process (the single store writer) ingests in order."""
    calls = [
        (config, run_id, item.dataset, item.method, [e.as_dict() for e in item.examples], item.answer_keys,
         corpus_key if evaluation.method_uses_retrieval(config, item.method) else None, item.examples[0].id)
        for item in items
    ]
    if config.runner.kind == "default":
        for item, call in zip(items, calls):
            rows, catalogue = answer_chunk_task(*call)
            store.write_predictions(rows)
            for table, table_rows in catalogue.items():
                store.write_rows(table, table_rows)
            yield len(item.examples)
        return
    root = str(shard_root(store.path, run_id))
    futures = [answer_shard_task.submit(*call, root) for call in calls]
    for item, future in zip(items, futures):
        ingest_shard(store, future.result())
        yield len(item.examples)


@flow(name="build_experts", log_prints=True)
def build_experts(config: SemoeConfig, corpus_key: str | None = None) -> dict:
    """Augment and train the experts of every question's top-k passages (PRAG's offline
    step), chunk by chunk; cached per passage, catalogued in ``augmentations``/``experts``.
    Without ``corpus_key`` (a deployment run) it indexes the corpus first (reused when built)."""
    logger = get_run_logger()
    ensure_gpu_limits(config)
    corpus_key = corpus_key or index_corpus(config)["corpus_key"]
    retriever = open_retriever(config, corpus_key)
    examples = [Example.from_dict(e) for ds in config.datasets for e in load_examples_task(config, ds)]
    passages = evaluation.expert_passages(config, examples, retriever)
    store = ResultStore(config.store.path)
    trained, rows = 0, [p.as_dict() for p in passages]
    calls = [  # every distinct expert setting of the configured methods, chunk by chunk
        (config, params, rows[i : i + params.augment.chunk_size], rows[i]["id"])
        for params in evaluation.expert_settings(config)
        for i in range(0, len(rows), params.augment.chunk_size)
    ]
    root = shard_root(store.path, "experts-" + identity.digest([corpus_key, [c[1].identity() for c in calls]]))
    if config.runner.kind == "default":
        results = (build_experts_task(*call) for call in calls)
    else:  # all chunks at once on the workers; their rows come back as Parquet shards
        results = (f.result() for f in [build_experts_task.submit(*call, str(root)) for call in calls])
    for result in results:
        if "shard" in result:
            ingest_shard(store, result["shard"])
        store.write_tables(result.get("rows", {}))
        trained += result["trained"]
        interrupts.check()
    remove_root(root)
    logger.info("experts for %d passages (%d newly trained)", len(passages), trained)
    return {"passages": len(passages), "trained": trained}


@flow(name="pipeline", log_prints=True)
def pipeline(config: SemoeConfig) -> dict:
    """The main job: index the corpus when a method retrieves, build passage experts when a
    method inserts them, then evaluate."""
    check_config(config)
    key = index_corpus(config)["corpus_key"] if evaluation.needs_retrieval(config) else None
    with shared_cluster(config) as config:
        if evaluation.needs_experts(config):
            with_runner(build_experts, config)(config, key)
        return with_runner(evaluate, config)(config, corpus_key=key)
