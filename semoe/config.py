"""The one typed configuration: YAML files, CLI ``--set`` overrides and Prefect flow
parameters all resolve to a :class:`SemoeConfig`.

``identity()`` is the part of the config that decides results (operational settings such
as where the store lives are excluded); its hash, with the code version, is the run id.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, ValidationError, field_validator, model_validator

# Sections owned by feature packages live beside the code they configure.
from semoe.concurrency import GpuConfig
from semoe.experts.augment_config import AugmentConfig
from semoe.experts.expert_config import ExpertConfig
from semoe.generation.trigger_config import TriggerConfig
from semoe.routing.config import RoutingEvalConfig


class ConfigError(ValueError):
    """The configuration file or an override is invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticConfig(_Section):
    """Deterministic fictional encyclopedia (see semoe.data.synthetic)."""

    seed: int = 0
    n_entities: int = Field(400, ge=8, description="entities per kind (people, places, organisations, works)")
    n_questions: int = Field(50, ge=1)
    extra_passages_per_entity: int = Field(0, ge=0, description="filler passages per entity (distractors)")
    question_mix: dict[Literal["single-hop", "bridge", "comparison"], NonNegativeFloat] = Field(
        default_factory=lambda: {"single-hop": 0.5, "bridge": 0.3, "comparison": 0.2},
        description="relative weight of each question type; types left out get no questions",
    )


class DatasetConfig(_Section):
    name: str = Field(..., description="registered dataset name, see `semoe ls`")
    label: str | None = Field(None, description="name stored in results; defaults to `name`")
    path: str | None = Field(None, description="local file in the dataset's native format")
    hf_id: str | None = Field(None, description="HF hub dataset id (online users)")
    split: str = "validation"
    sample: int | None = Field(None, description="keep the first N examples (after shuffle); None or -1 = all")
    shuffle: bool = False
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def display_name(self) -> str:
        return self.label or self.name


class CorpusConfig(_Section):
    format: str = Field("synthetic", description="registered corpus format: synthetic, dpr-tsv, jsonl, dataset-contexts")
    path: str | None = None
    limit: int | None = Field(None, ge=1, description="index only the first N passages")
    options: dict[str, Any] = Field(default_factory=dict)


class RetrievalConfig(_Section):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # es_url may carry a password

    backend: str = Field("tantivy", description="registered retriever: tantivy (embedded) or elasticsearch")
    top_k: int = Field(3, ge=1, le=100)
    es_url: str | None = Field(None, description="Elasticsearch URL; falls back to env SEMOE_ES_URL")
    es_index: str | None = Field(None, description="index name; default derived from the corpus key")
    es_secret_block: str | None = Field(
        None, description="Prefect Secret block with the Elasticsearch API key (or {username, password}); env wins"
    )
    bulk_batch_size: int = Field(2000, ge=1)
    writer_heap_mb: int = Field(256, ge=16)
    search_threads: int | None = Field(
        None, ge=1, description="threads searching one batch of queries (tantivy, bm25s); None: all CPU cores"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="the backend's own settings, e.g. the analyzer (see its Params model)"
    )

    @field_validator("es_url")
    @classmethod
    def _no_credentials_in_url(cls, v: str | None) -> str | None:
        from urllib.parse import urlsplit

        if v and (urlsplit(v).username is not None or urlsplit(v).password is not None):
            raise ValueError(
                "must not contain credentials (configs are stored with results); use SEMOE_ES_API_KEY, "
                "SEMOE_ES_USER + SEMOE_ES_PASSWORD, or retrieval.es_secret_block"
            )
        return v

    @model_validator(mode="after")
    def _known_options(self):
        """``options`` must fit the backend's Params model (checked here, so a typo fails at
        load; empty options are every backend's defaults and need no backend import)."""
        if not self.options:
            return self
        from semoe.registry import UnknownNameError
        from semoe.retrieval import RETRIEVERS

        try:
            RETRIEVERS.get(self.backend).Params(**self.options)
        except UnknownNameError as e:
            raise ValueError(str(e)) from None
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'options'}: {err['msg']}" for err in e.errors())
            raise ValueError(f"options of retrieval backend {self.backend!r}: {problems}") from None
        return self


class ModelConfig(_Section):
    spec: str = Field("smollm2-135m-instruct", description="embedded alias, local directory, or HF hub id")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")


class GenerationConfig(_Section):
    max_new_tokens: int = Field(32, ge=1, le=4096)
    batch_size: int = Field(8, ge=1)
    few_shot: int = Field(2, ge=0, le=8, description="number of worked examples in the prompt")
    chain_of_thought: bool = False
    system_prompt: str | None = None
    # Token budget (semoe.generation.prompts.fit_messages): what is cut is recorded per prediction.
    max_passage_tokens: int | None = Field(
        512, ge=1,
        description="tokens of each passage's text shown in a prompt (the start is kept, the cut marked '…'); "
        "512 leaves DPR's 100-word passages (~130-150 tokens) and dataset paragraphs whole and stops one huge "
        "document from filling the context; None: no per-passage limit",
    )
    max_prompt_tokens: int | None = Field(
        None, ge=1,
        description="tokens of the whole rendered prompt; None: the model's context length (config "
        "max_position_embeddings, else the tokenizer's model_max_length) minus the new tokens",
    )


class StoreConfig(_Section):
    path: str = "results/semoe.duckdb"
    write_every: int = Field(16, ge=1, description="examples per committed write batch (resume granularity)")


class CacheConfig(_Section):
    root: str = Field("~/.cache/semoe", description="artifact cache: indexes, converted models, ...")


class RunnerConfig(_Section):
    """Where expert training and evaluation shards run. ``default``: tasks one after another
    in the flow process. ``dask``: a Dask cluster (``address``, or a local one of
    ``n_workers`` processes); workers write Parquet shards that the flow process ingests,
    since DuckDB admits one writing process."""

    kind: Literal["default", "dask"] = "default"
    address: str | None = Field(None, description="scheduler of a running Dask cluster, e.g. tcp://host:8786")
    n_workers: int = Field(2, ge=1, description="worker processes of the local cluster (when no address)")
    threads_per_worker: int = Field(1, ge=1)


OPERATIONAL_SECTIONS = ("store", "cache", "name", "runner", "gpu")



class SemoeConfig(_Section):
    name: str = "semoe"
    synthetic: SyntheticConfig = SyntheticConfig()
    corpus: CorpusConfig = CorpusConfig()
    datasets: list[DatasetConfig] = Field(default_factory=lambda: [DatasetConfig(name="synthetic")])
    retrieval: RetrievalConfig = RetrievalConfig()
    model: ModelConfig = ModelConfig()
    generation: GenerationConfig = GenerationConfig()
    methods: list[str] = Field(default_factory=lambda: ["no-retrieval", "single-retrieval"])
    trigger: TriggerConfig = TriggerConfig()
    augment: AugmentConfig = AugmentConfig()
    experts: ExpertConfig = ExpertConfig()
    store: StoreConfig = StoreConfig()
    cache: CacheConfig = CacheConfig()
    runner: RunnerConfig = RunnerConfig()
    gpu: GpuConfig = GpuConfig()
    routing: RoutingEvalConfig | None = Field(None, description="routing-policy evaluations (`semoe route`)")

    @field_validator("methods", "datasets")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("must list at least one entry")
        return v

    def identity(self) -> dict:
        """The settings that determine results (excludes where things are stored)."""
        d = self.model_dump(mode="json")
        for key in OPERATIONAL_SECTIONS:
            d.pop(key, None)
        d["retrieval"].pop("es_secret_block")  # where credentials come from, not what is retrieved
        if d.get("routing") is None:  # configs without routing keep their hash
            d.pop("routing", None)
        return d

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def check_names(self) -> None:
        """Fail early, naming the problem, when a registered name is unknown."""
        from semoe.data import CORPORA, DATASETS
        from semoe.generation import METHODS
        from semoe.retrieval import RETRIEVERS

        RETRIEVERS.get(self.retrieval.backend)
        CORPORA.get(self.corpus.format)
        for d in self.datasets:
            DATASETS.get(d.name)
        for m in self.methods:
            METHODS.get(m)
        qa = self.routing.qa if self.routing else None
        if qa and qa.dataset not in {d.display_name for d in self.datasets}:
            raise ConfigError(
                f"routing.qa.dataset {qa.dataset!r} is not one of the configured datasets "
                f"{[d.display_name for d in self.datasets]}"
            )


def _parse_value(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML; list items by index)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                except (ValueError, IndexError):
                    raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a valid list index") from None
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
        last = parts[-1]
        if isinstance(node, list):
            try:
                node[int(last)] = _parse_value(raw)
            except (ValueError, IndexError):
                raise ConfigError(f"override {item!r}: {last} is not a valid list index") from None
        else:
            node[last] = _parse_value(raw)
    return data


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def config_from_dict(data: dict, source: str = "<dict>") -> SemoeConfig:
    try:
        return SemoeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(source, e)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SemoeConfig:
    """Load a YAML config (or defaults when ``path`` is None) and apply overrides."""
    data, source = read_yaml_mapping(path)
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, source)


def read_yaml_mapping(path: str | Path | None) -> tuple[dict, str]:
    """(mapping, source name) of a YAML config file; ({}, "<defaults>") without a path."""
    import yaml

    if path is None:
        return {}, "<defaults>"
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not valid UTF-8 (bad byte at offset {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data, str(p)


def config_yaml(cfg: SemoeConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
