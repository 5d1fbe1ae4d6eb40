"""Last-layer attention of the tokens being decoded, for DRAGIN's RIND and QFS.

Only the last layer runs eager attention, and only inside :meth:`LastLayerAttention.recording`
(one query row per decoded token); every other layer and every prefill keep the model's own
kernel, so the attention comes from the decoding pass itself.

Where this differs from DRAGIN's code (github.com/oneal2000/DRAGIN, ``src/generate.py``):
attention is taken in context (the full prompt plus the text so far), not from a separate
forward over the generated chunk alone; DRAGIN's separate pass gives the chunk's first token a
self-attention of 1, so it nearly always scores highest.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

RECORDING_ATTENTION = "semoe_recording"


def _recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain softmax attention that also appends each query's weights (heads, keys) to
    ``module._semoe_rows``; the mask may come in any kernel's format, or none (causal)."""
    import torch

    n_rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(n_rep, 1), value.repeat_interleave(n_rep, 1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    q_len, k_len = scores.shape[-2:]
    if attention_mask is None:
        position = torch.arange(q_len, device=query.device)[:, None] + (k_len - q_len)
        allowed = torch.arange(k_len, device=query.device)[None, :] <= position
        scores = scores.masked_fill(~allowed, float("-inf"))
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :k_len], float("-inf"))
    else:
        scores = scores + attention_mask[..., :k_len]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32)
    out = torch.matmul(weights.to(value.dtype), value).transpose(1, 2).contiguous()
    for i in range(q_len):
        module._semoe_rows.append(weights[0, :, i, : k_len - q_len + i + 1].cpu())
    return out, weights


class _RecordingConfig:
    """The last attention layer's view of the config while recording: only the attention
    implementation differs, so no other layer and no mask construction changes."""

    _attn_implementation = RECORDING_ATTENTION

    def __init__(self, base):
        self._base = base

    def __getattr__(self, name):
        return getattr(self._base, name)


class LastLayerAttention:
    """Records last-layer attention rows of the tokens decoded inside ``recording()``."""

    def __init__(self, model):
        from transformers import AttentionInterface

        AttentionInterface.register(RECORDING_ATTENTION, _recording_attention)
        layers = [m for name, m in model.named_modules() if name.endswith("self_attn") and hasattr(m, "config")]
        if not layers:
            raise ValueError(f"{type(model).__name__}: no '*.self_attn' attention modules to record attention from")
        self.module = layers[-1]
        self.rows: list = []

    @contextlib.contextmanager
    def recording(self) -> Iterator[list]:
        base = self.module.config
        self.module.config = _RecordingConfig(base)
        self.module._semoe_rows = self.rows
        try:
            yield self.rows
        finally:
            self.module.config = base
            del self.module._semoe_rows
