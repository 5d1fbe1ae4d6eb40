"""Rows of the DuckDB tables ``routing_runs`` and ``routing_layer_stats`` (their dataclasses:
:mod:`semoe.storage.rows`) from one cell's measurements."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from semoe.config import PolicySpec
from semoe.routing.decoding import DecodeResult, PerplexityResult
from semoe.routing.memory import PeakMemory
from semoe.storage.rows import RoutingLayerStatRow, RoutingRunRow

# Column order of the store's tables (their rows: semoe.storage.rows).
ROUTING_RUNS_COLUMNS = RoutingRunRow.columns()
# Columns a caller fills in (the rest are measured; the flow fills cell_key and computed_in).
ROUTING_RUN_CONTEXT = ("model_key", "policy_label", "setting", "k", "qa_dataset", "qa_n", "qa_em", "qa_f1", "qa_note")
ROUTING_LAYER_STATS_COLUMNS = RoutingLayerStatRow.columns()


def policy_key(name: str, params: dict) -> str:
    """Stable key of a policy and its params (the tables' identity for a policy): ``PolicySpec.key``."""
    return PolicySpec(name=name, params=params).key


def _weighted_rate(stats, key: str) -> float | None:
    rows = [r for r in stats.summary() if r[key] is not None and r["tokens"]]
    if not rows:
        return None
    return sum(r[key] * r["tokens"] for r in rows) / sum(r["tokens"] for r in rows)


def routing_run_row(
    run_id: str,
    model: str,
    policy,
    mode: str,
    ppl: PerplexityResult,
    decode_result: DecodeResult | None = None,
    memory: PeakMemory | None = None,
    heatmap_path: str | None = None,
    *,
    key: str | None = None,
    **context,
) -> dict:
    """A ``routing_runs`` row. ``key`` defaults to the key of the resolved params (a grid keys
    cells by the configured params instead, known before anything runs); ``context`` fills
    :data:`ROUTING_RUN_CONTEXT` columns."""
    unknown = set(context) - set(ROUTING_RUN_CONTEXT)
    if unknown:
        raise ValueError(f"not routing_runs context columns: {sorted(unknown)}")
    params = policy.describe()
    stats = ppl.stats
    return RoutingRunRow(
        **context,
        run_id=run_id,
        model=model,
        policy_key=key or policy_key(policy.name, params),
        policy=policy.name,
        policy_params=json.dumps(params, sort_keys=True, default=str),
        mode=mode,
        texts=ppl.texts,
        tokens=ppl.tokens,
        nll=ppl.nll,
        perplexity=ppl.perplexity,
        eval_seconds=ppl.seconds,
        tokens_per_s=ppl.tokens_per_s,
        decode_tokens_per_s=decode_result.tokens_per_s if decode_result else None,
        peak_memory_bytes=memory.peak_bytes if memory else None,
        memory_method=memory.method if memory else None,
        kv_cache_bytes=decode_result.kv_cache_bytes if decode_result else None,
        experts_per_token=stats.experts_per_token(),
        experts_std=stats.experts_per_token_std(),
        floor_rate=_weighted_rate(stats, "floor_rate"),
        ceiling_rate=_weighted_rate(stats, "ceiling_rate"),
        heatmap_path=heatmap_path,
        created_at=datetime.now(timezone.utc).replace(tzinfo=None),
    ).as_dict()


def layer_stat_rows(run_id: str, model: str, key: str, mode: str, stats) -> list[dict]:
    """``routing_layer_stats`` rows of one cell: one per routed layer (``stats.summary()``)."""
    measured = ROUTING_LAYER_STATS_COLUMNS[4:]  # after the cell's key
    return [
        RoutingLayerStatRow(
            run_id=run_id, model=model, policy_key=key, mode=mode, **{c: r[c] for c in measured}
        ).as_dict()
        for r in stats.summary()
    ]
