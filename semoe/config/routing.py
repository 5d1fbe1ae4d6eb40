"""``RoutingEvalConfig``: the ``routing:`` section of :class:`semoe.config.SemoeConfig` —
which models, which routing policies, which texts.

Texts come from the config's ``corpus`` section (read by the registered corpus readers): a
fixed, spread-out subset of its passages is held out for perplexity, the small MoE LM trains
on the rest, and BH's empirical nulls are fitted on the first training passages. QA scores
one of the config's ``datasets`` through the pipeline's own generation path. Policy names
and params are checked against the registered policies by ``semoe.checks``; what a policy's
params mean (its setting in words, a fixed k, calibration) is the policy class's business.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from semoe.config.base import Section
from semoe.config.methods import MethodSpec
from semoe.config.moe_lm import MoeLMConfig


class PolicySpec(Section):
    name: str = Field(..., description="registered routing policy: topk, bh, roe, top-p, entropy-k")
    params: dict[str, Any] = Field(default_factory=dict, description="the policy's params (see its Params model)")
    label: str | None = Field(None, description="name shown in results; defaults to `name`")

    @property
    def display_name(self) -> str:
        return self.label or self.name

    @property
    def key(self) -> str:
        """The policy's identity in the store: its name and a hash of its params as configured."""
        digest = hashlib.sha256(json.dumps(self.params, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{self.name}-{digest}"


class RoutingModelConfig(Section):
    """A model to route: an HF MoE model (``spec``) or semoe's small MoE LM trained from ``moe_lm``."""

    spec: str | None = Field(None, description="embedded alias, local directory or HF hub id of an MoE model")
    moe_lm: MoeLMConfig | None = Field(None, description="train (or load the cached) small MoE LM with these settings")
    label: str | None = Field(None, description="name stored in results; defaults to the spec or moe-lm-<router>")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data):
        return {"spec": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_source(self):
        if (self.spec is None) == (self.moe_lm is None):
            raise ValueError("give exactly one of `spec` (an HF MoE model) or `moe_lm` (the small MoE LM's settings)")
        return self

    @property
    def display_name(self) -> str:
        if self.label:
            return self.label
        return self.spec if self.spec is not None else f"moe-lm-{self.moe_lm.router_type}"


class DecodeSpeedConfig(Section):
    enabled: bool = True
    prompt_tokens: int = Field(64, ge=1, description="prompt length taken from the first eval text")
    max_new_tokens: int = Field(32, ge=1, le=4096)


class QAConfig(Section):
    dataset: str = Field(..., description="display name of one of the config's `datasets`")
    limit: int | None = Field(None, ge=1, description="score the first N questions; None = all")
    method: MethodSpec = Field(
        default_factory=lambda: MethodSpec(name="no-retrieval"),
        description="the generation method that answers (e.g. reflection with its params); a retrieving method "
        "gets each question's own contexts (`ctxs`/`top_contexts`), no index",
    )


class RoutingEvalConfig(Section):
    operational = ("guard", "heatmaps")
    models: list[RoutingModelConfig] = Field(..., description="HF MoE model specs and/or small MoE LM configs")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    policies: list[PolicySpec] = Field(default_factory=lambda: [PolicySpec(name="topk")])
    mode: Literal["patch", "analyze"] = Field(
        "patch", description="patch: the policy routes; analyze: the model routes, the policy's choices are recorded"
    )
    baseline: bool = Field(True, description="also record the model's own routing (topk, analyze mode)")
    eval_texts: int = Field(64, ge=1, description="corpus passages held out for perplexity (spread over the corpus)")
    calibration_texts: int = Field(32, ge=0, description="training passages that fit BH's empirical nulls")
    max_tokens: int = Field(512, ge=2, le=32768, description="tokens per eval text (truncated)")
    decode: DecodeSpeedConfig = DecodeSpeedConfig()
    qa: QAConfig | None = Field(None, description="QA EM/F1 on one dataset (HF chat models; not the byte-level LM)")
    guard: bool = Field(True, description="fail when an override leaves routing unchanged (RoutingNoOpError)")
    heatmaps: bool = Field(True, description="write an expert-activation PNG per model × policy next to the store")

    @field_validator("models", "policies")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("must list at least one entry")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        names = [m.display_name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique (set `label`): {names}")
        keys = [p.key for p in self.policies]
        if len(set(keys)) != len(keys):
            twice = sorted({p.display_name for p in self.policies if keys.count(p.key) > 1})
            raise ValueError(f"policies {twice} are listed twice with the same params")
        return self
