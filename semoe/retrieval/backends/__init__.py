"""Retrieval backends; each module registers itself in semoe.retrieval.RETRIEVERS."""
