"""``RoutingEvalConfig``: which models, which routing policies, on which texts.

Texts and calibration texts are corpus sections (``semoe.config.CorpusConfig``), read with
the registered corpus readers, so any passage source the pipeline knows can be scored.
Policy names and params are validated against the policy registry when the config loads.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from semoe.config import CorpusConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicySpec(_Section):
    name: str = Field(..., description="registered routing policy: topk, bh, roe, top-p, entropy-k")
    params: dict[str, Any] = Field(default_factory=dict, description="the policy's params (see its Params model)")
    label: str | None = Field(None, description="name shown in results; defaults to `name`")

    @model_validator(mode="after")
    def _known(self):
        from semoe.registry import UnknownNameError
        from semoe.routing import POLICIES

        try:
            POLICIES.get(self.name).Params(**self.params)
        except UnknownNameError as e:
            raise ValueError(str(e)) from None
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'params'}: {err['msg']}" for err in e.errors())
            raise ValueError(f"policy {self.name!r}: {problems}") from None
        return self

    @property
    def display_name(self) -> str:
        return self.label or self.name

    def needs_calibration(self) -> bool:
        return self.name == "bh" and self.params.get("p_values") == "calibrated" and not self.params.get("null")


class DecodeSpeedConfig(_Section):
    enabled: bool = True
    prompt_tokens: int = Field(64, ge=1, description="prompt length taken from the first eval text")
    max_new_tokens: int = Field(32, ge=1, le=4096)


class RoutingEvalConfig(_Section):
    models: list[str] = Field(..., description="model specs: embedded alias, local directory or HF hub id (MoE models)")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    policies: list[PolicySpec] = Field(default_factory=lambda: [PolicySpec(name="topk")])
    mode: Literal["patch", "analyze"] = Field(
        "patch", description="patch: the policy routes; analyze: the model routes, the policy's choices are recorded"
    )
    baseline: bool = Field(True, description="also record the model's own routing (topk, analyze mode)")
    texts: CorpusConfig = Field(default_factory=lambda: CorpusConfig(limit=64), description="eval texts (a corpus)")
    calibration: CorpusConfig | None = Field(
        None, description="texts to fit BH's empirical nulls (needed by p_values=calibrated without a saved null)"
    )
    max_tokens: int = Field(512, ge=2, le=32768, description="tokens per eval text (truncated)")
    decode: DecodeSpeedConfig = DecodeSpeedConfig()
    guard: bool = Field(True, description="fail when an override leaves routing unchanged (RoutingNoOpError)")
    heatmaps: bool = Field(True, description="write an expert-activation PNG per model × policy")

    @field_validator("models", "policies")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("must list at least one entry")
        return v

    @model_validator(mode="after")
    def _calibration_available(self):
        missing = [p.display_name for p in self.policies if p.needs_calibration()]
        if missing and self.calibration is None:
            raise ValueError(f"policies {missing} use calibrated p-values: set `calibration` (a corpus section)")
        return self
