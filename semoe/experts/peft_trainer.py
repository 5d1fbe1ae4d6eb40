"""The reference trainer: PRAG's loop with peft, one passage at a time.

PRAG (``encode.py``) loads a peft adapter with the shared initial LoRA and takes one
AdamW step per training sequence (batch 1, no shuffling). semoe trains with the lockstep
trainer (:mod:`semoe.experts.lockstep`), which in float32 gives the same experts; this one
is the baseline it is tested and benchmarked against. torch is imported inside the functions.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from semoe.config import ExpertConfig
from semoe.experts.format import LoraExpert
from semoe.experts.lora_init import device_of, peft_attached, peft_lora_layers
from semoe.experts.training_data import TrainingItem, TrainingSequence, TrainResult, build_sequences

if TYPE_CHECKING:
    import torch


def _peft_loss(peft_model, seq: TrainingSequence, cfg: ExpertConfig) -> "torch.Tensor":
    import torch

    device = device_of(peft_model)
    ids = torch.tensor([seq.ids], device=device)
    labels = torch.tensor([seq.labels(cfg.loss_on)], device=device)
    return peft_model(input_ids=ids, labels=labels, use_cache=False).loss


def _lora_dropout_mode(peft_model, training: bool) -> None:
    for name, m in peft_model.named_modules():
        if name.endswith(".lora_dropout"):
            m.train(training)


def train_expert_peft(model, tokenizer, item: TrainingItem, cfg: ExpertConfig, init: LoraExpert) -> TrainResult:
    """PRAG's recipe: peft adapter loaded with the init, batch 1, AdamW, one passage."""
    import torch

    started = time.perf_counter()
    seqs = build_sequences(tokenizer, item, cfg)
    names = list(init.weights)
    with peft_attached(model, cfg, names) as peft_model:
        layers = peft_lora_layers(peft_model, names)
        with torch.no_grad():
            for n, (a, b) in layers.items():
                a.weight.copy_(init.weights[n][0])
                b.weight.copy_(init.weights[n][1])

        def mean_loss() -> float | None:
            if not cfg.measure_loss:
                return None
            with torch.no_grad():
                return sum(_peft_loss(peft_model, s, cfg).item() for s in seqs) / len(seqs)

        loss_before = mean_loss()
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        _lora_dropout_mode(peft_model, True)
        for _ in range(cfg.epochs):
            for seq in seqs:
                optimizer.zero_grad()
                _peft_loss(peft_model, seq, cfg).backward()
                optimizer.step()
        _lora_dropout_mode(peft_model, False)
        loss_after = mean_loss()
        weights = {
            n: (a.weight.detach().float().cpu().clone(), b.weight.detach().float().cpu().clone())
            for n, (a, b) in layers.items()
        }
    expert = LoraExpert(passage_id=item.passage_id, rank=cfg.rank, alpha=cfg.alpha, weights=weights)
    return TrainResult(expert, loss_before, loss_after, time.perf_counter() - started, len(seqs)).stamped()
