"""The configured methods and datasets, looked up by label, and what they need (retrieval,
passage experts)."""

from __future__ import annotations

from semoe.config import ConfigError, DatasetConfig, SemoeConfig
from semoe.generation import METHODS
from semoe.generation.base import Method, build_method


def methods(cfg: SemoeConfig) -> dict[str, Method]:
    """The configured methods by label, params resolved (a ``ConfigError`` for bad params)."""
    return {spec.display_name: build_method(spec, cfg) for spec in cfg.methods}


def method_uses_retrieval(cfg: SemoeConfig, label: str) -> bool:
    return METHODS.get(cfg.method(label).name).uses_retrieval


def needs_retrieval(cfg: SemoeConfig) -> bool:
    return any(METHODS.get(m.name).uses_retrieval for m in cfg.methods)


def needs_experts(cfg: SemoeConfig) -> bool:
    return any(METHODS.get(m.name).uses_experts for m in cfg.methods)


def dataset_config(cfg: SemoeConfig, label: str) -> DatasetConfig:
    """The dataset listed under ``label`` (its display name)."""
    for ds in cfg.datasets:
        if ds.display_name == label:
            return ds
    raise ConfigError(f"no dataset labelled {label!r}; configured: {[d.display_name for d in cfg.datasets]}")
