"""Pure-logic evaluation of routing policies: perplexity, decode speed, peak memory, expert
heatmaps, and the rows of the DuckDB tables ``routing_runs`` and ``routing_layer_stats``.

The Prefect flow only loads models/texts and writes the rows; everything measurable is here.
"""

from __future__ import annotations

import json
import math
import resource
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from semoe.storage.rows import RoutingLayerStatRow, RoutingRunRow

# Column order of the store's tables (their rows: semoe.storage.rows).
ROUTING_RUNS_COLUMNS = RoutingRunRow.columns()
# Columns a caller fills in (the rest are measured here; the flow fills cell_key and computed_in).
ROUTING_RUN_CONTEXT = ("model_key", "policy_label", "setting", "k", "qa_dataset", "qa_n", "qa_em", "qa_f1", "qa_note")
ROUTING_LAYER_STATS_COLUMNS = RoutingLayerStatRow.columns()


# ---------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory of a block.

    CUDA: the allocator's peak (``torch.cuda.max_memory_allocated``). CPU: torch's
    allocations bypass Python's allocator, so tracemalloc cannot see them; the process's
    peak RSS is used instead, reset on entry through ``/proc/self/clear_refs`` on Linux
    (``vmhwm``), else ``ru_maxrss``, which is the peak since process start (``ru_maxrss``).
    ``peak_bytes - start_bytes`` is what the block added.
    """

    def __init__(self, device: Any = None):
        self.device = device
        self.method = ""
        self.start_bytes = self.peak_bytes = 0

    def _cuda(self) -> bool:
        return self.device is not None and str(self.device).startswith("cuda")

    def __enter__(self) -> "PeakMemory":
        if self._cuda():
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method, self.start_bytes = "cuda", torch.cuda.memory_allocated(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method, self.start_bytes = "vmhwm", _proc_status_kb("VmHWM") * 1024
        except OSError:
            self.method, self.start_bytes = "ru_maxrss", _ru_maxrss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "vmhwm":
            self.peak_bytes = _proc_status_kb("VmHWM") * 1024
        else:
            self.peak_bytes = _ru_maxrss_bytes()

    @property
    def added_bytes(self) -> int:
        return max(self.peak_bytes - self.start_bytes, 0)


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def cache_bytes(cache) -> int:
    """Bytes held by a KV cache's tensors, counting their whole storage (a view that hides part
    of a larger buffer still holds it). HF caches keep ``layers``; semoe's MoeLM cache lists."""
    if hasattr(cache, "layers"):
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    else:
        tensors = [*getattr(cache, "keys", []), *getattr(cache, "values", [])]
    return sum(t.untyped_storage().nbytes() for t in tensors if t is not None)


# ---------------------------------------------------------------- perplexity and speed


def encode_texts(tokenizer, texts: Sequence[str], max_tokens: int) -> list:
    """One ``(1, T ≤ max_tokens)`` id tensor per text; texts under 2 tokens are dropped.
    Takes an HF tokenizer or semoe's byte tokenizer (``encode`` only, BOS first)."""
    import torch

    out = []
    for text in texts:
        if callable(tokenizer):
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)["input_ids"]
        else:
            ids = torch.tensor([tokenizer.encode(text)[:max_tokens]])
        if ids.shape[1] >= 2:
            out.append(ids)
    return out


def is_roe(policy) -> bool:
    return getattr(policy, "name", "") == "roe"


@dataclass
class PerplexityResult:
    texts: int
    tokens: int  # predicted tokens
    nll: float  # mean negative log-likelihood per predicted token
    seconds: float
    stats: Any  # RoutingStats

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll) if self.tokens else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return (self.tokens + self.texts) / self.seconds if self.seconds else float("nan")


def perplexity(
    model, batches: Sequence, policy: Any = None, *, mode: str = "patch", guard: bool = True, chunk: int = 64
) -> PerplexityResult:
    """Perplexity of ``batches`` (``(1, T)`` id tensors) under ``policy``.

    ``policy=None`` is the model's own routing (recorded through ``topk`` in analyze mode,
    so its statistics are comparable). RoE in patch mode scores the K-sample average with
    the clean cache (:func:`semoe.routing.ensemble.ensemble_next_token_probs`).
    """
    import torch

    from semoe.routing.base import make_policy
    from semoe.routing.ensemble import ensemble_next_token_probs
    from semoe.routing.patch import route_with

    if policy is None:
        policy, mode = make_policy("topk"), "analyze"
    policy = make_policy(policy)
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    with torch.no_grad(), route_with(model, policy, mode=mode, guard=guard) as session:
        start = time.perf_counter()
        for ids in batches:
            ids = ids.to(device)
            if is_roe(policy) and mode == "patch":
                logp = torch.log(ensemble_next_token_probs(model, session.policy, ids, chunk)[:-1].clamp_min(1e-30))
            else:
                logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1].float(), dim=-1)
            target = ids[0, 1:]
            nll -= float(logp.gather(-1, target.unsqueeze(-1)).sum())
            tokens += target.numel()
        seconds = time.perf_counter() - start
    return PerplexityResult(len(batches), tokens, nll / max(tokens, 1), seconds, session.stats)


@dataclass
class DecodeResult:
    sequences: Any
    new_tokens: int
    decode_seconds: float  # decode steps only: no prefill, no guard probe
    kv_cache_bytes: int
    stats: Any = None

    @property
    def seconds_per_token(self) -> float:
        return self.decode_seconds / max(self.new_tokens, 1)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_seconds if self.decode_seconds else float("nan")


def greedy_decode(model, input_ids, max_new_tokens: int) -> DecodeResult:
    """Plain greedy decoding with a KV cache, structured like RoE decoding (prefill all but the
    last prompt token, then one forward per token) so their per-token times compare."""
    import torch

    cache = None
    sequence = input_ids
    with torch.no_grad():
        if input_ids.shape[1] > 1:
            cache = model(input_ids=input_ids[:, :-1], use_cache=True).cache
        current = input_ids[:, -1:]
        start = time.perf_counter()
        for _ in range(max_new_tokens):
            out = model(input_ids=current, cache=cache, use_cache=True)
            cache = out.cache
            current = out.logits[0, -1].argmax().view(1, 1)
            sequence = torch.cat([sequence, current], dim=1)
        seconds = time.perf_counter() - start
    return DecodeResult(sequence, max_new_tokens, seconds, cache_bytes(cache))


def decode(model, input_ids, policy: Any = None, max_new_tokens: int = 32, *, guard: bool = True) -> DecodeResult:
    """Greedy decoding speed under ``policy`` (RoE: K-sample ensemble decoding)."""
    from semoe.routing.base import make_policy
    from semoe.routing.ensemble import roe_decode
    from semoe.routing.patch import route_with

    input_ids = input_ids.to(next(model.parameters()).device)
    if policy is None:
        return greedy_decode(model, input_ids, max_new_tokens)
    policy = make_policy(policy)
    if is_roe(policy):
        out = roe_decode(model, input_ids, policy, max_new_tokens, guard=guard)
        new = out.sequences.shape[1] - input_ids.shape[1]
        return DecodeResult(out.sequences, new, out.decode_seconds, cache_bytes(out.cache), out.stats)
    with route_with(model, policy, guard=guard) as session:
        result = greedy_decode(model, input_ids, max_new_tokens)
    result.stats = session.stats
    return result


# ---------------------------------------------------------------- heatmap


def _viridis(x):
    import numpy as np

    anchors = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
    pos = np.clip(x, 0, 1) * (len(anchors) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(anchors) - 2)
    frac = (pos - lo)[..., None]
    return (anchors[lo] * (1 - frac) + anchors[lo + 1] * frac).round().astype(np.uint8)


def write_png(path: str | Path, rgb) -> None:
    """Minimal RGB PNG writer (zlib + CRC chunks), so heatmaps need no plotting library."""
    import numpy as np

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def write_heatmap_png(path: str | Path, counts: Sequence[Sequence[float]], cell: int = 8) -> None:
    """Expert-activation heatmap: one row of ``cell``-pixel squares per MoE layer, one column
    per expert, viridis colour of each layer's activation share scaled to the largest share."""
    import numpy as np

    m = np.asarray(counts, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ValueError("heatmap needs a non-empty (layers, experts) matrix")
    totals = m.sum(axis=1, keepdims=True)
    share = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    top = share.max()
    img = _viridis(share / top if top > 0 else share)
    write_png(path, np.repeat(np.repeat(img, cell, axis=0), cell, axis=1))


# ---------------------------------------------------------------- rows


def policy_key(name: str, params: dict) -> str:
    """Stable key of a policy and its params (the tables' identity for a policy): ``PolicySpec.key``."""
    from semoe.config import PolicySpec

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


# ---------------------------------------------------------------- one policy end to end


def prepare_policy(model, spec: Any, calibration: Sequence | None = None):
    """A policy ready to route ``model``: fitted on ``calibration`` batches when it needs it."""
    from semoe.routing.base import make_policy

    policy = make_policy(spec)
    if policy.needs_calibration():
        if not calibration:
            raise ValueError(f"{policy.name} needs calibration text (e.g. BH with p_values='calibrated')")
        policy.calibrate(model, calibration)
    return policy


@dataclass
class PolicyEvaluation:
    policy: Any
    mode: str
    ppl: PerplexityResult
    decode: DecodeResult | None
    memory: PeakMemory
    heatmap_path: str | None = None

    def run_row(self, run_id: str, model: str, key: str | None = None, **context) -> dict:
        return routing_run_row(
            run_id,
            model,
            self.policy,
            self.mode,
            self.ppl,
            self.decode,
            self.memory,
            self.heatmap_path,
            key=key,
            **context,
        )

    def layer_rows(self, run_id: str, model: str, key: str | None = None) -> list[dict]:
        key = key or policy_key(self.policy.name, self.policy.describe())
        return layer_stat_rows(run_id, model, key, self.mode, self.ppl.stats)


def evaluate_policy(
    model,
    spec: Any,
    batches: Sequence,
    *,
    mode: str = "patch",
    calibration: Sequence | None = None,
    decode_prompt=None,
    max_new_tokens: int = 32,
    guard: bool = True,
    heatmap_path: str | Path | None = None,
) -> PolicyEvaluation:
    """Perplexity + statistics (+ decode speed on ``decode_prompt``) of one policy, with peak
    memory. ``spec=None`` is the model's own routing (``topk`` in analyze mode)."""
    if spec is None:
        spec, mode = "topk", "analyze"
    policy = prepare_policy(model, spec, calibration)
    with PeakMemory(next(model.parameters()).device) as memory:
        ppl = perplexity(model, batches, policy, mode=mode, guard=guard)
        dec = None
        if decode_prompt is not None:
            dec = decode(model, decode_prompt, policy if mode == "patch" else None, max_new_tokens, guard=guard)
    if heatmap_path is not None:
        write_heatmap_png(heatmap_path, ppl.stats.activation_matrix())
    return PolicyEvaluation(policy, mode, ppl, dec, memory, str(heatmap_path) if heatmap_path else None)
