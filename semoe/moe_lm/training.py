"""Train the MoE LM on a list of texts, and cache the checkpoint by content.

Training windows of ``seq_len + 1`` tokens are drawn at random offsets from the concatenated
corpus (each text is ``BOS bytes EOS``); each window is a fresh sequence, so recurrent router
state starts from zero per window exactly as it does at inference. The objective is next-token
cross-entropy plus ``aux_loss_coef`` times the load-balancing loss; AdamW with linear warmup,
cosine decay and gradient-norm clipping.

A checkpoint lives in the artifact cache under kind ``moe-lm``, keyed by the whole config
(architecture and training settings) and a hash of the corpus, so ``load_or_train`` trains only
when no checkpoint for exactly that config and corpus exists.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

from semoe.config import MoeLMConfig, SyntheticConfig
from semoe.data.encyclopedia import build_encyclopedia
from semoe.moe_lm.tokenizer import build_tokenizer
from semoe.storage.artifacts import ArtifactCache, content_key
from semoe.storage.rows import MoeLMTrainingRow

KIND = "moe-lm"
# Bump when a code change alters what a given config trains into, so old checkpoints are not reused.
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"

MOE_TRAINING_COLUMNS = MoeLMTrainingRow.columns()
"""Keys of every curve row (``semoe.storage.rows.MoeLMTrainingRow``), in the column order of the
store's ``moe_lm_training`` table. ``loss`` is the cross-entropy (nats/token),
``aux_loss`` the unweighted load-balancing loss, ``lr`` the rate used for that step, ``seconds``
the wall time since training started."""


def corpus_key(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return f"{len(texts)}-{h.hexdigest()[:16]}"


def checkpoint_key(cfg: MoeLMConfig, texts: Sequence[str]) -> str:
    return content_key(KIND, FORMAT_VERSION, cfg.model_dump(mode="json"), corpus_key(texts))


def encyclopedia_texts(synthetic=None) -> list[str]:
    """The default corpus: the synthetic encyclopedia's passages (``SyntheticConfig()`` unless given)."""

    return [p.text for p in build_encyclopedia(synthetic or SyntheticConfig()).passages]


def _lr_factor(cfg: MoeLMConfig, step: int) -> float:
    """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at the last step (0-based ``step``)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps - 1)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(cfg: MoeLMConfig, texts: Sequence[str], on_step: Callable[[dict], None] | None = None):
    """Train from scratch: ``(model in eval mode, tokenizer, curve rows)``. ``on_step`` sees each row."""
    import torch
    import torch.nn.functional as F

    from semoe.moe_lm.model import MoeLM

    tokenizer = build_tokenizer(cfg.tokenizer)
    stream = torch.tensor([i for t in texts for i in tokenizer.encode(t, add_eos=True)], dtype=torch.long)
    if stream.numel() < cfg.seq_len + 1:
        raise ValueError(f"corpus has {stream.numel()} tokens, fewer than one training window ({cfg.seq_len + 1})")
    key = checkpoint_key(cfg, texts)

    torch.manual_seed(cfg.seed)
    model = MoeLM(cfg).train()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(cfg, s))
    sampler = torch.Generator().manual_seed(cfg.seed)
    offsets = torch.arange(cfg.seq_len + 1)

    curve = []
    started = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        starts = torch.randint(0, stream.numel() - cfg.seq_len, (cfg.batch_size, 1), generator=sampler)
        window = stream[starts + offsets]
        out = model(window[:, :-1])
        ce = F.cross_entropy(out.logits.reshape(-1, model.vocab_size), window[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        (ce + cfg.aux_loss_coef * out.aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
        row = MoeLMTrainingRow(
            model_key=key,
            step=step,
            loss=ce.item(),
            aux_loss=out.aux_loss.item(),
            lr=lr,
            seconds=time.perf_counter() - started,
        ).as_dict()
        curve.append(row)
        if on_step is not None:
            on_step(row)
    return model.eval(), tokenizer, curve


def save_checkpoint(directory: Path, model, curve: list[dict]) -> None:
    from safetensors.torch import save_model

    save_model(model, str(directory / WEIGHTS_FILE))  # handles the cell shared across layers
    (directory / "config.json").write_text(model.config.model_dump_json(indent=2))
    (directory / "curve.json").write_text(json.dumps(curve))


def load_checkpoint(directory: str | Path):
    """``(model in eval mode, tokenizer, curve rows)`` from a checkpoint directory."""
    from safetensors.torch import load_model

    from semoe.moe_lm.model import MoeLM

    directory = Path(directory)
    cfg = MoeLMConfig.model_validate_json((directory / "config.json").read_text())
    model = MoeLM(cfg)
    load_model(model, str(directory / WEIGHTS_FILE))
    return model.eval(), build_tokenizer(cfg.tokenizer), json.loads((directory / "curve.json").read_text())


def load_or_train(
    cfg: MoeLMConfig, texts: Sequence[str], cache: ArtifactCache, on_step: Callable[[dict], None] | None = None
):
    """The cached checkpoint for ``(cfg, texts)``, training it first if it is not there:
    ``(model, tokenizer, curve rows)``; the curve is the one recorded when it was trained."""
    trained = None

    def build(out: Path) -> dict:
        nonlocal trained
        trained = train(cfg, texts, on_step)
        model, _, curve = trained
        save_checkpoint(out, model, curve)
        return {
            "corpus": corpus_key(texts),
            "steps": cfg.steps,
            "final_loss": curve[-1]["loss"],
            "parameters": model.num_parameters(),
        }

    path = cache.get_or_build(KIND, checkpoint_key(cfg, texts), build)
    return trained if trained is not None else load_checkpoint(path)
