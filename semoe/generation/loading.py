"""A model spec as a ``ChatLM``: the weightless dummy (``dummy[:seed]``) or a loaded model."""

from __future__ import annotations

from semoe.generation.dummy import DummyChatLM
from semoe.generation.lm import ChatLM
from semoe.models.loading import dummy_seed, load_model


def load_chat_lm(
    spec: str, cache_root: str, dtype: str = "float32", device: str = "auto", system_prompt: str | None = None
):
    """The model of ``spec`` as a ``ChatLM``: a ``DummyChatLM`` for ``dummy[:seed]`` (no torch),
    else ``ChatLM`` over ``load_model``."""
    seed = dummy_seed(spec)
    if seed is not None:
        return DummyChatLM(seed, system_prompt)
    model, tokenizer = load_model(spec, cache_root, dtype, device)
    return ChatLM(model, tokenizer, system_prompt)
