"""Prefect flow ``evaluate_routing``: the routing grid of a config's ``routing:`` section.

A thin wrapper: the grid, the texts and each cell's measurements are ``semoe.routing.grid``;
tasks return rows and this flow process is the single DuckDB writer, one cell per commit, so
a rerun (or a resumed killed run) evaluates only the cells not stored yet.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from semoe import evaluation, identity
from semoe.checks import check_config
from semoe.config import SemoeConfig
from semoe.routing import grid
from semoe.storage.locks import run_lock
from semoe.storage.results import ResultStore
from semoe.storage.rows import rekeyed
from semoe.tasks import interrupts
from semoe.tasks.gpu import ensure_gpu_limits
from semoe.tasks.routing import evaluate_routing_cell_task, prepare_routing_model_task


def heatmap_dir(store: ResultStore, run_id: str) -> Path:
    """Heatmaps live next to the store: ``<store dir>/routing-heatmaps/<run_id>/<model>/``."""
    return store.path.parent / "routing-heatmaps" / run_id


@flow(name="evaluate_routing", log_prints=True)
def evaluate_routing(config: SemoeConfig) -> dict:
    """Models × routing policies → perplexity, QA, experts per token, speed, memory, heatmaps."""
    logger = get_run_logger()
    routing = grid.routing_section(config)
    check_config(config)
    ensure_gpu_limits(config)
    run_id = grid.routing_run_id(config)
    store = ResultStore(config.store.path)
    with run_lock(store.path, run_id):  # one process per run id (the CLI holds it already)
        previous = evaluation.register_run(store, run_id, config, identity.routing_config_hash(config), ("routing",))
        heatmaps = heatmap_dir(store, run_id)
        try:
            done = {
                (r["model"], r["policy_key"], r["mode"])
                for r in store.query("SELECT model, policy_key, mode FROM routing_runs WHERE run_id = ?", [run_id])
            }
            planned = grid.plan_cells(routing, done)
            keys = dict(zip(planned, grid.cell_keys(config, planned)))
            stored = store.stored_routing_cells(list(keys.values()))
            for cell in (c for c in planned if keys[c] in stored):  # same settings, texts and code: copy
                store.write_tables(grid.copied_cell(run_id, routing, cell, stored[keys[cell]]))
            cells = [c for c in planned if keys[c] not in stored]
            logger.info("routing run %s (%s before): %d of %d cells to evaluate, %d reused from earlier runs", run_id,
                        previous, len(cells), len(grid.grid_cells(routing)), len(planned) - len(cells))  # fmt: skip
            for m in dict.fromkeys(c.model for c in cells):
                name = routing.models[m].display_name
                prepared = prepare_routing_model_task(config, m, name)
                store.write_rows("moe_lm_training", prepared["curve"])
                for cell in (c for c in cells if c.model == m):
                    label = grid.cell_label(routing, cell)
                    rows = evaluate_routing_cell_task(config, run_id, m, cell.policy, cell.mode, str(heatmaps), label)
                    rows["routing_runs"] = rekeyed("routing_runs", rows["routing_runs"], cell_key=keys[cell], computed_in=run_id)
                    store.write_tables(rows)
                    interrupts.check()
            store.finish_run(run_id)
        except BaseException as e:
            store.finish_run(run_id, status="failed", error=f"{type(e).__name__}: {e}")
            raise
    table = store.query(
        "SELECT * FROM routing_by_k WHERE run_id = ? ORDER BY model, created_at", [run_id]  # grid order
    )
    create_table_artifact(
        [{c: r[c] for c in grid.SPEED_QUALITY_COLUMNS} for r in table],
        key="semoe-routing-by-k",
        description=f"speed/quality per policy and k, routing run {run_id}",
    )
    create_markdown_artifact(grid.speed_quality_markdown(run_id, table), key="semoe-routing-summary")
    return {"run_id": run_id, "store": str(store.path), "table": table, "produced": len(cells),
            "reused": len(planned) - len(cells), "heatmaps": str(heatmaps)}  # fmt: skip
