"""The routing registries: ``ADAPTERS`` (router module class → model-family adapter, one file
per family in ``semoe/routing/adapters/``) and ``POLICIES`` (name → routing policy class, one
file per policy in ``semoe/routing/policies/``)."""

from __future__ import annotations

from semoe.registry import Registry

ADAPTERS: Registry = Registry("routing adapter", "semoe.routing.adapters")
POLICIES: Registry = Registry("routing policy", "semoe.routing.policies")


def register_policy(name: str):
    """Register a policy class under ``name`` and record the name on the class."""

    def decorator(cls):
        cls.name = name
        return POLICIES.register(name)(cls)

    return decorator
