"""What every config section shares: frozen, no unknown fields, one error type and one
formatter for validation errors."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """The configuration file, an override or a setting is invalid."""


class Section(BaseModel):
    """A config section: unknown fields are errors, and a validated section never changes
    (so memos and caches can key on it); derive a changed one with ``model_copy(update=...)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Fields that change how a result is computed or where it goes, not what it is.
    operational: ClassVar[tuple[str, ...]] = ()

    def identity(self) -> dict:
        """The settings that decide results: the section less its ``operational`` fields,
        nested sections by their own identity (JSON values)."""
        return {
            name: _identity(getattr(self, name)) for name in type(self).model_fields if name not in self.operational
        }


def _identity(value: Any) -> Any:
    if isinstance(value, Section):
        return value.identity()
    if isinstance(value, (list, tuple)):
        return [_identity(v) for v in value]
    if isinstance(value, dict):
        return {k: _identity(v) for k, v in value.items()}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def format_validation_error(source: str, err: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming its field path: ``invalid config SOURCE:`` then
    ``  a.b.c: message``."""
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` updated with ``override``, nested mappings merged key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def validate_params(model: type[BaseModel], params: dict[str, Any], where: str) -> BaseModel:
    """``model`` validated from ``params``; a ``ConfigError`` naming ``where`` and each field."""
    try:
        return model.model_validate(params)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'params'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{where}: {problems}") from None
