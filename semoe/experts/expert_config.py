"""Settings of per-passage LoRA expert training (the ``experts:`` config section).

Defaults are PRAG's (rank 2, alpha 32, no dropout, lr 3e-4, one epoch over the passage's
training sequences, LoRA on the MLP projections, torch AdamW with its default weight decay).
``identity()`` is what decides an expert's weights and so goes into its cache key; the
operational settings (batch size, loss reporting) are left out.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator

OPERATIONAL_FIELDS = ("batch_passages", "micro_batch", "measure_loss")


class ExpertConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
        8, description="sequences per forward/backward in the batched trainer (bounds activation memory); each "
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

    def identity(self) -> dict:
        """The settings an expert's weights depend on."""
        d = self.model_dump(mode="json")
        for key in OPERATIONAL_FIELDS:
            d.pop(key)
        return d

    def init_identity(self) -> dict:
        """The settings the shared initial LoRA depends on."""
        return {"rank": self.rank, "alpha": self.alpha, "targets": self.targets, "init_seed": self.init_seed}
