"""A small decoder-only MoE transformer: RMSNorm, causal attention with rotary positions and a
KV cache, and a sparse MoE FFN of SwiGLU experts in every layer.

The MoE block is laid out like transformers' ``OlmoeSparseMoeBlock`` (``gate`` = the router,
``experts`` = 3-D expert weights with OLMoE's ``gate_up_proj``/``down_proj`` layout and call
signature), so tools written against OLMoE find the same parts here.

:class:`MoeLMCache` holds the keys and values of every layer and, for routers that carry state
across tokens, each layer's router state: decoding token by token from the cache gives the
same logits and the same expert choices as recomputing the whole sequence.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from semoe.config import MoeLMConfig
from semoe.moe_lm.routers import RouterCarry, SemoeRecurrentRouter, build_routers
from semoe.moe_lm.tokenizer import build_tokenizer


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class Rotary(nn.Module):
    """cos/sin tables for every position up to max_seq_len (rotate-half convention)."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[start : start + length], self.sin[start : start + length]


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


@dataclass
class MoeLMCache:
    """Decoding state: per-layer keys/values ``(batch, heads, seen, head_dim)``, per-layer router
    carries (sequence-mode recurrent routers; None otherwise) and the number of tokens seen."""

    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]
    router_carries: list[RouterCarry | None]
    length: int = 0


class Attention(nn.Module):
    def __init__(self, cfg: MoeLMConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, cache: MoeLMCache | None, layer: int) -> torch.Tensor:
        batch, length, d_model = x.shape
        q, k, v = self.qkv_proj(x).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
        past = 0
        if cache is not None:
            if cache.keys[layer] is not None:
                past = cache.keys[layer].shape[2]
                k = torch.cat([cache.keys[layer], k], dim=2)
                v = torch.cat([cache.values[layer], v], dim=2)
            cache.keys[layer], cache.values[layer] = k, v
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # Query i sits at position past + i and sees keys 0..past + i.
            mask = torch.arange(past + length, device=x.device) <= past + torch.arange(length, device=x.device)[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, d_model))


class SemoeExperts(nn.Module):
    """SwiGLU experts as 3-D weights, with the layout and call signature of transformers' ``OlmoeExperts``:
    ``gate_up_proj`` ``(E, 2·ffn, d)`` (gate rows first), ``down_proj`` ``(E, d, ffn)``."""

    def __init__(self, cfg: MoeLMConfig):
        super().__init__()
        self.num_experts = cfg.num_experts
        self.hidden_dim = cfg.d_model
        self.intermediate_dim = cfg.ffn_hidden_dim
        experts, hidden, ffn = self.num_experts, self.hidden_dim, self.intermediate_dim
        self.gate_up_proj = nn.Parameter(0.02 * torch.randn(experts, 2 * ffn, hidden))
        self.down_proj = nn.Parameter(0.02 * torch.randn(experts, hidden, ffn))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        # Sort the (token, slot) assignments by expert so each expert runs one contiguous matmul;
        # gathers and index_copy_ are much faster on CPU than OLMoE's per-expert index_add_.
        tokens, top_k = top_k_index.shape
        assignments = top_k_index.flatten()
        order = assignments.argsort(stable=True)
        counts = torch.bincount(assignments, minlength=self.num_experts).tolist()
        outputs = []
        for chunk, gate_up, down in zip(
            hidden_states[order // top_k].split(counts), self.gate_up_proj.unbind(0), self.down_proj.unbind(0)
        ):
            gate, up = F.linear(chunk, gate_up).chunk(2, dim=-1)
            outputs.append(F.linear(F.silu(gate) * up, down))
        sorted_out = torch.cat(outputs)
        out = torch.empty_like(sorted_out).index_copy_(0, order, sorted_out).view(tokens, top_k, -1)
        return (out * top_k_weights.unsqueeze(-1)).sum(dim=1)


class SwiGLU(nn.Module):
    """The dense shared expert."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


@dataclass
class Routing:
    """What one MoE block decided, for the aux loss and expert-usage analysis (flat tokens)."""

    logits: torch.Tensor  # (tokens, num_experts)
    weights: torch.Tensor  # (tokens, k)
    indices: torch.Tensor  # (tokens, k)


class SemoeSparseMoeBlock(nn.Module):
    """``OlmoeSparseMoeBlock`` plus an optional shared expert:
    out = moe_weight · Σ_topk p_e·expert_e(x) + shared_expert_weight · shared_expert(x)."""

    def __init__(self, cfg: MoeLMConfig, gate: nn.Module):
        super().__init__()
        self.gate = gate
        self.experts = SemoeExperts(cfg)
        self.moe_weight = cfg.moe_weight
        self.shared_expert_weight = cfg.shared_expert_weight
        self.shared_expert = (
            SwiGLU(cfg.d_model, cfg.shared_expert_hidden_dim or cfg.ffn_hidden_dim) if cfg.shared_expert else None
        )

    def forward(self, hidden_states: torch.Tensor, carry: RouterCarry | None = None) -> tuple[torch.Tensor, Routing]:
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.reshape(-1, hidden_dim)
        recurrent = isinstance(self.gate, SemoeRecurrentRouter) and carry is not None
        with self.gate.carrying(carry) if recurrent else nullcontext():
            router_logits, top_k_weights, top_k_index = self.gate(hidden_states)
        out = self.moe_weight * self.experts(hidden_states, top_k_index, top_k_weights)
        if self.shared_expert is not None:
            out = out + self.shared_expert_weight * self.shared_expert(hidden_states)
        return out.reshape(batch_size, sequence_length, hidden_dim), Routing(router_logits, top_k_weights, top_k_index)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: MoeLMConfig, gate: nn.Module):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model)
        self.mlp = SemoeSparseMoeBlock(cfg, gate)

    def forward(self, x, cos, sin, cache, layer, carry):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer)
        moe_out, routing = self.mlp(self.post_attention_layernorm(x), carry)
        return x + moe_out, routing


def load_balancing_loss(router_logits: Sequence[torch.Tensor], top_k: int, num_experts: int) -> torch.Tensor:
    """Switch-Transformer/OLMoE auxiliary loss, averaged over layers: E · Σ_e f_e · P_e with f_e the
    share of top-k assignments that go to expert e and P_e its mean router probability. OLMoE's
    value divided by top_k, so uniform routing gives 1.0 and concentration raises it (up to E).
    Only P_e carries gradient: it pushes probability away from overloaded experts."""
    losses = []
    for logits in router_logits:
        probs = F.softmax(logits.float(), dim=-1)
        chosen = torch.topk(probs, top_k, dim=-1).indices
        share = torch.bincount(chosen.flatten(), minlength=num_experts).float() / chosen.numel()
        losses.append(num_experts * (share * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


@dataclass
class MoeLMOutput:
    logits: torch.Tensor  # (batch, seq, vocab)
    aux_loss: torch.Tensor  # scalar
    routing: list[Routing] = field(default_factory=list)  # one per layer
    cache: MoeLMCache | None = None


class MoeLM(nn.Module):
    def __init__(self, cfg: MoeLMConfig):
        super().__init__()
        self.config = cfg
        self.vocab_size = build_tokenizer(cfg.tokenizer).vocab_size
        self.embed_tokens = nn.Embedding(self.vocab_size, cfg.d_model)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.layers = nn.ModuleList(DecoderLayer(cfg, gate) for gate in build_routers(cfg))
        self.norm = RMSNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, self.vocab_size, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)

    def new_cache(self) -> MoeLMCache:
        n = self.config.n_layers
        return MoeLMCache([None] * n, [None] * n, [None] * n)

    def _router_carries(self, batch_size: int, cache: MoeLMCache | None) -> list[RouterCarry | None]:
        """Where each layer's router state lives for this call (see semoe.moe_lm.routers)."""
        cfg = self.config
        if cfg.router_type == "linear":
            return [None] * cfg.n_layers
        if cfg.recurrent_mode == "layers":
            return [RouterCarry(batch_size)] * cfg.n_layers  # one object: layer l hands its state to l + 1
        if cache is None:
            return [RouterCarry(batch_size) for _ in range(cfg.n_layers)]
        if cache.router_carries[0] is None:
            cache.router_carries = [RouterCarry(batch_size) for _ in range(cfg.n_layers)]
        return cache.router_carries

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: MoeLMCache | None = None,
        use_cache: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> MoeLMOutput:
        """Logits for ``input_ids`` (batch, seq). With ``cache`` the tokens continue the cached
        sequence and the cache is extended in place; without it each row is a fresh sequence.

        ``use_cache`` (start a cache when none is given) and ``attention_mask`` take the
        keywords semoe.routing passes to HF models. Only all-ones masks are accepted: padding
        would feed pad tokens into the recurrent router state."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("MoeLM does not support padding; pass unpadded sequences of equal length")
        if cache is None and use_cache:
            cache = self.new_cache()
        batch, length = input_ids.shape
        start = cache.length if cache is not None else 0
        if start + length > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + length} tokens exceeds max_seq_len={self.config.max_seq_len}")
        cos, sin = self.rotary(start, length)
        carries = self._router_carries(batch, cache)
        x = self.embed_tokens(input_ids)
        routing = []
        for i, layer in enumerate(self.layers):
            x, r = layer(x, cos, sin, cache, i, carries[i])
            routing.append(r)
        if cache is not None:
            cache.length = start + length
        aux = load_balancing_loss([r.logits for r in routing], self.config.k, self.config.num_experts)
        return MoeLMOutput(self.lm_head(self.norm(x)), aux, routing, cache)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
