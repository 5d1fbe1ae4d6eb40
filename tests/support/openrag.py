"""A tiny random Open-RAG model and a tokenizer with Open-RAG's reflection tokens, built in
process (no hub, no download): for tests and benchmarks of the model family, its routing and
methods that read the reflection tokens.

The tokenizer is a byte-level BPE trained here on a few sentences (so any text encodes, and
the same text always gives the same ids), with ``<s>``/``</s>``/``<unk>``/``<pad>`` and the
reflection tokens added as special tokens, as Open-RAG's training script adds them to Llama-2's.
"""

from __future__ import annotations

from pathlib import Path

TRAINING_TEXT = [
    "The answer is Paris. Paris is the capital of France.",
    "Question: Who wrote the novel? Answer: the author wrote it in 1851.",
    "### Instruction:\nAnswer the question based on the context.\n\n### Response:\n",
    "Knowledge 1: Kensington Runestone. The runestone is a slab of greywacke covered in runes.",
    "Multi-hop reasoning: first find the director, then the director's place of birth.",
    "Yes, no, maybe; numbers 0 1 2 3 4 5 6 7 8 9 and dates such as 12 March 1990.",
]
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def reflection_tokenizer(vocab_size: int = 320):
    """A ``PreTrainedTokenizerFast`` (byte-level BPE of ``vocab_size`` pieces) with Open-RAG's
    special and reflection tokens (``semoe.models.openrag.REFLECTION_TOKENS``) each one id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from semoe.models.openrag import REFLECTION_TOKENS

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, **SPECIAL)
    tok.add_special_tokens({"additional_special_tokens": list(REFLECTION_TOKENS)})
    return tok


def tiny_openrag_config(vocab_size: int, **overrides):
    """4 layers, hidden 32, 8 adapters of width 16, top-2, float32 adapters (~90K parameters)."""
    from semoe.models.openrag.modeling import OpenRagConfig

    kw = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_experts=8,
        topk=2,
        adapter_dim=16,
        moe_scaling=0.25,
        moe_dtype="float32",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        initializer_range=0.1,
    )
    return OpenRagConfig(**{**kw, **overrides})


def tiny_openrag(vocab_size: int = 400, seed: int = 0, **overrides):
    """A random Open-RAG in eval mode. Router weights ×5 and adapter weights ×3 (over an init std
    of 0.1) so routing is decisive (at init all experts are nearly tied) and the adapters move
    the logits visibly."""
    import torch

    from semoe.models.openrag.modeling import OpenRagForCausalLM

    torch.manual_seed(seed)
    model = OpenRagForCausalLM(tiny_openrag_config(vocab_size, **overrides))
    with torch.no_grad():
        for layer in model.model.layers:
            moe = layer.mlp.moe_adapter
            moe.router.weight.mul_(5)
            for param in moe.experts.parameters():
                param.mul_(3)
    return model.eval()


def make_tiny_openrag(out: Path, seed: int = 0, **overrides) -> str:
    """Save a tiny random Open-RAG (``overrides`` of ``tiny_openrag_config``) in the released
    checkpoint's layout (``config.json`` with ``model_type: llama`` and the remote-code
    ``auto_map``) with its reflection tokenizer."""
    from semoe.models.openrag.modeling import save_released_layout

    tok = reflection_tokenizer()
    save_released_layout(tiny_openrag(len(tok), seed, **overrides), out)
    tok.save_pretrained(out)
    return str(out)
