"""Top-k routers that mirror transformers 5.x ``OlmoeTopKRouter``, so code that patches HF MoE
routers (semoe.routing) handles these too.

Mirrored interface: ``forward(hidden_states) -> (router_logits, router_scores, router_indices)``
with ``hidden_states`` reshaped to ``(-1, hidden_dim)``, ``router_logits`` of shape
``(tokens, num_experts)`` in the input dtype, ``router_scores`` the top-k softmax probabilities
``(tokens, top_k)`` (renormalised when ``norm_topk_prob``) and ``router_indices``
``(tokens, top_k)``; attributes ``top_k``, ``num_experts``, ``norm_topk_prob``, ``hidden_dim`` and
``weight`` of shape ``(num_experts, hidden_dim)``.

The recurrent router keeps that signature, so the recurrent state cannot be an argument: the
MoE block binds a :class:`RouterCarry` to the router for the duration of one call
(:meth:`SemoeRecurrentRouter.carrying`), and the router reads the state before the call from it
and writes the state after it back. Who owns the carry decides what the state spans: the KV
cache owns one per layer in ``sequence`` mode (state carried across decode steps), the model
owns one per forward pass shared by all layers in ``layers`` mode (RMoE).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from semoe.config import MoeLMConfig


@dataclass
class RouterCarry:
    """Recurrent router state between calls: ``state`` has the ``nn.GRU``/``nn.RNN`` layout
    ``(1, rows, router_hidden_dim)``; None means zeros (start of a sequence, or the first layer).
    ``batch_size`` tells the router how the flat ``(tokens, hidden)`` input splits into sequences."""

    batch_size: int
    state: torch.Tensor | None = None


class _TopKRouter(nn.Module):
    def __init__(self, cfg: MoeLMConfig):
        super().__init__()
        self.top_k = cfg.k
        self.num_experts = cfg.num_experts
        self.norm_topk_prob = cfg.norm_topk_prob
        self.hidden_dim = cfg.d_model
        self.weight = nn.Parameter(torch.randn(self.num_experts, self.hidden_dim) * 0.02)

    def _select(self, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """OlmoeTopKRouter's selection, step for step."""
        router_probs = F.softmax(router_logits, dtype=torch.float, dim=-1)
        router_top_value, router_indices = torch.topk(router_probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            router_top_value = router_top_value / router_top_value.sum(dim=-1, keepdim=True)
        return router_logits, router_top_value.to(router_logits.dtype), router_indices


class SemoeLinearRouter(_TopKRouter):
    """Same computation as ``OlmoeTopKRouter``: logits = hidden · weightᵀ."""

    def forward(self, hidden_states: torch.Tensor):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        return self._select(F.linear(hidden_states, self.weight))


def build_cell(cfg: MoeLMConfig) -> nn.Module:
    """The recurrent cell, as a one-layer ``nn.GRU``/``nn.RNN`` so a whole sequence runs in one call."""
    cls = {"gru": nn.GRU, "rnn": nn.RNN}[cfg.router_type]
    return cls(cfg.router_hidden_dim, cfg.router_hidden_dim, batch_first=True)


class SemoeRecurrentRouter(_TopKRouter):
    """logits = [hidden ; s] · [weight ; state_weight]ᵀ with s = cell(input_proj(hidden), s_prev).

    ``weight`` keeps OlmoeTopKRouter's meaning (the hidden-state part of the projection);
    ``state_weight`` adds the recurrent state's part. ``input_proj`` is per layer, as RMoE's
    projector; ``cell`` is per layer in ``sequence`` mode and one module shared by all layers in
    ``layers`` mode (RMoE shares its GRU across layers).
    """

    def __init__(self, cfg: MoeLMConfig, cell: nn.Module):
        super().__init__(cfg)
        self.recurrent_mode = cfg.recurrent_mode
        self.router_hidden_dim = cfg.router_hidden_dim
        self.input_proj = nn.Linear(cfg.d_model, cfg.router_hidden_dim, bias=False)
        self.cell = cell
        self.state_weight = nn.Parameter(torch.randn(self.num_experts, self.router_hidden_dim) * 0.02)
        self.carry: RouterCarry | None = None

    @contextmanager
    def carrying(self, carry: RouterCarry) -> Iterator[None]:
        """Bind ``carry`` for the calls inside the block; unbound afterwards, so no state lingers
        on the module between forward passes."""
        self.carry = carry
        try:
            yield
        finally:
            self.carry = None

    def forward(self, hidden_states: torch.Tensor):
        carry = self.carry
        if carry is None:  # a standalone call: a 3-D input is (batch, seq, hidden), a flat one is one sequence
            carry = RouterCarry(hidden_states.shape[0] if hidden_states.dim() == 3 else 1)
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        inputs = self.input_proj(hidden_states)
        if self.recurrent_mode == "sequence":
            inputs = inputs.view(carry.batch_size, -1, self.router_hidden_dim)
        else:
            inputs = inputs.view(-1, 1, self.router_hidden_dim)
        states, carry.state = self.cell(inputs, carry.state)
        states = states.reshape(-1, self.router_hidden_dim)
        return self._select(F.linear(hidden_states, self.weight) + F.linear(states, self.state_weight))


def build_routers(cfg: MoeLMConfig) -> list[_TopKRouter]:
    """One router per layer; in ``layers`` mode the recurrent routers share one cell."""
    if cfg.router_type == "linear":
        return [SemoeLinearRouter(cfg) for _ in range(cfg.n_layers)]
    shared = build_cell(cfg) if cfg.recurrent_mode == "layers" else None
    return [SemoeRecurrentRouter(cfg, shared or build_cell(cfg)) for _ in range(cfg.n_layers)]
