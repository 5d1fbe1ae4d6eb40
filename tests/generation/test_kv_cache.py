"""The in-place KV cache (semoe.generation.kv_cache) holds exactly what transformers'
DynamicCache holds through every operation generation uses, without copying the cache at
each decoding step."""

import copy

import pytest

torch = pytest.importorskip("torch")
from transformers import LlamaConfig  # noqa: E402
from transformers.cache_utils import DynamicCache, DynamicLayer  # noqa: E402

from semoe.generation.kv_cache import in_place_cache  # noqa: E402

CONFIG = LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32, vocab_size=64)


def _kv(batch, tokens, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, tokens, 8, generator=g), torch.randn(batch, 2, tokens, 8, generator=g)


def _same(a, b):
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)


def _update(caches, batch, tokens, seed):
    for cache in caches:
        for i in range(len(cache.layers)):
            cache.update(*_kv(batch, tokens, seed + i), layer_idx=i)


def test_same_keys_and_values_as_dynamic_cache_through_generation_steps():
    plain, in_place = DynamicCache(config=CONFIG), in_place_cache(CONFIG, reserve=3)
    assert all(type(x) is not DynamicLayer for x in in_place.layers)
    both = (plain, in_place)
    _update(both, 1, 5, seed=0)  # a shared prefix, batch 1
    for cache in both:
        cache.batch_repeat_interleave(4)
    _update(both, 4, 6, seed=10)  # the rows' suffixes
    _same(plain, in_place)
    for step in range(5):  # past the reserve of 3: a reallocation on the way
        _update(both, 4, 1, seed=20 + step)
        _same(plain, in_place)
    keep = torch.tensor([0, 2, 3])
    for cache in both:
        cache.batch_select_indices(keep)
    _same(plain, in_place)
    _update(both, 3, 1, seed=40)
    _same(plain, in_place)
    for cache in both:
        cache.crop(-2)
    _update(both, 3, 2, seed=50)
    _same(plain, in_place)
    assert plain.get_seq_length() == in_place.get_seq_length() == 5 + 6 + 5 + 1


def test_a_decoding_step_writes_into_the_buffer_instead_of_copying_the_cache():
    cache = in_place_cache(CONFIG, reserve=6)
    _update([cache], 3, 7, seed=0)
    layer = cache.layers[0]
    before = layer.keys.data_ptr()
    for step in range(4):
        _update([cache], 3, 1, seed=step)
        assert layer.keys.data_ptr() == before  # a view of the same buffer, one position longer
    cache.batch_select_indices(torch.tensor([1, 2]))
    after_select = layer.keys.data_ptr()
    _update([cache], 2, 1, seed=9)  # the selected rows kept their room: no reallocation
    assert layer.keys.data_ptr() == after_select and layer.keys.shape == (2, 2, 12, 8)


def test_a_deep_copy_holds_the_same_values_and_still_appends_in_place():
    """The triggered engine's KV session keeps deep copies of its cache (``KVSession.remember``)."""
    cache = in_place_cache(CONFIG, reserve=4)
    _update([cache], 1, 7, seed=0)
    snapshot = copy.deepcopy(cache)
    _same(cache, snapshot)
    layer = snapshot.layers[0]
    before = layer.keys.data_ptr()
    _update([cache, snapshot], 1, 1, seed=5)
    _same(cache, snapshot)
    assert layer.keys.data_ptr() == before and before != cache.layers[0].keys.data_ptr()
