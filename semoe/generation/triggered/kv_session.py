"""One KV cache kept across decoding steps, retrievals and questions (the triggered engine's
model calls): each target sequence reuses the longest cached prefix and runs only the rest.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import TYPE_CHECKING, Any, Callable, Sequence

from semoe.generation.kv_cache import in_place_cache

if TYPE_CHECKING:
    import torch

Forward = Callable[[Any, "torch.Tensor", Any], "torch.Tensor"]


def default_forward(model, input_ids: "torch.Tensor", cache) -> "torch.Tensor":
    """Next-token logits (vocab,) after feeding ``input_ids`` (1, n) on top of ``cache``;
    only the last position goes through the LM head."""
    out = model(input_ids=input_ids, **{_cache_kwarg(type(model)): cache}, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1]


@functools.lru_cache(maxsize=None)
def _cache_kwarg(model_cls) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache`` (old name deprecated)."""

    return "cache" if "cache" in inspect.signature(model_cls.forward).parameters else "past_key_values"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token id sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class KVSession:
    """One KV cache and the token ids it holds. ``sync`` brings it to a target sequence by
    cropping to the longest common prefix and running only the rest; ``step`` feeds one
    token. Both return the next-token logits.

    ``remember(n)`` keeps a copy of the first n cached tokens (a few, least recently used
    dropped): the few-shot part of a prompt recurs in every question, but the live cache
    has moved on to another prompt by then (e.g. one with passages) and shares only the
    chat header with it."""

    def __init__(self, model, forward: Forward = default_forward, max_snapshots: int = 4, reserve: int = 64):
        self.model = model
        self.forward = forward
        self.max_snapshots = max_snapshots
        self.reserve = reserve  # decoding room of each new cache (``semoe.generation.kv_cache``)
        self.ids: list[int] = []
        self.cache = None
        self.logits = None
        self.snapshots: list[tuple[list[int], Any]] = []  # most recently used first
        self.prefilled = 0  # tokens run by sync (prompt work actually done)
        self.reused = 0  # tokens sync found in the cache

    def invalidate(self) -> None:
        """Forget every cached key/value, snapshots included."""
        self.ids, self.cache, self.logits, self.snapshots = [], None, None, []

    def remember(self, n: int) -> None:
        if not 0 < n <= len(self.ids) or any(ids == self.ids[:n] for ids, _ in self.snapshots):
            return
        cache = copy.deepcopy(self.cache)
        if n < len(self.ids):
            cache.crop(n - len(self.ids))
        self.snapshots = [(self.ids[:n], cache), *self.snapshots][: self.max_snapshots]

    def _run(self, ids: Sequence[int]):
        import torch

        x = torch.tensor([list(ids)], dtype=torch.long, device=next(self.model.parameters()).device)
        self.logits = self.forward(self.model, x, self.cache).float()
        return self.logits

    def sync(self, target: Sequence[int]):
        target = list(target)
        if not target:
            raise ValueError("cannot run an empty sequence")
        n = common_prefix(self.ids, target)
        best = max(self.snapshots, key=lambda snap: common_prefix(snap[0], target), default=None)
        if best is not None and common_prefix(best[0], target) > n:
            self.snapshots.remove(best)
            self.snapshots.insert(0, best)
            self.ids, self.cache, self.logits = list(best[0]), copy.deepcopy(best[1]), None
            n = common_prefix(self.ids, target)
        if n == len(target) == len(self.ids) and self.logits is not None:
            self.reused += n
            return self.logits
        n = min(n, len(target) - 1)  # at least one token must run to give logits
        if self.cache is None or n == 0:
            self.cache, n = in_place_cache(self.model.config, self.reserve), 0
        elif n < len(self.ids):
            self.cache.crop(n - len(self.ids))  # negative: tokens to remove
        self.reused += n
        self.prefilled += len(target) - n
        self.ids = target
        return self._run(target[n:])

    def step(self, token: int):
        self.ids.append(token)
        return self._run([token])
