"""Dataset and corpus readers; each module registers itself in semoe.data."""
