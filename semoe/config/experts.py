"""Passage experts: how a passage is augmented (``augment:``, PRAG's recipe) and how its LoRA
is trained (``experts:``).

Expert training (``ExpertConfig``).

Defaults are PRAG's (rank 2, alpha 32, no dropout, lr 3e-4, one epoch over the passage's
training sequences, LoRA on the MLP projections, torch AdamW with its default weight decay).
``identity()`` is what decides an expert's weights and so goes into its cache key; the
operational settings (batch size, loss reporting) are left out.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from semoe.config.base import Section


class ExpertConfig(Section):
    operational = ("batch_passages", "micro_batch", "measure_loss")

    rank: PositiveInt = 2
    alpha: PositiveFloat = 32.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lr: PositiveFloat = 3e-4
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW's; 0.01 is torch's default, which PRAG keeps")
    epochs: PositiveInt = 1
    targets: list[str] = Field(
        default_factory=lambda: ["gate_proj", "up_proj", "down_proj"],
        description="names of the nn.Linear modules that get a LoRA (matched on the last path component)",
    )
    init_seed: int = Field(42, description="seed of the shared initial LoRA every expert starts from (PRAG: 42)")
    recipe: Literal["prag", "all"] = Field(
        "prag",
        description="prag: the first ceil(n_qa/2) QA pairs once with the passage and once per rewrite, the others "
        "without a passage (3 QA + 1 rewrite: 5 sequences); all: every QA pair with the passage, with each "
        "rewrite and without (3 QA + 1 rewrite: 9 sequences)",
    )
    target: Literal["full_answer", "answer"] = Field(
        "full_answer", description="assistant turn: the full-sentence answer, or PRAG's 'The answer is {answer}.'"
    )
    loss_on: Literal["sequence", "answer"] = Field(
        "sequence", description="sequence: every token (PRAG); answer: only the assistant turn"
    )
    max_length: PositiveInt = Field(3000, description="tokens per training sequence; longer ones are cut (PRAG: 3000)")
    compute_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="dtype of the frozen base model's matmuls in the batched trainer (float32: PRAG's, same experts "
        "as the peft loop); LoRA weights, optimizer, residual stream and loss stay float32. bfloat16 trains about "
        "2x faster on an AMX CPU with the same final loss (not the same weights: Adam amplifies rounding)",
    )
    batch_passages: PositiveInt = Field(8, description="passages trained together in lockstep by the batched trainer")
    micro_batch: PositiveInt = Field(
        8,
        description="sequences per forward/backward in the batched trainer (bounds activation memory); each "
        "lockstep step accumulates the gradients of ceil(batch_passages / micro_batch) of them",
    )
    measure_loss: bool = Field(
        True, description="evaluate each expert's loss on its sequences before and after training (two extra forwards)"
    )

    @field_validator("targets")
    @classmethod
    def _targets_non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must list at least one module name")
        return sorted(set(v))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def init_identity(self) -> dict:
        """The settings the shared initial LoRA depends on."""
        return {"rank": self.rank, "alpha": self.alpha, "targets": self.targets, "init_seed": self.init_seed}


class AugmentConfig(Section):
    """How each passage is rewritten and turned into QA pairs.

    The cache key holds only what decides the content of a success (passage text,
    augmenting model, prompt version, ``n_qa``, ``n_rewrites``, ``min_rewrites``); the other settings change
    how hard the pipeline tries, not what a good augmentation is.
    """

    operational = ("batch_size", "chunk_size")

    model: str | None = Field(None, description="augmenting model spec; None = the generator's model.spec")
    n_rewrites: int = Field(1, ge=0, description="rewrites per passage (PRAG: 1)")
    n_qa: int = Field(3, ge=1, le=10, description="QA pairs asked for per passage (PRAG: 3)")
    min_rewrites: int = Field(
        0,
        ge=0,
        description="accepted rewrites a passage needs; with fewer it still trains on its QA pairs (the "
        "failed rewrites' reasons are recorded)",
    )
    min_qa: int = Field(1, ge=1, description="usable QA pairs an answer needs to be accepted")
    max_attempts: int = Field(3, ge=1, le=10, description="generations per rewrite / QA list before the passage fails")
    retry_temperature: float = Field(
        0.7, gt=0, le=2, description="sampling temperature of retries (attempt 1 is greedy)"
    )
    seed: int = Field(0, description="seed of the sampled retries")
    grounded: bool = Field(
        True,
        description=(
            "keep only QA pairs whose answer occurs in the passage and whose question names nothing absent from it"
        ),
    )
    batch_size: int = Field(8, ge=1, description="conversations per model.generate call")
    chunk_size: int = Field(32, ge=1, description="passages generated and cached together (resume granularity)")
    rewrite_max_new_tokens: int = Field(192, ge=8, le=4096)
    qa_max_new_tokens: int = Field(200, ge=8, le=4096)
    retry_failed: bool = Field(False, description="regenerate passages whose cached augmentation failed")

    @model_validator(mode="after")
    def _min_qa_le_n_qa(self) -> "AugmentConfig":
        if self.min_qa > self.n_qa:
            raise ValueError(f"min_qa ({self.min_qa}) must not exceed n_qa ({self.n_qa})")
        if self.min_rewrites > self.n_rewrites:
            raise ValueError(f"min_rewrites ({self.min_rewrites}) must not exceed n_rewrites ({self.n_rewrites})")
        return self

    def augmenting_model(self, generator_spec: str) -> str:
        """The spec to load and to key the cache with."""
        return self.model or generator_spec
