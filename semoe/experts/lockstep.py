"""semoe's batched trainer: many passages' experts in lockstep, one pass over the base model.

Up to ``batch_passages`` passages train together. Each target Linear gets a forward hook
that adds ``x_p @ A_pᵀ @ B_pᵀ · s`` with stacked weights A: (P, r, in), B: (P, out, r)
(``torch.bmm``); row i of a (micro-)batch is a sequence of passage ``rows.start + i``, so
the per-sample gather is a slice view, the base Linear runs once for the whole batch and
each passage's gradient lands only in its own slice. The batch loss is the sum of the
per-sequence mean losses, so each slice gets exactly the gradient it would get alone, and
one torch AdamW over the stacked tensors updates each slice as a lone optimizer would: its
state is per element, and its step count (bias correction) is shared, which is right
because every passage of a batch takes a step at every step. Passages are therefore grouped
by their number of training sequences; a step's passages may run in several micro-batches
whose gradients accumulate. Sequences are right-padded (real tokens never attend to the
padding under the causal mask, so no attention mask is needed) and the LM head and
cross-entropy run chunk by chunk on the predicted positions only, never holding
(tokens × vocab) logits. ``compute_dtype`` bfloat16 runs the frozen base model's matmuls in
bfloat16 (LoRA weights, optimizer, residual stream and loss stay float32). On a CPU that,
not batching, is what makes it faster: a batch-1 sequence of ~200 tokens already keeps the
matmuls near peak, and attention and elementwise work cost the same per token at any batch
size. In float32 its experts equal the reference trainer's
(:func:`semoe.experts.peft_trainer.train_expert_peft`, PRAG's loop).

A heavy module: it defines a ``torch.autograd.Function`` and so imports torch at module
level; only the training path imports it.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from semoe.config import ExpertConfig
from semoe.experts.format import LoraExpert
from semoe.experts.lora_init import device_of, frozen
from semoe.experts.training_data import IGNORE, TrainingItem, TrainingSequence, TrainResult, build_sequences


@contextmanager
def _compute_model(model, cfg: ExpertConfig) -> Iterator:
    """The frozen base model the batched trainer runs: ``model`` itself when its dtype is
    ``cfg.compute_dtype``, else a converted copy (the caller's weights are never cast).
    For bfloat16 only the copy's Linear weights are converted and forwards run under
    autocast (:func:`_autocast`): matmuls in bfloat16, the residual stream, norms and loss
    in float32, no weight cast per call."""
    dtype = getattr(torch, cfg.compute_dtype)
    with frozen(model):
        if next(model.parameters()).dtype == dtype:
            yield model
            return
        runner = copy.deepcopy(model)
        if dtype == torch.float32:
            runner.float()
        else:
            head = runner.get_output_embeddings()
            for module in runner.modules():
                if isinstance(module, nn.Linear) and module is not head:
                    module.to(dtype)
        try:
            yield runner
        finally:
            del runner


def _autocast(model, cfg: ExpertConfig):
    return torch.autocast(
        device_of(model).type, dtype=getattr(torch, cfg.compute_dtype), enabled=cfg.compute_dtype != "float32"
    )


class _LinearCrossEntropy(torch.autograd.Function):
    """Σᵢ wᵢ·CE(hᵢ Wᵀ + b, yᵢ) over rows of h, one chunk of rows at a time.

    The gradient w.r.t. h is formed in the forward pass, where each chunk's softmax is at
    hand, so (rows × vocab) logits never exist in full and none are kept for backward. The
    head's weight is frozen. Also returns the per-row losses (no gradient) for reporting.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, labels, row_weights, dtype, chunk):
        needs_grad = ctx.needs_input_grad[0]
        losses = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        grad = torch.empty_like(h) if needs_grad else None
        w = weight.to(dtype)
        for s in range(0, h.shape[0], chunk):
            logits = (h[s : s + chunk].to(dtype) @ w.T).float()
            if bias is not None:
                logits += bias.float()
            y = labels[s : s + chunk]
            lse = torch.logsumexp(logits, dim=-1)
            losses[s : s + chunk] = lse - logits.gather(1, y[:, None]).squeeze(1)
            if needs_grad:
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(len(y), device=y.device), y] -= 1.0
                probs *= row_weights[s : s + chunk, None]
                grad[s : s + chunk] = probs.to(dtype) @ w
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(losses)
        return (losses * row_weights).sum(), losses

    @staticmethod
    def backward(ctx, grad_total, _grad_losses):
        (grad,) = ctx.saved_tensors
        return grad * grad_total, None, None, None, None, None, None


LOSS_CHUNK_ROWS = 256  # rows per chunk: bounds the float32 (rows × vocab) logits held at once


def _batch_loss(model, seqs: list[TrainingSequence], cfg: ExpertConfig) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(sum over sequences of each one's mean token loss, per-sequence mean losses)."""
    device = device_of(model)
    width = max(len(s.ids) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, : len(s.ids)] = torch.tensor(s.ids)
        labels[i, : len(s.ids)] = torch.tensor(s.labels(cfg.loss_on))
    hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    row_of = torch.arange(len(seqs), device=device)[:, None].expand_as(targets)[keep]
    row_weights = (1.0 / keep.sum(1).clamp(min=1).float())[row_of]
    head = model.get_output_embeddings()
    total, token_losses = _LinearCrossEntropy.apply(
        hidden[:, :-1][keep],
        head.weight,
        head.bias,
        targets[keep],
        row_weights,
        getattr(torch, cfg.compute_dtype),
        LOSS_CHUNK_ROWS,
    )
    per_seq = torch.zeros(len(seqs), device=device).index_add_(0, row_of, token_losses * row_weights)
    return total, per_seq


class _StackedLora:
    """LoRA weights of P passages stacked per target module, added to the module's output
    by a forward hook. A forward covers the passages in ``self.rows`` (a slice), batch row i
    being passage ``rows.start + i``, so the per-sample weight gather is a view."""

    def __init__(self, model, experts: Sequence[LoraExpert], cfg: ExpertConfig):
        device = device_of(model)
        self.model, self.cfg, self.training = model, cfg, False
        self.rows = slice(0, len(experts))
        self.a = {
            n: torch.nn.Parameter(torch.stack([e.weights[n][0] for e in experts]).to(device, torch.float32))
            for n in experts[0].weights
        }
        self.b = {
            n: torch.nn.Parameter(torch.stack([e.weights[n][1] for e in experts]).to(device, torch.float32))
            for n in experts[0].weights
        }

    def parameters(self) -> list["torch.nn.Parameter"]:
        return [*self.a.values(), *self.b.values()]

    def _hook(self, name: str):
        a_all, b_all, cfg = self.a[name], self.b[name], self.cfg

        def hook(module, args, output):
            x = args[0]
            a, b = a_all[self.rows].to(x.dtype), b_all[self.rows].to(x.dtype)
            if cfg.dropout and self.training:
                x = torch.nn.functional.dropout(x, cfg.dropout)
            return torch.baddbmm(output, torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2), alpha=cfg.scaling)

        return hook

    @contextmanager
    def attached(self) -> Iterator["_StackedLora"]:
        handles = [self.model.get_submodule(n).register_forward_hook(self._hook(n)) for n in self.a]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def step(self, seqs: list[list[TrainingSequence]], k: int, train: bool) -> "torch.Tensor":
        """Sequence k of every passage, in micro-batches (gradients accumulate); per-passage losses."""
        n = len(seqs)
        losses = torch.zeros(n)
        for j in range(0, n, self.cfg.micro_batch):
            self.rows = slice(j, min(j + self.cfg.micro_batch, n))
            with _autocast(self.model, self.cfg):
                total, per_seq = _batch_loss(self.model, [s[k] for s in seqs[self.rows]], self.cfg)
            if train:
                total.backward()
            losses[self.rows] = per_seq.detach().cpu()
        return losses

    def mean_losses(self, seqs: list[list[TrainingSequence]]) -> list[float]:
        with torch.no_grad():
            return (sum(self.step(seqs, k, train=False) for k in range(len(seqs[0]))) / len(seqs[0])).tolist()

    def expert(self, p: int, passage_id: str) -> LoraExpert:
        weights = {n: (self.a[n][p].detach().cpu().clone(), self.b[n][p].detach().cpu().clone()) for n in self.a}
        return LoraExpert(passage_id=passage_id, rank=self.cfg.rank, alpha=self.cfg.alpha, weights=weights)


def _train_lockstep(
    model, items: list[TrainingItem], seqs: list[list[TrainingSequence]], cfg: ExpertConfig, init: LoraExpert
) -> list[TrainResult]:
    """Train passages with equally many sequences together: step k uses sequence k of each."""
    started = time.perf_counter()
    stack = _StackedLora(model, [init] * len(items), cfg)
    with stack.attached():
        before = stack.mean_losses(seqs) if cfg.measure_loss else [None] * len(items)
        optimizer = torch.optim.AdamW(stack.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        stack.training = True
        for _ in range(cfg.epochs):
            for k in range(len(seqs[0])):
                optimizer.zero_grad()
                stack.step(seqs, k, train=True)
                optimizer.step()
        stack.training = False
        after = stack.mean_losses(seqs) if cfg.measure_loss else [None] * len(items)
    seconds = (time.perf_counter() - started) / len(items)
    return [
        TrainResult(stack.expert(p, it.passage_id), before[p], after[p], seconds, len(seqs[0])).stamped()
        for p, it in enumerate(items)
    ]


def _lockstep_batches(
    tokenizer, items: Sequence[TrainingItem], cfg: ExpertConfig
) -> Iterator[tuple[list[int], list[list[TrainingSequence]]]]:
    """(indices into ``items``, their sequences): up to ``batch_passages`` passages with
    equally many sequences, so that every passage of a batch steps at every step."""
    seqs = [build_sequences(tokenizer, it, cfg) for it in items]
    for it, s in zip(items, seqs):
        if not s:
            raise ValueError(f"passage {it.passage_id!r} has no QA pairs to train on")
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault(len(s), []).append(i)
    for members in groups.values():
        for start in range(0, len(members), cfg.batch_passages):
            batch = members[start : start + cfg.batch_passages]
            yield batch, [seqs[i] for i in batch]


def iter_trained_experts(
    model, tokenizer, items: Sequence[TrainingItem], cfg: ExpertConfig, init: LoraExpert
) -> Iterator[tuple[int, TrainResult]]:
    """(index into ``items``, result) as each lockstep batch finishes, so callers can store
    experts as they come instead of holding them all."""
    batches = list(_lockstep_batches(tokenizer, items, cfg))
    if not batches:
        return
    with _compute_model(model, cfg) as runner:
        for batch, seqs in batches:
            yield from zip(batch, _train_lockstep(runner, [items[i] for i in batch], seqs, cfg, init))


def expert_losses(
    model, tokenizer, items: Sequence[TrainingItem], experts: Sequence[LoraExpert], cfg: ExpertConfig
) -> list[float]:
    """Each item's training loss (mean over its sequences) with its expert applied, computed
    as the trainers report it; lets experts from different trainers be compared on one scale."""
    out = [0.0] * len(items)
    with _compute_model(model, cfg) as runner:
        for batch, seqs in _lockstep_batches(tokenizer, items, cfg):
            stack = _StackedLora(runner, [experts[i] for i in batch], cfg)
            with stack.attached():
                for i, loss in zip(batch, stack.mean_losses(seqs)):
                    out[i] = loss
    return out


def train_experts_batched(
    model, tokenizer, items: Sequence[TrainingItem], cfg: ExpertConfig, init: LoraExpert
) -> list[TrainResult]:
    """Experts for ``items`` (in order), trained ``cfg.batch_passages`` passages at a time."""
    out: list[TrainResult | None] = [None] * len(items)
    for i, result in iter_trained_experts(model, tokenizer, items, cfg, init):
        out[i] = result
    return out  # type: ignore[return-value]
