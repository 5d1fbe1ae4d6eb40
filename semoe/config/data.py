"""Where questions and passages come from: the synthetic encyclopedia, datasets, the corpus."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeFloat, PositiveInt, model_validator

from semoe.config.base import Section


class SyntheticConfig(Section):
    """Deterministic fictional encyclopedia (see semoe.data.encyclopedia)."""

    seed: int = 0
    n_entities: int = Field(400, ge=8, description="entities per kind (people, places, organisations, works)")
    n_questions: int = Field(50, ge=1)
    extra_passages_per_entity: int = Field(0, ge=0, description="filler passages per entity (distractors)")
    question_mix: dict[Literal["single-hop", "bridge", "comparison"], NonNegativeFloat] = Field(
        default_factory=lambda: {"single-hop": 0.5, "bridge": 0.3, "comparison": 0.2},
        description="relative weight of each question type; types left out get no questions",
    )


class DatasetConfig(Section):
    operational = ("path", "hf_id")  # where the file is; its content is hashed where it is read

    name: str = Field(..., description="registered dataset name, see `semoe ls`")
    label: str | None = Field(None, description="name stored in results; defaults to `name`")
    path: str | None = Field(None, description="local file in the dataset's native format")
    hf_id: str | None = Field(None, description="HF hub dataset id (online users)")
    split: str = "validation"
    sample: int | None = Field(None, description="keep the first N examples (after shuffle); None or -1 = all")
    sample_per_type: dict[str, PositiveInt] | None = Field(
        None,
        description="keep the first N examples of each listed question type (after shuffle), e.g. "
        "{bridge: 100, comparison: 100}; other types are left out; not with `sample`",
    )
    shuffle: bool = False
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)
    prompt: str | None = Field(
        None,
        description="registered prompt template (see `semoe ls`); None: the template registered under the "
        "dataset's name, else `generic`",
    )
    passages: Literal["auto", "corpus", "provided"] = Field(
        "auto",
        description="where retrieving methods find this dataset's passages: `provided` (each question's own "
        "contexts, e.g. Open-RAG's `ctxs`; no index), `corpus` (the indexed corpus), `auto` (provided when the "
        "questions carry contexts, else the corpus)",
    )

    @model_validator(mode="after")
    def _one_sampling(self) -> "DatasetConfig":
        if self.sample_per_type is not None:
            if self.sample not in (None, -1):
                raise ValueError("give `sample` or `sample_per_type`, not both")
            if not self.sample_per_type:
                raise ValueError("sample_per_type must list at least one type")
        return self

    @property
    def display_name(self) -> str:
        return self.label or self.name

    def identity(self) -> dict:
        d = super().identity()
        if d.get("sample_per_type") is None:  # datasets sampled as before keep their hash
            d.pop("sample_per_type", None)
        if d["passages"] == "auto":  # configs written before the setting keep their hash
            d.pop("passages")
        return d


class CorpusConfig(Section):
    format: str = Field(
        "synthetic",
        description="registered corpus format: synthetic, dpr-tsv, jsonl, json-passages, dataset-contexts",
    )
    path: str | None = None
    dataset: str | None = Field(
        None,
        description="dataset-contexts only: the dataset format whose paragraphs make the corpus "
        "(ircot, iirc, flashrag, hotpotqa, 2wikimultihopqa, popqa; default: HotpotQA/2Wiki/PopQA layouts)",
    )
    limit: int | None = Field(None, ge=1, description="index only the first N passages")
    options: dict[str, Any] = Field(default_factory=dict)
