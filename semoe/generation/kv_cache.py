"""A KV cache that appends in place: transformers' ``DynamicCache`` with each full-attention
layer's keys and values kept in a buffer with room for the tokens still to come.

``DynamicLayer.update`` concatenates the whole cache with each new token's keys and values,
so every decoding step copies the batch's entire cache once per layer (16 rows x 800 tokens
x 30 layers of SmolLM2: ~47 ms a step on this CPU). Here a step writes one position into the
buffer and hands attention a view of the filled part: the same values, one copy less.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@functools.cache
def _in_place_layer():
    from transformers.cache_utils import DynamicLayer

    class InPlaceLayer(DynamicLayer):
        """``DynamicLayer`` whose ``keys``/``values`` are views of buffers (batch, heads,
        capacity, head_dim) with ``reserve`` free positions after each reallocation. Row
        selection keeps the buffers; any other method of the base class that replaces
        ``keys``/``values`` (repeat, crop, reorder) leaves them off the buffers or shorter, and
        the next ``update`` copies into a new buffer or writes after the shorter view, so
        those methods stay correct."""

        def __init__(self, reserve: int):
            super().__init__()
            self.reserve = reserve
            self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

        def _on_buffers(self, needed: int) -> bool:
            if self._buffers is None:
                return False
            bk, bv = self._buffers
            return (
                self.keys.data_ptr() == bk.data_ptr()
                and self.values.data_ptr() == bv.data_ptr()
                and self.keys.shape[0] == bk.shape[0]
                and needed <= bk.shape[-2]
            )

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, new = self.get_seq_length(), key_states.shape[-2]
            if not self._on_buffers(n + new):
                batch, heads, _, dim = key_states.shape
                shape = (batch, heads, n + new + self.reserve)
                bk = key_states.new_empty(*shape, dim)
                bv = value_states.new_empty(*shape, value_states.shape[-1])
                if n:
                    bk[:, :, :n], bv[:, :, :n] = self.keys, self.values
                self._buffers = (bk, bv)
            bk, bv = self._buffers
            bk[:, :, n : n + new], bv[:, :, n : n + new] = key_states, value_states
            self.keys, self.values = bk[:, :, : n + new], bv[:, :, : n + new]
            return self.keys, self.values

        def batch_select_indices(self, indices):
            """Rows leaving the batch: the kept rows' buffers, room included, in one copy."""
            n = self.get_seq_length()
            if n == 0 or not self._on_buffers(n):
                return super().batch_select_indices(indices)
            bk, bv = (b.index_select(0, indices.to(b.device)) for b in self._buffers)
            self._buffers = (bk, bv)
            self.keys, self.values = bk[:, :, :n], bv[:, :, :n]

    return InPlaceLayer


def in_place_cache(config, reserve: int):
    """A ``DynamicCache`` for a model with ``config`` whose plain full-attention layers
    append in place, with room for ``reserve`` more tokens (the decode budget) after each
    (re)allocation; other layer kinds (sliding window, linear attention) stay as transformers
    builds them."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    layer = _in_place_layer()
    cache.layers = [layer(reserve) if type(x) is DynamicLayer else x for x in cache.layers]
    return cache
