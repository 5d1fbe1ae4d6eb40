"""Which run a report is of (an id or unique prefix) and its header facts."""

from __future__ import annotations

import json
from typing import Sequence

from semoe.reporting.model import format_value
from semoe.storage.results import ResultStore, StoreError


class UnknownRunError(StoreError):
    """A run id (or prefix) that matches no run, or more than one."""


def resolve_run_id(store: ResultStore, run_id: str) -> str:
    """The full id of the evaluation or routing run that ``run_id`` names exactly or by unique prefix."""
    rows = store.query(
        "SELECT DISTINCT run_id FROM (SELECT run_id FROM runs UNION ALL SELECT run_id FROM routing_runs)"
        " WHERE starts_with(run_id, ?) ORDER BY run_id",
        [run_id],
    )
    ids = [r["run_id"] for r in rows]
    if run_id in ids:
        return run_id
    if len(ids) == 1:
        return ids[0]
    if ids:
        raise UnknownRunError(f"run id prefix {run_id!r} is ambiguous in {store.path}: {', '.join(ids)}")
    recent = store.query("SELECT run_id, name FROM runs ORDER BY started_at DESC NULLS LAST LIMIT 5")
    listed = ", ".join(f"{r['run_id']} ({r['name']})" for r in recent)
    hint = f"; recent runs: {listed}" if recent else "; it has no runs"
    raise UnknownRunError(f"no run {run_id!r} in {store.path}{hint}")


def _method_label(method: str | dict) -> str:
    """A stored config's method: a bare name (stores before methods had params), or a spec."""
    return method if isinstance(method, str) else method.get("label") or method["name"]


def run_facts(store: ResultStore, run_id: str, routing_models: Sequence[str]) -> tuple[str, list[tuple[str, str]]]:
    """Title and header lines: the run row's status and identity, what an evaluation run
    answered with (from its config) when it has predictions, the models of a routing run."""
    run = store.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    facts: list[tuple[str, str]] = []
    title = f"semoe run `{run_id}`"
    if run:
        r = run[0]
        title += f" ({r['name']})"
        facts += [
            ("status", str(r["status"])),
            ("started", format_value(r["started_at"])),
            ("finished", format_value(r["finished_at"])),
            ("config hash", f"`{r['config_hash']}`"),
            ("code", f"`{r['code_version']}`"),
        ]
        if r["n_predictions"]:
            cfg = json.loads(r["config_json"])
            corpus, retrieval = cfg.get("corpus", {}), cfg.get("retrieval", {})
            facts += [
                ("predictions", format_value(r["n_predictions"])),
                ("model", f"`{cfg.get('model', {}).get('spec')}`"),
                ("retriever", f"`{retrieval.get('backend')}` (top-{retrieval.get('top_k')})"),
                ("corpus", f"`{corpus.get('format')}{':' + corpus['path'] if corpus.get('path') else ''}`"),
                ("methods", ", ".join(_method_label(m) for m in cfg.get("methods", []))),
            ]
    if routing_models:
        facts.append(("routed models", ", ".join(routing_models)))
    return title, facts
