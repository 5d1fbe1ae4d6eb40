"""semoe: batch evaluation pipeline for Sparse and Extendable Mixture-of-Experts research."""

__version__ = "0.1.0"
