"""Prefect deployments from the config files, so a deployment never drifts from ``configs/``.

``deployments/prefect.yaml`` names, under ``definitions.config_files``, one YAML anchor per
config file; :func:`render` rewrites the marked block below it with each file's mapping
(deployments use ``parameters: *anchor``) and :func:`check` reports any drift. Parameters are
the file's own mapping, so a deployment run resolves exactly like ``semoe run FILE``.
:func:`served_deployment` is what ``semoe serve`` runs on a single machine.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import yaml

from semoe.config import ConfigError, SemoeConfig, load_config, read_yaml_mapping

PROJECT_FILE = Path("deployments/prefect.yaml")
BEGIN = "# BEGIN rendered by `semoe deployments render` from definitions.config_files: do not edit"
END = "# END rendered"
_BLOCK = re.compile(rf"^(?P<indent>[ ]*){re.escape(BEGIN)}\n.*?^[ ]*{re.escape(END)}\n", re.M | re.S)

# Flows a deployment (or `semoe serve`) may run; each takes `config: SemoeConfig`.
FLOWS = {
    "pipeline": "semoe.flows.pipeline:pipeline",
    "index_corpus": "semoe.flows.pipeline:index_corpus",
    "build_experts": "semoe.flows.pipeline:build_experts",
    "evaluate_routing": "semoe.flows.routing:evaluate_routing",
}


def _parse(text: str, path: Path) -> dict:
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"deployments file {path} is not valid YAML: {e}") from None


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"deployments file not found: {path}")
    return path.read_text()


def rendered_parameters(project: dict, root: Path) -> dict[str, dict[str, Any]]:
    """anchor -> deployment parameters ``{"config": <mapping of the config file>}``."""
    files = (project.get("definitions") or {}).get("config_files")
    if not isinstance(files, dict) or not files:
        raise ConfigError("deployments file: definitions.config_files must map anchor names to config files")
    params = {}
    for anchor, file in files.items():
        load_config(root / file)  # the file must be a valid config, not just YAML
        params[anchor] = {"config": read_yaml_mapping(root / file)[0]}
    return params


def _block(params: dict[str, dict], indent: str) -> str:
    lines = [indent + BEGIN]
    for anchor, value in params.items():
        lines.append(f"{indent}{anchor}: &{anchor}")
        body = yaml.safe_dump(value, sort_keys=False, default_flow_style=False, width=1000)
        lines += [f"{indent}  {line}" for line in body.splitlines()]
    lines.append(indent + END)
    return "\n".join(lines) + "\n"


def render(path: Path = PROJECT_FILE, root: Path = Path(".")) -> str:
    """The project file's text with its parameter block rendered from the config files
    (``definitions.config_files`` is read from the text above the block, which parses
    even while the anchors the deployments use are not rendered yet)."""
    text = _read_text(path)
    match = _BLOCK.search(text)
    if match is None:
        raise ConfigError(f"deployments file {path} has no block between {BEGIN!r} and {END!r}")
    block = _block(rendered_parameters(_parse(text[: match.start()], path), root), match["indent"])
    return text[: match.start()] + block + text[match.end() :]


def check(path: Path = PROJECT_FILE, root: Path = Path(".")) -> list[str]:
    """Problems that make the deployments differ from the config files ([] when in sync)."""
    rendered = render(path, root)
    problems = []
    if rendered != _read_text(path):
        problems.append(f"{path}: parameters differ from the config files; run `semoe deployments render`")
    project = _parse(rendered, path)
    expected = list(rendered_parameters(project, root).values())
    for dep in project.get("deployments") or []:
        if dep.get("parameters") not in expected:
            problems.append(
                f"deployment {dep.get('name')!r}: parameters must be one of the rendered anchors (parameters: *name)"
            )
    return problems


def load_flow(name: str):
    """The Prefect flow registered under ``name`` in :data:`FLOWS`."""
    if name not in FLOWS:
        raise ConfigError(f"unknown flow {name!r}; known: {', '.join(FLOWS)}")
    module, _, attr = FLOWS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def served_deployment(config: SemoeConfig, flow: str = "pipeline", cron: str | None = None, name: str | None = None):
    """The RunnerDeployment ``semoe serve`` serves: the resolved config as its parameters."""
    return load_flow(flow).to_deployment(
        name=name or f"{config.name}-serve",
        parameters={"config": config.model_dump(mode="json")},
        cron=cron,
        description=f"semoe serve: {flow} with config {config.name!r} (hash {config.config_hash()})",
    )
