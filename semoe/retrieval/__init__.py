"""Retrievers (BM25 backends) registered by name; see ``base.Retriever`` for the interface."""

from semoe.registry import Registry

RETRIEVERS: Registry = Registry("retriever", "semoe.retrieval.backends")
