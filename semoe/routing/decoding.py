"""Running a model under a routing policy: teacher-forced perplexity over held-out texts and
greedy decoding speed (RoE: the K-sample ensemble of :mod:`semoe.routing.ensemble`).

torch, and the routing modules that import it, are imported inside the functions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

from semoe.routing.base import make_policy
from semoe.routing.memory import cache_bytes


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
