"""Settings of PRAG-style passage augmentation (see semoe.experts.augment)."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


class AugmentConfig(BaseModel, extra="forbid"):
    """How each passage is rewritten and turned into QA pairs.

    The cache key holds only what decides the content of a success (passage text,
    augmenting model, prompt version, ``n_qa``, ``n_rewrites``, ``min_rewrites``); the other settings change
    how hard the pipeline tries, not what a good augmentation is.
    """

    model: str | None = Field(None, description="augmenting model spec; None = the generator's model.spec")
    n_rewrites: int = Field(1, ge=0, description="rewrites per passage (PRAG: 1)")
    n_qa: int = Field(3, ge=1, le=10, description="QA pairs asked for per passage (PRAG: 3)")
    min_rewrites: int = Field(
        0, ge=0, description="accepted rewrites a passage needs; with fewer it still trains on its QA pairs (the "
        "failed rewrites' reasons are recorded)",
    )
    min_qa: int = Field(1, ge=1, description="usable QA pairs an answer needs to be accepted")
    max_attempts: int = Field(3, ge=1, le=10, description="generations per rewrite / QA list before the passage fails")
    retry_temperature: float = Field(0.7, gt=0, le=2, description="sampling temperature of retries (attempt 1 is greedy)")
    seed: int = Field(0, description="seed of the sampled retries")
    grounded: bool = Field(
        True, description="keep only QA pairs whose answer occurs in the passage and whose question names nothing absent from it"
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
