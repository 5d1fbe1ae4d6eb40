"""A small trainable MoE language model with recurrent routers (CPU-sized).

- :class:`semoe.config.MoeLMConfig` (architecture, routing, training)
- ``routers``: ``SemoeLinearRouter``, ``SemoeRecurrentRouter`` (OlmoeTopKRouter's interface)
- ``model``: ``MoeLM``, ``SemoeSparseMoeBlock``, ``MoeLMCache``, ``load_balancing_loss``
- ``training``: ``train``, ``load_or_train``, ``MOE_TRAINING_COLUMNS``
- ``inference``: ``generate``; ``cli``: ``cli_main``

Names are imported lazily so that importing the package (e.g. for the CLI) does not load torch.
"""

from __future__ import annotations

import importlib

from semoe.config import MoeLMConfig

_LAZY = {
    "ByteTokenizer": "tokenizer",
    "SemoeLinearRouter": "routers",
    "SemoeRecurrentRouter": "routers",
    "RouterCarry": "routers",
    "MoeLM": "model",
    "MoeLMCache": "model",
    "SemoeSparseMoeBlock": "model",
    "load_balancing_loss": "model",
    "train": "training",
    "load_or_train": "training",
    "load_checkpoint": "training",
    "checkpoint_key": "training",
    "encyclopedia_texts": "training",
    "MOE_TRAINING_COLUMNS": "training",
    "generate": "inference",
    "Generation": "inference",
    "cli_main": "cli",
}

__all__ = ["MoeLMConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"semoe.moe_lm.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'semoe.moe_lm' has no attribute {name!r}")
