"""Reading configs: YAML files, ``key.path=value`` overrides, validation with one error
message naming each bad field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from semoe.config.base import ConfigError, format_validation_error
from semoe.config.root import SemoeConfig

M = TypeVar("M", bound=BaseModel)


def _parse_value(raw: str) -> Any:
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
                    raise ConfigError(
                        f"override {item!r}: {'.'.join(parts[: i + 1])} is not a valid list index"
                    ) from None
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


def config_from_dict(data: dict, source: str = "<dict>") -> SemoeConfig:
    return validate_section(SemoeConfig, data, source)


def validate_section(model: type[M], data: dict, source: str = "<dict>") -> M:
    """``model`` from ``data``, or one ``ConfigError`` listing every bad field of ``source``."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SemoeConfig:
    """Load a YAML config (or defaults when ``path`` is None) and apply overrides."""
    return load_section(SemoeConfig, path, overrides)


def load_section(model: type[M], path: str | Path | None = None, overrides: list[str] | None = None) -> M:
    """A YAML mapping of ``model``'s fields (or its defaults without a path), then ``key=value`` overrides."""
    data, source = read_yaml_mapping(path)
    return validate_section(model, apply_overrides(data, overrides or []), source)


def read_yaml_mapping(path: str | Path | None) -> tuple[dict, str]:
    """(mapping, source name) of a YAML config file; ({}, "<defaults>") without a path."""

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
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
