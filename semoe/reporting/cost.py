"""The cost section: time, tokens and expert bytes per method."""

from __future__ import annotations

from semoe.reporting.model import Section, Table
from semoe.reporting.plots import plot_cost

COST_COLUMNS = (
    "dataset",
    "method",
    "n",
    "seconds_per_question",
    "retrieve_seconds_per_question",
    "generate_seconds_per_question",
    "experts_seconds_per_question",
    "retrievals_per_question",
    "prompt_tokens_per_question",
    "generated_tokens_per_question",
    "total_tokens",
    "experts_used",
    "expert_bytes",
    "expert_bytes_per_question",
)


def cost_section(run_id: str, cost: list[dict]) -> Section:
    """The run's ``cost_by_method`` rows as a table, with their plot."""
    title = "Cost per method"
    if not cost:
        return Section(title, note=f"No predictions stored for run `{run_id}`.")
    caption = (
        "Per method (the `cost_by_method` view); expert bytes are the adapter files of the experts the method loaded."
    )
    return Section(title, [Table(COST_COLUMNS, cost, caption)], plot_cost(cost))
