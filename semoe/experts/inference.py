"""Putting passage experts into a base model at inference time.

PRAG answers in one of three modes: ``icl`` (retrieved passages in the prompt, no experts),
``prag`` (the passages' experts, no passages in the prompt) and ``combine`` (both). The
top-k passages' experts act together as the sum of their ΔW.

Two ways to apply them:

* ``merged``: add Σ ΔW into the Linear weights, run, put the saved weights back. One
  expert set for the whole model, so questions run one at a time (the baseline).
* ``heterogeneous_experts``: leave the weights alone and add, per batch row b,
  ``x_b @ A_b^T @ B_b^T`` in a forward hook on each target Linear, so a batch of questions
  with different experts decodes together (``model.generate``, KV cache, left padding).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal, Sequence, TypeVar

from semoe.experts.format import ExpertFileError, LoraExpert, load_expert

if TYPE_CHECKING:
    import torch
    from torch import nn

    from semoe.generation.lm import ChatLM, Generation, Message, StopWhen

Mode = Literal["icl", "prag", "combine"]
MODES: tuple[Mode, ...] = ("icl", "prag", "combine")
P = TypeVar("P")


def mode_inputs(
    mode: Mode, passages: Sequence[P], experts: Sequence[LoraExpert]
) -> tuple[list[P] | None, list[LoraExpert]]:
    """(passages for the prompt or None, experts to insert) for one question in ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}; expected one of {MODES}")
    return (list(passages) if mode != "prag" else None), (list(experts) if mode != "icl" else [])


def load_experts(
    paths: Sequence[str | Path], device: str = "cpu", *, model: "nn.Module | None" = None, base_model: str | None = None
) -> list[LoraExpert]:
    """Load expert files: semoe's or peft adapters (see :func:`semoe.experts.format.load_expert`).

    With ``model``, every expert must fit it: each of its modules a ``nn.Linear`` of the
    model with matching shapes. With ``base_model`` (the model spec), a file that names its
    base model must name this one or ``model.name_or_path``; names are compared whole or by
    their last path component, case-insensitively, since one model goes by an alias, a hub
    id ("HuggingFaceTB/SmolLM2-135M-Instruct") or a local directory.
    Raises ``ExpertFileError`` naming the file: missing, damaged, for another base model,
    or not fitting ``model``.
    """
    names = [n for n in (base_model, getattr(model, "name_or_path", None)) if n] if base_model else []
    experts = []
    for path in paths:
        expert = load_expert(path, device=device)
        named = expert.meta.get("base_model")
        if named and names and not any(_same_model(named, n) for n in names):
            raise ExpertFileError(f"expert file {path} was trained on base model {named!r}, not {' / '.join(names)}")
        if model is not None:
            _check_fits(model, expert, path)
        experts.append(expert)
    return experts


def _same_model(a: str, b: str) -> bool:
    def last(name: str) -> str:
        return Path(name.rstrip("/")).name.lower()

    return a == b or last(a) == last(b)


def _check_fits(model: "nn.Module", expert: LoraExpert, path: str | Path) -> None:
    """An ``ExpertFileError`` naming ``path`` unless every module of ``expert`` is a Linear of
    ``model`` it fits: an expert whose modules are elsewhere would change nothing or fail later."""
    from torch import nn

    problems = []
    for module, (a, b) in expert.weights.items():
        try:
            _target_linear(model, module, a, b, expert.passage_id)
        except ValueError as e:
            problems.append(str(e))
    if not problems:
        return
    message = (
        f"expert file {path} does not fit the model ({len(problems)} of {len(expert.weights)} modules): {problems[0]}"
    )
    if len(problems) == len(expert.weights):
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:3]
        message += f"; expected modules of the model such as {', '.join(map(repr, linear))}"
    raise ExpertFileError(message)


def combine_experts(experts: Sequence[LoraExpert], passage_id: str | None = None) -> LoraExpert:
    """One LoRA whose ΔW is the sum of the experts' ΔW.

    Concatenating the A's along the rank dimension and the B's (each times its expert's
    scaling) gives B_cat @ A_cat = Σ s_i B_i A_i, which is what PRAG's weighted-adapter
    ``cat`` combination computes; scaling is folded into B, so the result has alpha = rank.
    A module some experts lack gets zero rows/columns there, keeping one rank for all modules.
    """
    import torch

    if not experts:
        raise ValueError("combine_experts needs at least one expert")
    rank = sum(e.rank for e in experts)
    modules = list(dict.fromkeys(m for e in experts for m in e.weights))
    weights = {}
    for m in modules:
        a_parts, b_parts = [], []
        a_ref, b_ref = next(e.weights[m] for e in experts if m in e.weights)
        for e in experts:
            if m in e.weights:
                a, b = e.weights[m]
                if a.shape[1] != a_ref.shape[1] or b.shape[0] != b_ref.shape[0]:
                    raise ValueError(
                        f"experts disagree on {m!r}: {e.passage_id} maps {a.shape[1]} -> {b.shape[0]}, "
                        f"another expert {a_ref.shape[1]} -> {b_ref.shape[0]}"
                    )
                a_parts.append(a)
                b_parts.append(b * e.scaling)
            else:
                a_parts.append(a_ref.new_zeros(e.rank, a_ref.shape[1]))
                b_parts.append(b_ref.new_zeros(b_ref.shape[0], e.rank))
        weights[m] = (torch.cat(a_parts, 0), torch.cat(b_parts, 1))
    pid = passage_id if passage_id is not None else "+".join(e.passage_id for e in experts)
    return LoraExpert(passage_id=pid, rank=rank, alpha=float(rank), weights=weights)


def _target_linear(model: "nn.Module", path: str, a: "torch.Tensor", b: "torch.Tensor", who: str) -> "nn.Linear":
    """The Linear at ``path``, checked against an (A, B) pair so a wrong expert fails loudly."""
    from torch import nn

    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"expert {who}: model has no module {path!r}") from None
    if not isinstance(module, nn.Linear):
        raise ValueError(f"expert {who}: {path!r} is a {type(module).__name__}, not nn.Linear")
    if a.shape[1] != module.in_features or b.shape[0] != module.out_features or a.shape[0] != b.shape[1]:
        raise ValueError(
            f"expert {who}: {path!r} A {tuple(a.shape)} / B {tuple(b.shape)} do not fit "
            f"Linear({module.in_features} -> {module.out_features})"
        )
    return module


@contextmanager
def merged(model: "nn.Module", experts: Sequence[LoraExpert]) -> Iterator["nn.Module"]:
    """Add Σ ΔW of ``experts`` (one matmul per module, via ``combine_experts``) into the
    target weights for the duration of the block.

    The touched weights are copied first and copied back on exit (also on error), so the
    model comes back bit for bit; subtracting ΔW again would leave rounding residue.
    """
    import torch

    saved: dict[str, "torch.Tensor"] = {}
    try:
        if experts:
            combined = combine_experts(experts)
            with torch.no_grad():
                for path, (a, b) in combined.weights.items():
                    w = _target_linear(model, path, a, b, combined.passage_id).weight
                    saved[path] = w.detach().clone()
                    w.add_(combined.delta(path).to(device=w.device, dtype=w.dtype))
        yield model
    finally:
        with torch.no_grad():
            for path, original in saved.items():
                model.get_submodule(path).weight.copy_(original)


class HeterogeneousLora:
    """Per-row LoRA on a batch: row b of every target Linear's output gets
    ``x_b @ A_b^T @ B_b^T``, with each row's experts combined (``combine_experts``) and
    stacked, zero-padded to the largest rank (rows without experts are all zeros).

    Forward hooks are installed per target module on first use and stay until ``close``;
    ``set_experts`` swaps the stacks in place, so triggered retrieval can change a row's
    experts between generation calls without reinstalling anything. The batch dimension of
    every forward must equal the number of rows given (``ChatLM.generate`` sets them again when
    finished rows leave the batch); a mismatch raises instead of mixing rows.
    """

    def __init__(self, model: "nn.Module"):
        self.model = model
        self._handles: dict[str, object] = {}
        self._stacks: dict[str, tuple["torch.Tensor", "torch.Tensor"]] = {}
        self.rows = 0

    def set_experts(self, experts_per_sample: Sequence[Sequence[LoraExpert]]) -> None:
        import torch

        n = len(experts_per_sample)
        combined = [combine_experts(row) if row else None for row in experts_per_sample]
        rank = max((c.rank for c in combined if c is not None), default=0)
        stacks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for c in combined:
            if c is None:
                continue
            for path, (a, b) in c.weights.items():
                module = _target_linear(self.model, path, a, b, c.passage_id)
                if path not in stacks:
                    w = module.weight
                    stacks[path] = (
                        w.new_zeros(n, module.in_features, rank),  # A^T per row
                        w.new_zeros(n, rank, module.out_features),  # B^T per row
                    )
        with torch.no_grad():
            for row, c in enumerate(combined):
                if c is None:
                    continue
                for path, (a, b) in c.weights.items():
                    at, bt = stacks[path]
                    at[row, :, : c.rank] = a.T
                    bt[row, : c.rank, :] = b.T
        for path in stacks:
            if path not in self._handles:
                self._handles[path] = self.model.get_submodule(path).register_forward_hook(self._hook(path))
        self._stacks = stacks
        self.rows = n

    def _hook(self, path: str):
        import torch

        def hook(module, args, output):
            stack = self._stacks.get(path)
            if stack is None:
                return None
            at, bt = stack
            x = args[0]
            if x.shape[0] != self.rows:
                raise RuntimeError(f"{path}: forward batch of {x.shape[0]} rows but experts were set for {self.rows}")
            h = torch.bmm(x.reshape(self.rows, -1, x.shape[-1]), at)
            return torch.baddbmm(output.reshape(self.rows, -1, output.shape[-1]), h, bt).view(output.shape)

        return hook

    def close(self) -> None:
        """Remove every hook: the modules are as they were before (weights never changed)."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self._stacks = {}
        self.rows = 0

    def __enter__(self) -> "HeterogeneousLora":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def heterogeneous_experts(
    model: "nn.Module", experts_per_sample: Sequence[Sequence[LoraExpert]] = ()
) -> Iterator[HeterogeneousLora]:
    """Install per-row experts on ``model`` for the block; yields the ``HeterogeneousLora``
    so the rows' experts can be replaced with ``set_experts``."""
    lora = HeterogeneousLora(model)
    try:
        lora.set_experts(experts_per_sample)
        yield lora
    finally:
        lora.close()


def generate_with_experts(
    lm: "ChatLM",
    conversations: Sequence[Sequence["Message"]],
    experts_per_sample: Sequence[Sequence[LoraExpert]],
    max_new_tokens: int,
    batch_size: int = 8,
    *,
    stop_when: "StopWhen | None" = None,
) -> list["Generation"]:
    """``ChatLM.generate`` where each conversation is answered with its own experts: the
    rows of each model batch get their conversations' experts just before it runs, and
    again when finished rows leave it."""
    if len(conversations) != len(experts_per_sample):
        raise ValueError(f"{len(conversations)} conversations but {len(experts_per_sample)} expert lists")
    with heterogeneous_experts(lm.model) as lora:
        return lm.generate(
            conversations,
            max_new_tokens,
            batch_size=batch_size,
            on_batch=lambda idx: lora.set_experts([experts_per_sample[i] for i in idx]),
            stop_when=stop_when,
        )
