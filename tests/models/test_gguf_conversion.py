"""Embedded GGUF → safetensors conversion: the memoised parse gives byte-identical files."""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import numpy as np
import pytest

from semoe.models import loading

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 16, 32, 2, 4, 2
TOKENS = ["<|endoftext|>", "a", "b", "c", "Ġ", "ab", "Ġa", "abc"]
MERGES = ["a b", "Ġ a", "ab c"]


def make_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer llama GGUF (float32 tensors, an 8-token byte-level BPE), like the embedded
    SmolLM2 file in kind: tokenizer arrays, config fields, tied output embedding."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(TOKENS)
    w.add_token_merges(MERGES)
    w.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(TOKENS) - 1))
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    kv = HIDDEN // HEADS * KV_HEADS
    shapes = {"token_embd.weight": (len(TOKENS), HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (HIDDEN,),
            f"blk.{i}.attn_q.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.attn_k.weight": (kv, HIDDEN),
            f"blk.{i}.attn_v.weight": (kv, HIDDEN),
            f"blk.{i}.attn_output.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.ffn_norm.weight": (HIDDEN,),
            f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN),
            f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
            f"blk.{i}.ffn_down.weight": (HIDDEN, FFN),
        }
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture()
def parses(monkeypatch) -> list[str]:
    """Paths gguf's reader parsed during the test."""
    import gguf

    seen: list[str] = []
    real = gguf.GGUFReader.__init__

    def counting(self, path, mode="r"):
        seen.append(str(path))
        real(self, path, mode)

    monkeypatch.setattr(gguf.GGUFReader, "__init__", counting)
    return seen


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_one_parse_and_no_initialisation_give_the_same_files_as_transformers_alone(tmp_path, parses, monkeypatch):
    gguf_file = make_tiny_gguf(tmp_path / "tiny.gguf")
    loading._convert_gguf(gguf_file, tmp_path / "memoised")
    memoised_parses = len(parses)
    monkeypatch.setattr(loading, "_one_gguf_parse", contextlib.nullcontext)
    initialization = importlib.import_module("transformers.initialization")
    monkeypatch.setattr(initialization, "no_init_weights", contextlib.nullcontext)
    loading._convert_gguf(gguf_file, tmp_path / "plain")

    assert memoised_parses == 1
    assert len(parses) - memoised_parses == 3  # tokenizer, config, weights
    memoised, plain = _files(tmp_path / "memoised"), _files(tmp_path / "plain")
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= set(plain)
    assert memoised == plain


def test_the_converted_checkpoint_holds_exactly_the_gguf_weights(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    gguf_file = make_tiny_gguf(tmp_path / "tiny.gguf")
    loading._convert_gguf(gguf_file, tmp_path / "converted")
    converted = AutoModelForCausalLM.from_pretrained(str(tmp_path / "converted")).state_dict()
    original = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=gguf_file.name).state_dict()
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)


def test_gguf_is_restored_after_the_conversion_even_on_error(tmp_path):
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with pytest.raises(RuntimeError, match="inside"):
        with loading._one_gguf_parse():
            assert gguf.GGUFReader is not reader
            raise RuntimeError("inside")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)


def test_run_warm_up_converts_the_embedded_model_for_the_flow(tmp_path, monkeypatch):
    """``semoe run`` converts an embedded model while its Prefect API starts (``cli._warm_up``):
    the flow's load then finds it converted."""
    from semoe import cli
    from semoe.config import SemoeConfig

    gguf_file = make_tiny_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setitem(loading.EMBEDDED_MODELS, "tiny-gguf", loading.EMBEDDED_MODELS["smollm2-135m-instruct"])
    monkeypatch.setattr(loading, "_embedded_gguf_path", lambda alias: gguf_file)
    cfg = SemoeConfig.model_validate({"model": {"spec": "tiny-gguf"}, "cache": {"root": str(tmp_path / "cache")}})
    converted: list[Path] = []
    convert = loading._convert_gguf
    monkeypatch.setattr(loading, "_convert_gguf", lambda src, out: converted.append(out) or convert(src, out))

    cli._warm_up(cfg)
    assert len(converted) == 1
    model, tokenizer = loading._load_model("tiny-gguf", cfg.cache.root, "float32", "cpu")
    assert len(converted) == 1  # the load reused the warm-up's conversion
    assert model.config.num_hidden_layers == LAYERS and tokenizer.convert_ids_to_tokens(7) == "abc"
    loading._load_model.cache_clear()
