"""Generation methods registered by name (see ``semoe.generation.base.Method``)."""

from semoe.registry import Registry

METHODS: Registry = Registry("method", "semoe.generation.methods")
