"""The on-disk and in-memory form of one passage expert: a LoRA over a set of linear
modules of a base model.

File: one safetensors file per expert. Tensor keys follow peft's naming
(``base_model.model.<module path>.lora_A.weight`` with shape ``(r, in)``, ``...lora_B.weight``
with shape ``(out, r)``), so the weights can be handed to peft unchanged; the
safetensors metadata holds ``rank``, ``alpha``, ``base_model``, ``passage_id`` and any
training facts as strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "base_model.model."


@dataclass
class LoraExpert:
    passage_id: str
    rank: int
    alpha: float
    # module path (e.g. "model.layers.3.mlp.gate_proj") -> (A: (r, in), B: (out, r))
    weights: dict[str, tuple["torch.Tensor", "torch.Tensor"]]  # noqa: F821
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def delta(self, module: str) -> "torch.Tensor":  # noqa: F821
        """ΔW = scaling · B @ A, shape (out, in)."""
        a, b = self.weights[module]
        return (b @ a) * self.scaling


def save_expert(path: str | Path, expert: LoraExpert) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for module, (a, b) in expert.weights.items():
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a.detach().contiguous().cpu()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = b.detach().contiguous().cpu()
    meta = {**expert.meta, "passage_id": expert.passage_id, "rank": str(expert.rank), "alpha": str(expert.alpha)}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


class ExpertFileError(RuntimeError):
    """An expert file is missing or corrupt."""


def load_expert(path: str | Path, device: str = "cpu") -> LoraExpert:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ExpertFileError(f"expert file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys}
    except Exception as e:  # safetensors raises several types for a damaged header/body
        raise ExpertFileError(f"expert file {path} is corrupt: {e}") from None
    weights = {}
    for k in keys:
        if k.endswith(".lora_A.weight"):
            module = k[len(PREFIX) : -len(".lora_A.weight")]
            b_key = f"{PREFIX}{module}.lora_B.weight"
            if b_key not in tensors:
                raise ExpertFileError(f"expert file {path} is corrupt: {b_key} missing")
            weights[module] = (tensors[k], tensors[b_key])
    try:
        rank, alpha, pid = int(meta.pop("rank")), float(meta.pop("alpha")), meta.pop("passage_id")
    except KeyError as e:
        raise ExpertFileError(f"expert file {path} is corrupt: metadata {e} missing") from None
    return LoraExpert(passage_id=pid, rank=rank, alpha=alpha, weights=weights, meta=meta)
