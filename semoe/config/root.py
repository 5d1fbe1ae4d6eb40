"""The root of the configuration: one section per component."""

from __future__ import annotations

import hashlib
import json

from pydantic import Field, field_validator

from semoe.config.base import ConfigError, Section
from semoe.config.data import CorpusConfig, DatasetConfig, SyntheticConfig
from semoe.config.experts import AugmentConfig, ExpertConfig
from semoe.config.generation import GenerationConfig, ModelConfig
from semoe.config.methods import MethodSpec
from semoe.config.retrieval import RetrievalConfig
from semoe.config.routing import RoutingEvalConfig
from semoe.config.runtime import CacheConfig, GpuConfig, ReportConfig, RunnerConfig, StoreConfig
from semoe.config.trigger import TriggerConfig


class SemoeConfig(Section):
    """The whole configuration; each component is handed only its own section."""

    operational = ("name", "store", "cache", "runner", "gpu", "report")

    name: str = "semoe"
    synthetic: SyntheticConfig = SyntheticConfig()
    corpus: CorpusConfig = CorpusConfig()
    datasets: list[DatasetConfig] = Field(default_factory=lambda: [DatasetConfig(name="synthetic")])
    retrieval: RetrievalConfig = RetrievalConfig()
    model: ModelConfig = ModelConfig()
    generation: GenerationConfig = GenerationConfig()
    methods: list[MethodSpec] = Field(
        default_factory=lambda: [MethodSpec(name="no-retrieval"), MethodSpec(name="single-retrieval")],
        description="generation methods: names, or {name, params, label} to run one method with several settings",
    )
    trigger: TriggerConfig = TriggerConfig()
    augment: AugmentConfig = AugmentConfig()
    experts: ExpertConfig = ExpertConfig()
    store: StoreConfig = StoreConfig()
    cache: CacheConfig = CacheConfig()
    runner: RunnerConfig = RunnerConfig()
    gpu: GpuConfig = GpuConfig()
    report: ReportConfig = ReportConfig()
    routing: RoutingEvalConfig | None = Field(None, description="routing-policy evaluations (`semoe route`)")

    @field_validator("methods", "datasets")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("must list at least one entry")
        return v

    @field_validator("methods")
    @classmethod
    def _unique_labels(cls, v: list[MethodSpec]):
        labels = [m.display_name for m in v]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"methods {twice} are listed twice: give each a distinct `label`")
        return v

    def method(self, label: str) -> MethodSpec:
        """The method listed under ``label`` (its display name)."""
        for m in self.methods:
            if m.display_name == label:
                return m
        raise ConfigError(f"no method labelled {label!r}; configured: {[m.display_name for m in self.methods]}")

    def dataset(self, label: str) -> DatasetConfig:
        """The dataset listed under ``label`` (its display name)."""
        for d in self.datasets:
            if d.display_name == label:
                return d
        raise ConfigError(f"no dataset labelled {label!r}; configured: {[d.display_name for d in self.datasets]}")

    def identity(self) -> dict:
        """The settings that decide results (where things are stored and run is left out)."""
        d = super().identity()
        if d.get("routing") is None:  # configs without routing keep their hash
            d.pop("routing", None)
        return d

    def config_hash(self) -> str:
        """Hash of the whole ``identity()`` (each job hashes only its own part: ``semoe.identity``)."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]
