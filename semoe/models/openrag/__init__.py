"""Open-RAG (Islam et al., Findings of EMNLP 2024): Llama-2 whose every MLP carries a
parameter-efficient MoE of adapters — the names a light module needs, no torch.

The released checkpoint (``shayekh/openrag_llama2_7b_8x135m``) ships remote code written for
transformers 4.36; its ``config.json`` says ``model_type: llama`` with an ``auto_map`` into
``modeling_openrag``, so transformers 5.x without ``trust_remote_code`` would load a plain
Llama and silently drop every adapter. :func:`is_openrag_config` recognises such a config
(and semoe's own ``model_type: openrag``) so ``semoe.models.loading`` builds the native model
of :mod:`semoe.models.openrag.modeling` instead.
"""

from __future__ import annotations

from typing import Any

RELEASED_ID = "shayekh/openrag_llama2_7b_8x135m"
MODEL_TYPE = "openrag"

# The special tokens Open-RAG's training script adds to the Llama-2 tokenizer
# (train_openrag_moe.py in github.com/ShayekhBinIslam/openrag), in its order.
REFLECTION_TOKENS: tuple[str, ...] = (
    "[No Retrieval]",
    "[Retrieval]",
    "[Continue to Use Evidence]",
    "[Irrelevant]",
    "[Relevant]",
    "<paragraph>",
    "</paragraph>",
    "[Utility:1]",
    "[Utility:2]",
    "[Utility:3]",
    "[Utility:4]",
    "[Utility:5]",
    "[Fully supported]",
    "[Partially supported]",
    "[No support / Contradictory]",
)


class CheckpointError(ValueError):
    """An Open-RAG checkpoint that does not set every parameter of the model."""


# Fields the released config adds to Llama's; all of them mark an Open-RAG config.
MOE_FIELDS = ("num_experts", "topk", "adapter_dim", "moe_scaling")


def is_openrag_config(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` mapping describes Open-RAG: ``model_type: openrag``, an
    ``auto_map`` into the released remote code, or a Llama config with the adapter-MoE fields."""
    if config.get("model_type") == MODEL_TYPE:
        return True
    auto_map = config.get("auto_map") or {}
    if any("openrag" in str(target).lower() for target in auto_map.values()):
        return True
    return config.get("model_type") == "llama" and all(k in config for k in MOE_FIELDS)
