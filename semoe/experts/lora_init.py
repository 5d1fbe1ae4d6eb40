"""The LoRA every passage expert starts from, and the model helpers both trainers share.

Every expert of one (base model, rank, alpha, targets, seed) starts from one shared random
LoRA (PRAG's ``base_weight``): peft's own initialisation (A kaiming-uniform, B zero) of the
target Linear modules, made once and kept in the artifact cache; its file's sha256 enters
each expert's key. torch and peft are imported inside the functions that use them.
"""

from __future__ import annotations

import hashlib
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from semoe.config import ExpertConfig
from semoe.experts.format import LoraExpert, expert_digest, load_expert, save_expert
from semoe.storage.artifacts import ArtifactCache, content_key

if TYPE_CHECKING:
    import torch
    from torch import nn

INIT_KIND = "expert-init"
INIT_FILE = "init.safetensors"


def target_modules(model: "nn.Module", targets: Sequence[str]) -> list[str]:
    """Paths of the nn.Linear modules whose last name component is one of ``targets``."""
    from torch import nn

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets]
    if not names:
        raise ValueError(f"model has no nn.Linear named any of {list(targets)}")
    return names


def device_of(model) -> "torch.device":
    return next(model.parameters()).device


@contextmanager
def frozen(model) -> Iterator[None]:
    """Base weights without gradients and in eval mode for the duration; restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.train(mode)


def _peft_config(cfg: ExpertConfig, names: list[str]):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=names,
        bias="none",
        init_lora_weights=True,
    )


@contextmanager
def peft_attached(model, cfg: ExpertConfig, names: list[str]):
    """``model`` wrapped by peft with a fresh adapter; the bare model is restored after."""
    from peft import get_peft_model

    with frozen(model):
        with warnings.catch_warnings():  # peft calls a transformers property deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, _peft_config(cfg, names))
        try:
            yield peft_model
        finally:
            peft_model.unload()


def peft_lora_layers(peft_model, names: list[str]) -> dict[str, tuple]:
    """module path -> (lora_A, lora_B) Linear modules of the default adapter."""
    root = peft_model.get_base_model()
    return {n: (root.get_submodule(n).lora_A["default"], root.get_submodule(n).lora_B["default"]) for n in names}


def initial_lora(model, cfg: ExpertConfig) -> LoraExpert:
    """The shared starting point: peft's LoRA init (A kaiming-uniform, B zero) seeded by
    ``cfg.init_seed``, without touching the global RNG."""
    import torch

    names = target_modules(model, cfg.targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        with peft_attached(model, cfg, names) as peft_model:
            weights = {
                n: (a.weight.detach().float().cpu().clone(), b.weight.detach().float().cpu().clone())
                for n, (a, b) in peft_lora_layers(peft_model, names).items()
            }
    return LoraExpert(
        passage_id="init", rank=cfg.rank, alpha=cfg.alpha, weights=weights, meta={"init_seed": str(cfg.init_seed)}
    )


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def ensure_init(model, model_spec: str, cfg: ExpertConfig, cache: ArtifactCache) -> tuple[str, LoraExpert]:
    """(content digest of the init file (``expert_digest``), init): created once per (model,
    rank, alpha, targets, seed)."""
    key = content_key("expert-init", model_spec, cfg.init_identity())

    def build(out: Path) -> dict:
        save_expert(out / INIT_FILE, initial_lora(model, cfg))
        return {"base_model": model_spec, **cfg.init_identity()}

    path = cache.get_or_build(INIT_KIND, key, build) / INIT_FILE
    return expert_digest(path), load_expert(path)
