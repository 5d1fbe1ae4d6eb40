"""The model and how it generates: ``model:`` and ``generation:``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from semoe.config.base import Section


class ModelConfig(Section):
    spec: str = Field("smollm2-135m-instruct", description="embedded alias, local directory, or HF hub id")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")


class GenerationConfig(Section):
    max_new_tokens: int = Field(32, ge=1, le=4096)
    batch_size: int = Field(8, ge=1)
    few_shot: int = Field(2, ge=0, le=8, description="number of worked examples in the prompt")
    chain_of_thought: bool = False
    system_prompt: str | None = None
    # Token budget (semoe.generation.prompts.fit_messages): what is cut is recorded per prediction.
    max_passage_tokens: int | None = Field(
        512,
        ge=1,
        description="tokens of each passage's text shown in a prompt (the start is kept, the cut marked '…'); "
        "512 leaves DPR's 100-word passages (~130-150 tokens) and dataset paragraphs whole and stops one huge "
        "document from filling the context; None: no per-passage limit",
    )
    max_prompt_tokens: int | None = Field(
        None,
        ge=1,
        description="tokens of the whole rendered prompt; None: the model's context length (config "
        "max_position_embeddings, else the tokenizer's model_max_length) minus the new tokens",
    )
