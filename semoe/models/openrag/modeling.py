"""Open-RAG natively on transformers 5.x: a Llama whose MLP carries a top-k MoE of adapters.

Source: Islam et al., "Open-RAG: Enhanced Retrieval-Augmented Reasoning with Open-Source
Large Language Models" (Findings of EMNLP 2024); architecture and parameter names as in
``openrag/modeling_openrag.py`` of github.com/ShayekhBinIslam/openrag (written for
transformers 4.36). Attention, decoder layer, rotary embedding and head are transformers'
Llama classes; only the MLP differs. Per decoder layer, with ``x`` the MLP input (T, hidden):

    y     = down_proj(silu(gate_proj(x)) * up_proj(x))           the dense Llama MLP
    l     = router(x)                                            (T, num_experts) router logits
    S, w  = top-k of l, softmax over the k chosen logits          (T, k), k = ``topk``
    out   = y + Σ_{e∈S} w_e · moe_scaling · up_e(gelu(down_e(y)))  adapters read the dense output

``down_e: hidden→adapter_dim`` and ``up_e: adapter_dim→hidden`` are bias-free. The released
code adds each adapter to a copy of ``y`` and mixes the copies, ``Σ w_e (y + a_e)``; with the
model's own routing Σ w_e = 1 and that is the formula above. A routing policy whose weights do
not sum to 1 (no renormalisation, zero-weight padding slots) changes only the adapters' mix
here, never the dense MLP.

State-dict keys are the checkpoint's: ``model.layers.N.mlp.moe_adapter.router.weight`` and
``model.layers.N.mlp.moe_adapter.experts.expert_E.adapter_{down,up}.weight`` beside Llama's.
The router mirrors transformers' ``OlmoeTopKRouter`` (``forward(hidden_states) -> (logits,
scores, indices)``, attributes ``top_k``/``num_experts``) and the experts module OLMoE's
``forward(hidden_states, top_k_index, top_k_weights)``, so ``semoe.routing`` routes it through
the ``openrag`` adapter.

``moe_dtype`` (the released config: bfloat16) is the dtype of the router and adapters, kept
whatever dtype the rest of the model loads in; the MoE casts its inputs to it and its output
back. The released remote code stored the field but ran the adapters in the model's dtype.
None: the model's dtype.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, LlamaConfig, PreTrainedConfig
from transformers import initialization as init
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from semoe.models.openrag import MODEL_TYPE, CheckpointError

# Keys of the released config.json that pointed at its remote code (replaced by this module).
_REMOTE_CODE_KEYS = ("auto_map", "architectures", "model_type")


@strict
class OpenRagConfig(LlamaConfig):
    """Llama's config plus the adapter MoE: ``num_experts`` adapters per layer, ``topk`` of them
    per token, ``adapter_dim`` their bottleneck, ``moe_scaling`` their output scale, ``moe_dtype``
    their dtype (a torch dtype name, or None for the model's)."""

    model_type = MODEL_TYPE

    num_experts: int = 8
    topk: int = 2
    adapter_dim: int = 512
    moe_scaling: float = 0.25
    moe_dtype: str | None = "bfloat16"
    output_router_logits: bool = False

    def validate_architecture(self):
        super().validate_architecture()
        if not 1 <= self.topk <= self.num_experts:
            raise ValueError(f"topk={self.topk} must be in 1..num_experts={self.num_experts}")
        if self.moe_dtype is not None and not isinstance(getattr(torch, self.moe_dtype, None), torch.dtype):
            raise ValueError(f"moe_dtype={self.moe_dtype!r} is not a torch dtype name (e.g. bfloat16, float32)")

    @property
    def moe_torch_dtype(self) -> torch.dtype | None:
        return None if self.moe_dtype is None else getattr(torch, self.moe_dtype)

    @classmethod
    def from_released(cls, config: dict[str, Any]) -> OpenRagConfig:
        """The native config of a released ``config.json`` mapping (``model_type: llama`` with an
        ``auto_map`` into the remote code): the same fields, without the remote-code pointers."""
        return cls.from_dict({k: v for k, v in config.items() if k not in _REMOTE_CODE_KEYS})


class OpenRagAdapter(nn.Module):
    """One adapter expert: ``moe_scaling · up(gelu(down(x)))`` (the release's ParallelAdapterMLP)."""

    def __init__(self, config: OpenRagConfig, dtype: torch.dtype | None):
        super().__init__()
        self.adapter_down = nn.Linear(config.hidden_size, config.adapter_dim, bias=False, dtype=dtype)
        self.adapter_up = nn.Linear(config.adapter_dim, config.hidden_size, bias=False, dtype=dtype)
        self.adapter_act = nn.GELU()
        self.adapter_dropout = nn.Dropout(p=0.1)  # the release trains with it; a no-op in eval
        self.adapter_scaling = config.moe_scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter_scaling * self.adapter_up(self.adapter_act(self.adapter_down(self.adapter_dropout(x))))


class OpenRagTopKRouter(nn.Module):
    """``Linear(hidden, num_experts)`` without bias; top-k of the logits, softmax over the k chosen.

    ``forward(hidden_states (..., hidden)) -> (router_logits (T, E), router_scores (T, k),
    router_indices (T, k))``, scores in the logits' dtype, as ``OlmoeTopKRouter``.
    """

    def __init__(self, config: OpenRagConfig, dtype: torch.dtype | None):
        super().__init__()
        self.top_k = config.topk
        self.num_experts = config.num_experts
        self.hidden_dim = config.hidden_size
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size, dtype=dtype))

    def forward(self, hidden_states: torch.Tensor):
        router_logits = F.linear(hidden_states.reshape(-1, self.hidden_dim), self.weight)
        top_logits, router_indices = torch.topk(router_logits, self.top_k, dim=-1)
        router_scores = torch.softmax(top_logits, dim=-1, dtype=torch.float).to(router_logits.dtype)
        return router_logits, router_scores, router_indices


class OpenRagAdapterExperts(nn.Module):
    """The adapters ``expert_0 … expert_{E-1}`` (the release's ModuleDict keys), called as OLMoE's
    experts: ``forward(hidden_states (T, hidden), top_k_index (T, k), top_k_weights (T, k)) ->
    Σ_slots weight · adapter_index(hidden_states)``, shape (T, hidden)."""

    def __init__(self, config: OpenRagConfig, dtype: torch.dtype | None):
        super().__init__()
        self.num_experts = config.num_experts
        for e in range(config.num_experts):
            self.add_module(f"expert_{e}", OpenRagAdapter(config, dtype))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        # Sort the (token, slot) pairs by expert: one matmul per chosen expert, no per-expert masks.
        k = top_k_index.shape[1]
        assignments = top_k_index.reshape(-1)
        order = assignments.argsort(stable=True)
        rows = order // k
        counts = torch.bincount(assignments, minlength=self.num_experts).tolist()
        chunks = hidden_states[rows].split(counts)
        outputs = [expert(chunk) for expert, chunk, n in zip(self.children(), chunks, counts) if n]
        weighted = torch.cat(outputs) * top_k_weights.reshape(-1)[order].unsqueeze(-1).to(hidden_states.dtype)
        return torch.zeros_like(hidden_states).index_add_(0, rows, weighted)


class OpenRagMoeAdapter(nn.Module):
    """The MLP's adapter MoE (checkpoint name ``moe_adapter``): routes on the MLP input, adds
    the chosen adapters of the dense MLP output to it (see the module docstring)."""

    def __init__(self, config: OpenRagConfig):
        super().__init__()
        dtype = config.moe_torch_dtype
        self.router = OpenRagTopKRouter(config, dtype)
        self.experts = OpenRagAdapterExperts(config, dtype)

    def forward(self, mlp_input: torch.Tensor, mlp_output: torch.Tensor) -> torch.Tensor:
        dtype = self.router.weight.dtype
        hidden = mlp_output.reshape(-1, mlp_output.shape[-1])
        _, weights, indices = self.router(mlp_input.to(dtype))
        delta = self.experts(hidden.to(dtype), indices, weights)
        return (hidden + delta.to(hidden.dtype)).view(mlp_output.shape)


class OpenRagMLP(LlamaMLP):
    """Llama's SwiGLU MLP followed by the adapter MoE."""

    def __init__(self, config: OpenRagConfig):
        super().__init__(config)
        self.moe_adapter = OpenRagMoeAdapter(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe_adapter(x, super().forward(x))


class OpenRagDecoderLayer(LlamaDecoderLayer):
    def __init__(self, config: OpenRagConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.mlp = OpenRagMLP(config)


class OpenRagPreTrainedModel(LlamaPreTrainedModel):
    config_class = OpenRagConfig
    config: OpenRagConfig
    _no_split_modules = ["OpenRagDecoderLayer"]
    _can_record_outputs = {**LlamaPreTrainedModel._can_record_outputs, "hidden_states": OpenRagDecoderLayer}

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, OpenRagTopKRouter):  # a bare parameter, not an nn.Linear
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)


class OpenRagModel(OpenRagPreTrainedModel, LlamaModel):
    def __init__(self, config: OpenRagConfig):
        # LlamaModel.__init__ with the Open-RAG decoder layer.
        OpenRagPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(OpenRagDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class OpenRagForCausalLM(OpenRagPreTrainedModel, LlamaForCausalLM):
    """Open-RAG with Llama's LM head; logits are ``lm_head`` of the last hidden state."""

    def __init__(self, config: OpenRagConfig):
        OpenRagPreTrainedModel.__init__(self, config)
        self.model = OpenRagModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


AutoConfig.register(MODEL_TYPE, OpenRagConfig, exist_ok=True)
AutoModel.register(OpenRagConfig, OpenRagModel, exist_ok=True)
AutoModelForCausalLM.register(OpenRagConfig, OpenRagForCausalLM, exist_ok=True)


def read_config(source: str) -> OpenRagConfig:
    """The native config of a local directory or hub id holding a released or native Open-RAG config."""
    config, _ = PreTrainedConfig.get_config_dict(source)
    return OpenRagConfig.from_released(config)


def load_openrag(source: str, dtype: Any = "auto", **kwargs) -> OpenRagForCausalLM:
    """Open-RAG from a local directory or hub id, released checkpoint or native, without
    ``trust_remote_code``. A checkpoint that leaves a parameter unset or holds one the model
    lacks is an error (:class:`CheckpointError` naming the keys), never a silently random adapter."""
    model, info = OpenRagForCausalLM.from_pretrained(
        source, config=read_config(source), dtype=dtype, output_loading_info=True, **kwargs
    )
    for kind, what in (("missing_keys", "lacks"), ("unexpected_keys", "has unknown")):
        if keys := sorted(info[kind]):
            raise CheckpointError(
                f"Open-RAG checkpoint {source} {what} parameters ({len(keys)}, e.g. {', '.join(keys[:3])}): "
                f"its weights do not fit its config.json"
            )
    return model


def released_config_json(config: OpenRagConfig) -> dict[str, Any]:
    """``config`` as the released checkpoint's ``config.json`` writes it (``model_type: llama``,
    ``auto_map`` into the remote code): for tests and for checkpoints saved in that layout."""
    out = config.to_dict()
    out.update(
        model_type="llama",
        architectures=["modeling_openrag.LlamaForCausalLM"],
        auto_map={
            "AutoConfig": "modeling_openrag.OpenRAGConfig",
            "AutoModel": "modeling_openrag.LlamaModel",
            "AutoModelForCausalLM": "modeling_openrag.LlamaForCausalLM",
        },
    )
    return out


def save_released_layout(model: OpenRagForCausalLM, out: str | Path) -> None:
    """Save ``model`` as the released checkpoint is laid out: its weights under the same keys and
    a ``config.json`` that names the remote code (see :func:`released_config_json`)."""
    model.save_pretrained(out)
    (Path(out) / "config.json").write_text(json.dumps(released_config_json(model.config), indent=2))
