"""A generation method as configured: ``{name, params, label}``. A bare name is shorthand for
``{name: NAME}``. The method class validates its params (``semoe.generation.base.Method.Params``),
drawing defaults from the config's shared sections (``trigger:``, ``augment:``, ``experts:``),
so one config can sweep a DRAGIN threshold or a LoRA rank side by side, each a labelled row."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from semoe.config.base import Section


class MethodSpec(Section):
    name: str = Field(..., description="registered generation method, see `semoe ls`")
    params: dict[str, Any] = Field(
        default_factory=dict, description="the method's own settings over the shared sections (see its Params model)"
    )
    label: str | None = Field(None, description="name stored in results (the `method` column); defaults to `name`")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @property
    def display_name(self) -> str:
        return self.label or self.name
