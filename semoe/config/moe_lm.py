"""Configuration of the small MoE language model: architecture, routing and training in one
pydantic model, so a checkpoint's cache key is the hash of everything that shaped its weights.

The defaults are the CPU demo: a byte-level model (d_model 128, 4 layers, 8 SwiGLU experts,
top-2, GRU routers carried across the tokens of a sequence) that trains on the synthetic
encyclopedia in about three minutes on two cores.

Tokenizer: ``byte`` (UTF-8 bytes plus BOS/EOS, 258 ids) is the only choice. It needs no
files, and a 258-row embedding keeps the output softmax cheap; SmolLM2's 49k vocabulary
would make the embedding and output layer the largest part of a CPU-sized model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from semoe.config.base import Section


class MoeLMConfig(Section):
    tokenizer: Literal["byte"] = Field("byte", description="byte: UTF-8 bytes + BOS/EOS (258 ids)")
    d_model: PositiveInt = 128
    n_layers: PositiveInt = 4
    num_heads: PositiveInt = 4
    num_experts: PositiveInt = 8
    k: PositiveInt = Field(2, description="experts per token (top-k)")
    ffn_hidden_dim: PositiveInt = Field(256, description="hidden width of each SwiGLU expert")
    max_seq_len: PositiveInt = Field(512, description="longest sequence (positions) the model accepts")
    rope_theta: PositiveFloat = 10000.0
    norm_topk_prob: bool = Field(False, description="renormalise the top-k probabilities to sum to 1 (OLMoE: False)")

    router_type: Literal["linear", "gru", "rnn"] = "gru"
    router_hidden_dim: PositiveInt = Field(32, description="size of the recurrent router state")
    recurrent_mode: Literal["sequence", "layers"] = Field(
        "sequence",
        description="sequence: per-layer state carried across the tokens of a sequence; "
        "layers: RMoE, one cell shared by all layers, state carried across layers for each token",
    )

    shared_expert: bool = Field(False, description="a dense SwiGLU expert every token goes through")
    shared_expert_hidden_dim: PositiveInt | None = Field(None, description="defaults to ffn_hidden_dim")
    shared_expert_weight: float = 1.0
    moe_weight: float = 1.0
    aux_loss_coef: float = Field(0.01, ge=0, description="weight of the load-balancing loss (1.0 = balanced)")

    lr: PositiveFloat = 3e-3
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay ends at lr * min_lr_ratio")
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: PositiveFloat = 1.0
    steps: PositiveInt = 300
    batch_size: PositiveInt = 16
    seq_len: PositiveInt = Field(128, description="training window length in tokens")
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> "MoeLMConfig":
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ValueError("d_model / num_heads must be an even integer (rotary embeddings)")
        if self.k > self.num_experts:
            raise ValueError(f"k={self.k} exceeds num_experts={self.num_experts}")
        if self.seq_len > self.max_seq_len:
            raise ValueError(f"seq_len={self.seq_len} exceeds max_seq_len={self.max_seq_len}")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads
