"""bfloat16 inference on CPU (issue 13): it loads and decodes, and a CPU that would only
emulate the dtype (slower than float32) is named in a warning."""

from __future__ import annotations

import logging

import pytest

from semoe.models.loading import cpu_dtype_warning


@pytest.mark.parametrize(
    "dtype, flags, slow",
    [
        ("bfloat16", {"avx512f", "avx512_bf16"}, False),
        ("bfloat16", {"avx512f", "amx_bf16"}, False),
        ("bfloat16", {"avx2", "avx512f"}, True),
        ("float16", {"avx512_bf16"}, True),
        ("float16", {"amx_fp16"}, False),
        ("float32", set(), False),
        ("auto", set(), False),
        ("bfloat16", None, False),  # flags unknown (not Linux): say nothing
    ],
)
def test_cpu_dtype_warning(dtype, flags, slow):
    warning = cpu_dtype_warning(dtype, flags)
    assert (warning is not None) is slow
    if slow:
        assert dtype in warning and "float32" in warning


def test_bfloat16_model_decodes_on_cpu_and_warns_without_native_support(tiny_lm_dir, monkeypatch, caplog):
    import torch

    import semoe.models.loading as loading
    from semoe.generation.lm import ChatLM

    monkeypatch.setattr(loading, "cpu_flags", lambda: {"avx2"})
    loading._load_model.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="semoe.models.loading"):
            model, tok = loading.load_model(tiny_lm_dir, "unused-cache-root", "bfloat16", "cpu")
        assert model.dtype == torch.bfloat16
        assert "bfloat16 on a CPU without avx512_bf16 or amx_bf16" in caplog.text
        lm = ChatLM(model, tok)
        gens = lm.generate(
            [[{"role": "user", "content": f"Name a town {i}."}] for i in range(3)],
            6,
            batch_size=2,
            stop_when=lambda text: len(text) > 12,
        )
        assert all(0 < g.new_tokens <= 6 and g.text for g in gens)
    finally:
        loading._load_model.cache_clear()
