"""Checks of a config against what is registered: every name (datasets and their prompt
templates, corpus format, retriever, methods, routing policies) exists, every method's and
policy's params fit its ``Params`` model, and the sections agree with each other. The config package itself knows
no registry (it is a leaf); this module is where the two meet, run once before a job starts
(``semoe run``/``route``/``validate``, and each flow for deployment runs)."""

from __future__ import annotations

import logging

from semoe.config import ConfigError, PolicySpec, SemoeConfig, validate_params
from semoe.data import CORPORA, DATASETS, PARAGRAPHS
from semoe.generation.base import build_method
from semoe.generation.templates import TEMPLATES, template_for
from semoe.models.loading import dummy_seed
from semoe.retrieval import RETRIEVERS
from semoe.routing.registry import POLICIES

log = logging.getLogger(__name__)


def check_config(cfg: SemoeConfig) -> None:
    """Raise ``UnknownNameError`` for an unregistered name, ``ConfigError`` naming the field
    for params or sections that do not fit."""
    backend = RETRIEVERS.get(cfg.retrieval.backend)
    validate_params(backend.Params, cfg.retrieval.options, f"retrieval.options of backend {cfg.retrieval.backend!r}")
    CORPORA.get(cfg.corpus.format)
    check_corpus_dataset(cfg)
    for i, dataset in enumerate(cfg.datasets):
        DATASETS.get(dataset.name)
        if dataset.prompt is not None and dataset.prompt not in TEMPLATES:
            raise ConfigError(
                f"datasets.{i}.prompt: unknown prompt template {dataset.prompt!r} (dataset {dataset.display_name!r}); "
                f"registered: {', '.join(TEMPLATES.names())}"
            )
        shots = len(template_for(dataset).exemplars)
        if cfg.generation.few_shot > shots:  # said, not silently capped: the prompt shows fewer
            log.warning(
                "datasets.%d (%s): generation.few_shot is %d but its prompt template %r has %d exemplars; "
                "the prompts show %d",
                i,
                dataset.display_name,
                cfg.generation.few_shot,
                template_for(dataset).name,
                shots,
                shots,
            )
    for spec in cfg.methods:
        if build_method(spec, cfg).needs_weights and dummy_seed(cfg.model.spec) is not None:
            raise ConfigError(
                f"methods: {spec.display_name!r} ({spec.name}) needs a real LM (model internals); "
                f"model.spec {cfg.model.spec!r} is the weightless dummy model"
            )
    if cfg.routing is not None:
        check_routing(cfg)


def check_corpus_dataset(cfg: SemoeConfig) -> None:
    """``corpus.dataset`` names a dataset format with paragraphs, and only the corpus format
    that reads it (``dataset-contexts``) may be given one: a setting no reader uses is an error,
    not a silent no-op."""
    name = cfg.corpus.dataset
    if name is None:
        return
    if cfg.corpus.format != "dataset-contexts":
        raise ConfigError(
            f"corpus.dataset {name!r} is read by corpus.format 'dataset-contexts' only, "
            f"not {cfg.corpus.format!r}: remove it or change the format"
        )
    PARAGRAPHS.get(name)


def check_routing(cfg: SemoeConfig) -> None:
    routing = cfg.routing
    for spec in routing.policies:
        policy = make_checked_policy(spec)
        if policy.needs_calibration() and routing.calibration_texts == 0:
            raise ConfigError(
                f"routing.policies: {spec.display_name!r} uses calibrated p-values: set routing.calibration_texts > 0"
            )
    qa = routing.qa
    if qa and qa.dataset not in {d.display_name for d in cfg.datasets}:
        raise ConfigError(
            f"routing.qa.dataset {qa.dataset!r} is not one of the configured datasets "
            f"{[d.display_name for d in cfg.datasets]}"
        )
    if qa:
        build_method(qa.method, cfg)  # a ConfigError naming the method and each bad param


def make_checked_policy(spec: PolicySpec):
    """The routing policy of ``spec``, its params validated (``ConfigError`` naming them)."""

    cls = POLICIES.get(spec.name)
    params = validate_params(cls.Params, spec.params, f"routing.policies: {spec.display_name!r} ({spec.name}) params")
    return cls(**params.model_dump(exclude_unset=True))
