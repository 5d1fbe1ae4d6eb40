"""Generation methods; each module registers itself in semoe.generation.METHODS."""
