"""Prefect tasks of the evaluate_routing flow. Inputs are the config, indices and strings, never
models; models are loaded once per worker process (``semoe.routing.grid.routing_model``)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from semoe.config import SemoeConfig
from semoe.routing.grid import Cell, evaluate_cell, routing_model
from semoe.storage.rows import rekeyed
from semoe.tasks.common import retry_on_transient_io
from semoe.tasks.gpu import gpu_slot
from semoe.tasks.interrupts import interruptible
from semoe.tasks.threads import use_threads


@task(
    name="routing-model",
    task_run_name="model-{label}",
    cache_policy=NONE,
    retries=1,
    retry_condition_fn=retry_on_transient_io,
)
@interruptible
def prepare_routing_model_task(config: SemoeConfig, model_index: int, label: str) -> dict:
    """Load (or train, for the small MoE LM) a model of the grid: its key and training curve rows."""

    use_threads(config)
    with gpu_slot(config):
        loaded = routing_model(config, model_index)
    return {"moe_lm_training": loaded.curve}


@task(name="routing-cell", task_run_name="{label}", cache_policy=NONE)  # the store records done cells
@interruptible
def evaluate_routing_cell_task(
    config: SemoeConfig,
    run_id: str,
    model_index: int,
    policy_index: int | None,
    mode: str,
    heatmap_dir: str,
    label: str,
    cell_key: str,
) -> dict[str, list[dict]]:
    """The rows of one cell (``routing_runs``, ``routing_layer_stats``), keyed ``cell_key``."""

    use_threads(config)
    with gpu_slot(config):
        tables = evaluate_cell(config, run_id, Cell(model_index, policy_index, mode), heatmap_dir)
    tables["routing_runs"] = rekeyed("routing_runs", tables["routing_runs"], cell_key=cell_key, computed_in=run_id)
    return tables
