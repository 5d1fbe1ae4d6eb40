"""Per-passage LoRA experts, trained as PRAG trains them, and a batched trainer that trains
many passages' experts in one pass over the base model.

Training data (PRAG's ``encode.py``): from one passage's augmentation (the passage, its
rewrites, QA pairs) build chat-formatted sequences
``user: USER_PROMPT(passages, question)`` / ``assistant: answer``. With ``recipe="prag"``
the first ceil(n_qa/2) QA pairs appear once with the passage and once with each rewrite
in the prompt, the other QA pairs once without a passage, in that order (3 QA pairs and
1 rewrite give 5 sequences); ``recipe="all"`` uses every QA pair with every context and
without one. The no-passage prompt is PRAG's same instruction with an empty knowledge
block, which is also what PRAG's inference sends in its ``prag`` mode. Every expert starts
from one shared random LoRA (``base_weight``) and takes one AdamW step per sequence
(batch 1, no shuffling), loss on the whole sequence (PRAG) or on the answer only.

Two trainers, which in float32 give the same experts:

* :func:`train_expert_peft`: PRAG's loop with peft, one passage at a time (the baseline).
* :func:`train_experts_batched`: up to ``batch_passages`` passages in lockstep. Each target
  Linear gets a forward hook that adds ``x_p @ A_pᵀ @ B_pᵀ · s`` with stacked weights
  A: (P, r, in), B: (P, out, r) (``torch.bmm``); row i of a (micro-)batch is a sequence of
  passage ``rows.start + i``, so the per-sample gather is a slice view, the base Linear
  runs once for the whole batch and each passage's gradient lands only in its own slice.
  The batch loss is the sum of the per-sequence mean losses, so each slice gets exactly the
  gradient it would get alone, and one torch AdamW over the stacked tensors updates each
  slice as a lone optimizer would: its state is per element, and its step count (bias
  correction) is shared, which is right because every passage of a batch takes a step at
  every step. Passages are therefore grouped by their number of training sequences; a
  step's passages may run in several micro-batches whose gradients accumulate. Sequences
  are right-padded (real tokens never attend to the padding under the causal mask, so no
  attention mask is needed) and the LM head and cross-entropy run chunk by chunk on the
  predicted positions only, never holding (tokens × vocab) logits. ``compute_dtype``
  bfloat16 runs the frozen base model's matmuls in bfloat16 (LoRA weights, optimizer,
  residual stream and loss stay float32). On a CPU that, not batching, is what makes it
  faster: a batch-1 sequence of ~200 tokens already keeps the matmuls near peak, and
  attention and elementwise work cost the same per token at any batch size.

:func:`ensure_experts` keys each expert by content (passage and augmentation text, base
model, training settings, the initial LoRA's hash), stores it in the artifact cache and
trains only those not there yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from semoe.config import ExpertConfig
from semoe.experts.format import LoraExpert, load_expert, save_expert
from semoe.progress import RateMeter
from semoe.storage.artifacts import ArtifactCache, content_key
from semoe.storage.rows import ExpertRow

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

EXPERTS_KIND = "experts"
INIT_KIND = "expert-init"
EXPERT_FILE = "expert.safetensors"
INIT_FILE = "init.safetensors"
IGNORE = -100
# Bump when a change here changes the experts trained from the same inputs.
TRAINER_VERSION = 1

USER_PROMPT = (
    "You should answer the question by referring to the knowledge provided below and integrating your own "
    "knowledge.\n{passages}\n\nQuestion: {question}"
)
ANSWER_PROMPT = "The answer is {answer}"

# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    full_answer: str


def _as_qa(q) -> QA:
    if isinstance(q, dict):
        return QA(q["question"], q["answer"], q["full_answer"])
    if isinstance(q, (tuple, list)):
        return QA(*q)
    return QA(q.question, q.answer, q.full_answer)


@dataclass(frozen=True)
class TrainingItem:
    """One passage and its augmentation: the unit an expert is trained on."""

    passage_id: str
    passage: str
    rewrites: tuple[str, ...]
    qa: tuple[QA, ...]

    @classmethod
    def create(cls, passage_id: str, passage: str, rewrites: Sequence[str], qa: Sequence) -> "TrainingItem":
        """``qa``: QA pairs as objects with question/answer/full_answer attributes (e.g. the
        augmenter's), dicts with those keys, or (question, answer, full_answer) tuples."""
        return cls(passage_id, passage, tuple(rewrites), tuple(_as_qa(q) for q in qa))

    def content(self) -> dict:
        """What the expert learns from (the passage id is only a label)."""
        return {"passage": self.passage, "rewrites": list(self.rewrites), "qa": [asdict(q) for q in self.qa]}


@dataclass(frozen=True)
class TrainingSequence:
    ids: tuple[int, ...]
    prompt_len: int  # tokens before the assistant's answer

    def labels(self, loss_on: str) -> list[int]:
        if loss_on == "answer":
            return [IGNORE] * self.prompt_len + list(self.ids[self.prompt_len :])
        return list(self.ids)


def _question(q: str) -> str:
    q = q.strip()
    if q.endswith(" ?"):
        q = q[:-1].strip() + "?"
    return q if q.endswith("?") else q + "?"


def _sentence(s: str) -> str:
    s = s.strip()
    return s if s.endswith(".") else s + "."


def user_prompt(question: str, passages: Sequence[str] | None = None) -> str:
    """PRAG's user turn; ``passages=None`` leaves the knowledge block empty."""
    block = "".join(f"Passage {i + 1}: {p}\n" for i, p in enumerate(passages or []))
    return USER_PROMPT.format(passages=block, question=_question(question))


def assistant_turn(qa: QA, target: str) -> str:
    if target == "answer":
        return ANSWER_PROMPT.format(answer=_sentence(qa.answer))
    return _sentence(qa.full_answer)


def sequence_plan(item: TrainingItem, recipe: str) -> list[tuple[QA, str | None]]:
    """(QA pair, context or None) per training sequence, in training order."""
    contexts = [item.passage, *item.rewrites]
    if recipe == "all":
        return [(qa, c) for qa in item.qa for c in (*contexts, None)]
    with_context = (len(item.qa) + 1) // 2
    return [(qa, c) for i, qa in enumerate(item.qa) for c in (contexts if i < with_context else [None])]


def build_sequences(tokenizer, item: TrainingItem, cfg: ExpertConfig) -> list[TrainingSequence]:
    out = []
    for qa, context in sequence_plan(item, cfg.recipe):
        messages = [{"role": "user", "content": user_prompt(qa.question, None if context is None else [context])}]
        prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
        ids = (prompt + tokenizer.encode(assistant_turn(qa, cfg.target), add_special_tokens=False))[: cfg.max_length]
        out.append(TrainingSequence(tuple(ids), min(len(prompt), len(ids))))
    return out


# --------------------------------------------------------------------------- model helpers


def target_modules(model: "nn.Module", targets: Sequence[str]) -> list[str]:
    """Paths of the nn.Linear modules whose last name component is one of ``targets``."""
    from torch import nn

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets]
    if not names:
        raise ValueError(f"model has no nn.Linear named any of {list(targets)}")
    return names


def _device(model) -> "torch.device":
    return next(model.parameters()).device


@contextmanager
def _frozen(model) -> Iterator[None]:
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


@contextmanager
def _compute_model(model, cfg: ExpertConfig) -> Iterator:
    """The frozen base model the batched trainer runs: ``model`` itself when its dtype is
    ``cfg.compute_dtype``, else a converted copy (the caller's weights are never cast).
    For bfloat16 only the copy's Linear weights are converted and forwards run under
    autocast (:func:`_autocast`): matmuls in bfloat16, the residual stream, norms and loss
    in float32, no weight cast per call."""
    import copy

    from torch import nn

    dtype = getattr(torch, cfg.compute_dtype)
    with _frozen(model):
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
        _device(model).type, dtype=getattr(torch, cfg.compute_dtype), enabled=cfg.compute_dtype != "float32"
    )


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
def _peft_attached(model, cfg: ExpertConfig, names: list[str]):
    """``model`` wrapped by peft with a fresh adapter; the bare model is restored after."""
    from peft import get_peft_model

    with _frozen(model):
        with warnings.catch_warnings():  # peft calls a transformers property deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, _peft_config(cfg, names))
        try:
            yield peft_model
        finally:
            peft_model.unload()


def _peft_weights(peft_model, names: list[str]) -> dict[str, tuple]:
    """module path -> (lora_A, lora_B) Linear modules of the default adapter."""
    root = peft_model.get_base_model()
    return {n: (root.get_submodule(n).lora_A["default"], root.get_submodule(n).lora_B["default"]) for n in names}


def initial_lora(model, cfg: ExpertConfig) -> LoraExpert:
    """The shared starting point: peft's LoRA init (A kaiming-uniform, B zero) seeded by
    ``cfg.init_seed``, without touching the global RNG."""
    names = target_modules(model, cfg.targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        with _peft_attached(model, cfg, names) as peft_model:
            weights = {
                n: (a.weight.detach().float().cpu().clone(), b.weight.detach().float().cpu().clone())
                for n, (a, b) in _peft_weights(peft_model, names).items()
            }
    return LoraExpert(
        passage_id="init", rank=cfg.rank, alpha=cfg.alpha, weights=weights, meta={"init_seed": str(cfg.init_seed)}
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ensure_init(model, model_spec: str, cfg: ExpertConfig, cache: ArtifactCache) -> tuple[str, LoraExpert]:
    """(sha256 of the init file, init): created once per (model, rank, alpha, targets, seed)."""
    key = content_key("expert-init", model_spec, cfg.init_identity())

    def build(out: Path) -> dict:
        save_expert(out / INIT_FILE, initial_lora(model, cfg))
        return {"base_model": model_spec, **cfg.init_identity()}

    path = cache.get_or_build(INIT_KIND, key, build) / INIT_FILE
    return _sha256(path), load_expert(path)


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    expert: LoraExpert
    loss_before: float | None  # mean over the passage's sequences of the per-sequence mean token loss
    loss_after: float | None
    seconds: float  # the batched trainer splits a batch's time evenly between its passages
    sequences: int


def _stamp(result: TrainResult) -> TrainResult:
    result.expert.meta.update(
        {
            k: json.dumps(v)
            for k, v in (
                ("loss_before", result.loss_before),
                ("loss_after", result.loss_after),
                ("seconds", round(result.seconds, 4)),
                ("sequences", result.sequences),
            )
        }
    )
    return result


def _peft_loss(peft_model, seq: TrainingSequence, cfg: ExpertConfig) -> "torch.Tensor":
    device = _device(peft_model)
    ids = torch.tensor([seq.ids], device=device)
    labels = torch.tensor([seq.labels(cfg.loss_on)], device=device)
    return peft_model(input_ids=ids, labels=labels, use_cache=False).loss


def _lora_dropout_mode(peft_model, training: bool) -> None:
    for name, m in peft_model.named_modules():
        if name.endswith(".lora_dropout"):
            m.train(training)


def train_expert_peft(model, tokenizer, item: TrainingItem, cfg: ExpertConfig, init: LoraExpert) -> TrainResult:
    """PRAG's recipe: peft adapter loaded with the init, batch 1, AdamW, one passage."""
    started = time.perf_counter()
    seqs = build_sequences(tokenizer, item, cfg)
    names = list(init.weights)
    with _peft_attached(model, cfg, names) as peft_model:
        layers = _peft_weights(peft_model, names)
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
    return _stamp(TrainResult(expert, loss_before, loss_after, time.perf_counter() - started, len(seqs)))


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
    device = _device(model)
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
        device = _device(model)
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
        _stamp(TrainResult(stack.expert(p, it.passage_id), before[p], after[p], seconds, len(seqs[0])))
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


# --------------------------------------------------------------------------- cache


@dataclass
class ExpertRecord:
    expert_key: str
    passage_id: str
    path: str
    base_model: str
    rank: int
    alpha: float
    lr: float
    epochs: int
    targets: list[str]
    loss_before: float | None
    loss_after: float | None
    seconds: float | None
    bytes: int
    sha256: str
    trained: bool = field(default=False, compare=False)  # by this call (not a column)

    def to_row(self) -> dict:
        """A row of the ``experts`` table (``semoe.storage.rows.ExpertRow``)."""
        return ExpertRow(**{c: getattr(self, c) for c in ExpertRow.columns()}).as_dict()


def expert_key(item: TrainingItem, model_spec: str, cfg: ExpertConfig, init_sha256: str) -> str:
    return content_key("expert", TRAINER_VERSION, item.content(), model_spec, cfg.identity(), init_sha256)


def _store(out: Path, result: TrainResult, model_spec: str, cfg: ExpertConfig, key: str, init_sha256: str) -> dict:
    result.expert.meta.update(
        {
            "base_model": model_spec,
            "expert_key": key,
            "init_sha256": init_sha256,
            "config": json.dumps(cfg.identity(), sort_keys=True),
        }
    )
    path = out / EXPERT_FILE
    save_expert(path, result.expert)
    return {
        "passage_id": result.expert.passage_id,
        "loss_before": result.loss_before,
        "loss_after": result.loss_after,
        "train_seconds": result.seconds,
        "sequences": result.sequences,
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
    }


def ensure_experts(
    items: Sequence[TrainingItem], model_spec: str, cfg: ExpertConfig, cache: ArtifactCache, model, tokenizer
) -> list[ExpertRecord]:
    """Records for ``items`` (in order), training (batched) only experts not yet cached.
    Items with identical content share one expert."""
    init_sha, init = ensure_init(model, model_spec, cfg, cache)
    keys = [expert_key(it, model_spec, cfg, init_sha) for it in items]
    missing: dict[str, TrainingItem] = {}
    for k, it in zip(keys, items):
        if not cache.is_complete(EXPERTS_KIND, k):
            missing.setdefault(k, it)
    todo = list(missing.items())
    meter = RateMeter("expert training", len(todo), "experts", log.info)
    for i, result in iter_trained_experts(model, tokenizer, [it for _, it in todo], cfg, init):
        key = todo[i][0]
        cache.get_or_build(
            EXPERTS_KIND, key, lambda out, result=result, key=key: _store(out, result, model_spec, cfg, key, init_sha)
        )
        meter.advance()
    records = []
    for k, it in zip(keys, items):
        info = cache.info(EXPERTS_KIND, k)
        records.append(
            ExpertRecord(
                expert_key=k,
                passage_id=it.passage_id,
                path=str(cache.path(EXPERTS_KIND, k) / EXPERT_FILE),
                base_model=model_spec,
                rank=cfg.rank,
                alpha=cfg.alpha,
                lr=cfg.lr,
                epochs=cfg.epochs,
                targets=list(cfg.targets),
                loss_before=info["loss_before"],
                loss_after=info["loss_after"],
                seconds=info["train_seconds"],
                bytes=info["bytes"],
                sha256=info["sha256"],
                trained=k in missing,
            )
        )
    return records
