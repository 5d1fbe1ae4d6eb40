"""The one typed configuration: YAML files, CLI ``--set`` overrides and Prefect flow
parameters all resolve to a :class:`SemoeConfig`.

A leaf package: it imports pydantic (and yaml to read files), nothing of semoe, so every
other module may depend on it. Sections are frozen and forbid unknown fields; each
component is handed its own section. Whether a registered name exists, and whether a
method's or a routing policy's params fit its ``Params`` model, is checked where the
registries live (``semoe.checks``). ``Section.identity()`` is what decides results;
``semoe.identity`` hashes the part each job reads.
"""

from semoe.config.base import ConfigError, Section, deep_merge, format_validation_error, validate_params
from semoe.config.data import CorpusConfig, DatasetConfig, SyntheticConfig
from semoe.config.experts import AugmentConfig, ExpertConfig, TranslatorConfig
from semoe.config.generation import GenerationConfig, ModelConfig
from semoe.config.io import (
    apply_overrides,
    config_from_dict,
    config_yaml,
    load_config,
    load_section,
    read_yaml_mapping,
    validate_section,
)
from semoe.config.methods import MethodSpec
from semoe.config.moe_lm import MoeLMConfig
from semoe.config.retrieval import RetrievalConfig
from semoe.config.root import SemoeConfig
from semoe.config.routing import DecodeSpeedConfig, PolicySpec, QAConfig, RoutingEvalConfig, RoutingModelConfig
from semoe.config.runtime import WORKER_ENV, CacheConfig, GpuConfig, ReportConfig, RunnerConfig, StoreConfig
from semoe.config.trigger import QueryFormulation, TriggerConfig

__all__ = [
    "AugmentConfig",
    "CacheConfig",
    "ConfigError",
    "CorpusConfig",
    "DatasetConfig",
    "DecodeSpeedConfig",
    "ExpertConfig",
    "GenerationConfig",
    "GpuConfig",
    "MethodSpec",
    "ModelConfig",
    "MoeLMConfig",
    "PolicySpec",
    "QAConfig",
    "QueryFormulation",
    "ReportConfig",
    "RetrievalConfig",
    "RoutingEvalConfig",
    "RoutingModelConfig",
    "RunnerConfig",
    "Section",
    "SemoeConfig",
    "StoreConfig",
    "SyntheticConfig",
    "TranslatorConfig",
    "TriggerConfig",
    "WORKER_ENV",
    "apply_overrides",
    "config_from_dict",
    "config_yaml",
    "deep_merge",
    "format_validation_error",
    "load_config",
    "load_section",
    "read_yaml_mapping",
    "validate_params",
    "validate_section",
]
