"""Name → implementation registries.

Each registry owns one package; on first lookup every module of that package is
imported, so adding a method/dataset/retriever is adding a file with a
``@REGISTRY.register("name")`` decorator — no central if/else chain.
Modules registered this way must keep heavy imports (torch, transformers) inside
functions so listing names stays instant.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, TypeVar

from semoe.config import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError, KeyError):
    """A config named a method/dataset/retriever that is not registered (a config error)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return self.args[0]


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}
        self._loaded = package is None

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            doc = description or (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._descriptions[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return obj

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{self.package}.{info.name}")

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._items)) or 'none'}"
            ) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def describe(self) -> dict[str, str]:
        self._load()
        return {n: self._descriptions.get(n, "") for n in sorted(self._items)}

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items
