"""Prefect flows: ``index_corpus`` and ``evaluate``, composed by ``pipeline``.

The flow process is the single writer of the DuckDB store: tasks return rows and the
flow commits them chunk by chunk, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact

from semoe import evaluation
from semoe.config import SemoeConfig
from semoe.data.loading import corpus_key
from semoe.data.schema import Example
from semoe.indexing import describe_corpus, open_retriever
from semoe.storage.results import ResultStore, utcnow
from semoe.tasks.evaluation import answer_chunk_task, load_examples_task
from semoe.tasks.experts import build_experts_task
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
        ResultStore(config.store.path).write_rows(
            "indexes",
            [
                {
                    "corpus_key": key,
                    "backend": info["backend"],
                    "passages": info["passages"],
                    "seconds": info["seconds"],
                    "passages_per_s": rate,
                    "location": info["index_dir"],
                    "built_at": utcnow(),
                }
            ],
        )
    return info


LEADERBOARD_COLUMNS = ("dataset", "method", "n", "em", "f1", "recall", "retrievals_per_question", "seconds_per_question")


def _markdown_summary(run_id: str, cfg: SemoeConfig, board: list[dict]) -> str:
    lines = [
        f"# semoe run `{run_id}` ({cfg.name})",
        "",
        f"config hash `{cfg.config_hash()}`, code `{evaluation.code_version()}`, model `{cfg.model.spec}`, "
        f"retriever `{cfg.retrieval.backend}` (top-{cfg.retrieval.top_k}), corpus `{describe_corpus(cfg.corpus)}`",
        "",
        "| dataset | method | n | EM | F1 | recall | retrievals/q | s/q |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in board:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['n']} | {r['em']:.3f} | {r['f1']:.3f} | "
            f"{'' if r['recall'] is None else format(r['recall'], '.3f')} | {r['retrievals_per_question']:.2f} | "
            f"{r['seconds_per_question']:.3f} |"
        )
    return "\n".join(lines)


@flow(name="evaluate", log_prints=True)
def evaluate(config: SemoeConfig, corpus_key: str | None = None) -> dict:
    """Load questions → retrieve → generate → score → store, resuming a killed run."""
    logger = get_run_logger()
    config.check_names()
    run_id = evaluation.run_id_for(config)
    store = ResultStore(config.store.path)
    previous = store.start_run(
        run_id, config.name, config.config_hash(), evaluation.code_version(), json.dumps(config.model_dump(mode="json"))
    )
    try:
        examples = {
            ds.display_name: [Example.from_dict(e) for e in load_examples_task(config, ds)] for ds in config.datasets
        }
        items = evaluation.plan_work(config, examples, store.done_keys(run_id))
        total = sum(len(i.examples) for i in items)
        logger.info("run %s (%s before): %d answers to produce", run_id, previous, total)
        if items:
            progress = create_progress_artifact(0.0, key="semoe-progress", description=f"run {run_id}")
            done = 0
            for item in items:
                rows, catalogue = answer_chunk_task(
                    config, run_id, item.dataset, item.method, [e.as_dict() for e in item.examples],
                    corpus_key if evaluation.method_uses_retrieval(item.method) else None, item.examples[0].id,
                )
                store.write_predictions(rows)
                for table, table_rows in catalogue.items():
                    store.write_rows(table, table_rows)
                done += len(item.examples)
                update_progress_artifact(progress, 100.0 * done / total)
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
    create_markdown_artifact(_markdown_summary(run_id, config, board), key="semoe-summary")
    return {"run_id": run_id, "store": str(store.path), "leaderboard": board, "produced": total}


@flow(name="build_experts", log_prints=True)
def build_experts(config: SemoeConfig, corpus_key: str) -> dict:
    """Augment and train the experts of every question's top-k passages (PRAG's offline
    step), chunk by chunk; cached per passage, catalogued in ``augmentations``/``experts``."""
    logger = get_run_logger()
    retriever = open_retriever(config, corpus_key)
    examples = [Example.from_dict(e) for ds in config.datasets for e in load_examples_task(config, ds)]
    passages = evaluation.expert_passages(config, examples, retriever)
    store = ResultStore(config.store.path)
    size, trained = config.augment.chunk_size, 0
    for start in range(0, len(passages), size):
        chunk = passages[start : start + size]
        result = build_experts_task(config, [p.as_dict() for p in chunk], chunk[0].id)
        for table, rows in result["rows"].items():
            store.write_rows(table, rows)
        trained += result["trained"]
    logger.info("experts for %d passages (%d newly trained)", len(passages), trained)
    return {"passages": len(passages), "trained": trained}


@flow(name="pipeline", log_prints=True)
def pipeline(config: SemoeConfig) -> dict:
    """The main job: index the corpus when a method retrieves, build passage experts when a
    method inserts them, then evaluate."""
    config.check_names()
    key = index_corpus(config)["corpus_key"] if evaluation.needs_retrieval(config) else None
    if evaluation.needs_experts(config):
        build_experts(config, key)
    return evaluate(config, corpus_key=key)
