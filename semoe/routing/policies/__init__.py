"""Routing policies, one file per family of policies, each registered in ``semoe.routing.POLICIES``."""
