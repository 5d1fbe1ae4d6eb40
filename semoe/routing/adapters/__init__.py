"""Router adapters, one file per model family, each registered in ``semoe.routing.ADAPTERS``."""
