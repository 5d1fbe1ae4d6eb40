"""Prefect flow ``evaluate_routing``: the routing grid of a config's ``routing:`` section.

A thin wrapper: the grid, the texts and each cell's measurements are ``semoe.routing.grid``;
tasks return rows and this flow process is the single DuckDB writer, one cell per commit, so
a rerun (or a resumed killed run) evaluates only the cells not stored yet.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from semoe import identity
from semoe.checks import check_config
from semoe.config import SemoeConfig
from semoe.flows.lifecycle import run_lifecycle
from semoe.flows.progress import Progress
from semoe.flows.runners import runner_for
from semoe.routing import grid
from semoe.storage.results import ResultStore
from semoe.tasks.gpu import ensure_gpu_limits
from semoe.tasks.routing import evaluate_routing_cell_task, prepare_routing_model_task


def heatmap_dir(store: ResultStore, run_id: str) -> Path:
    """Heatmaps live next to the store: ``<store dir>/routing-heatmaps/<run_id>/`` (names: ``grid.heatmap_names``)."""
    return store.path.parent / "routing-heatmaps" / run_id


@flow(name="evaluate_routing", log_prints=True)
def evaluate_routing(config: SemoeConfig) -> dict:
    """Models × routing policies → perplexity, QA, experts per token, speed, memory, heatmaps;
    cells measured before with the same inputs are copied, the others measured."""
    routing = grid.routing_section(config)
    check_config(config)
    ensure_gpu_limits(config)
    run_id = grid.routing_run_id(config)
    if routing.qa is not None:  # bad QA params, or a question without contexts, fail before any cell
        grid.qa_method(config, grid.qa_examples(config), routing.qa.dataset)
    store = ResultStore(config.store.path)
    heatmaps = heatmap_dir(store, run_id)
    with (
        run_lifecycle(store, run_id, config, identity.routing_config_hash(config), ("routing",)) as previous,
        runner_for("default", store, run_id) as runner,  # cells run in this process, model by model
    ):
        cells, keys, reused = _reuse_stored_cells(config, store, run_id)
        get_run_logger().info(
            "routing run %s (%s before): %d of %d cells to evaluate, %d reused from earlier runs",
            run_id,
            previous,
            len(cells),
            len(grid.grid_cells(routing)),
            reused,
        )
        progress = Progress(f"routing run {run_id}", [1] * len(cells), "cells")
        for m in dict.fromkeys(c.model for c in cells):  # a model is loaded (or trained) once for its cells
            list(runner.run(prepare_routing_model_task, [(config, m, routing.models[m].display_name)]))
            mine = [c for c in cells if c.model == m]
            calls = [
                (config, run_id, m, c.policy, c.mode, str(heatmaps), grid.cell_label(routing, c), keys[c]) for c in mine
            ]
            for i in runner.run(evaluate_routing_cell_task, calls):
                progress.advance(cells.index(mine[i]))
    table = store.query(
        "SELECT * FROM routing_by_k WHERE run_id = ? ORDER BY model, created_at", [run_id]
    )  # grid order
    create_table_artifact(
        [{c: r[c] for c in grid.SPEED_QUALITY_COLUMNS} for r in table],
        key="semoe-routing-by-k",
        description=f"speed/quality per policy and k, routing run {run_id}",
    )
    create_markdown_artifact(grid.speed_quality_markdown(run_id, table), key="semoe-routing-summary")
    return {
        "run_id": run_id,
        "store": str(store.path),
        "table": table,
        "produced": len(cells),
        "reused": reused,
        "heatmaps": str(heatmaps),
    }


def _reuse_stored_cells(config: SemoeConfig, store: ResultStore, run_id: str) -> tuple[list, dict, int]:
    """Copy the cells stored under the same cell keys by any run; (cells still to measure, their keys, copied)."""
    routing = grid.routing_section(config)
    rows = store.query("SELECT model, policy_key, mode FROM routing_runs WHERE run_id = ?", [run_id])
    done = {(r["model"], r["policy_key"], r["mode"]) for r in rows}
    planned = grid.plan_cells(routing, done)
    keys = dict(zip(planned, grid.cell_keys(config, planned)))
    stored = store.stored_routing_cells(list(keys.values()))
    for cell in (c for c in planned if keys[c] in stored):
        store.write_tables(grid.copied_cell(run_id, routing, cell, stored[keys[cell]]))
    return [c for c in planned if keys[c] not in stored], keys, sum(keys[c] in stored for c in planned)
