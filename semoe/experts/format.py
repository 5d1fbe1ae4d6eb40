"""The on-disk and in-memory form of one passage expert: a LoRA over a set of linear
modules of a base model.

File: one safetensors file per expert. Tensor keys follow peft's naming
(``base_model.model.<module path>.lora_A.weight`` with shape ``(r, in)``, ``...lora_B.weight``
with shape ``(out, r)``), so the weights can be handed to peft unchanged; the
safetensors metadata holds ``rank``, ``alpha``, ``base_model``, ``passage_id`` and any
training facts as strings. :func:`load_expert` also reads LoRA adapters saved by peft
(experts trained elsewhere), whose settings are in ``adapter_config.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from semoe.storage.atomic import atomic_path

PREFIX = "base_model.model."
# What peft's save_pretrained writes into an adapter directory.
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"


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
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def expert_digest(path: str | Path) -> str:
    """sha256 of an expert file's content: its tensors (names, dtypes, shapes, bytes) and its
    metadata, in a canonical order. The file's own bytes are not stable: safetensors writes
    the metadata map in a random order, so two saves of the same expert differ byte-wise, and
    a key made from them would differ between two fresh caches (nothing reused)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
        h.update(f.read())
    return h.hexdigest()


class ExpertFileError(RuntimeError):
    """An expert file is missing, corrupt, or not something semoe can apply."""


def read_safetensors(
    file: Path, device: str, what: str = "expert file", error: type[ExpertFileError] = ExpertFileError
) -> tuple[dict[str, str], dict[str, "torch.Tensor"]]:  # noqa: F821
    """(metadata, tensors) of a safetensors file; an ``error`` "``what`` FILE is corrupt: ..."
    when its header or body is damaged."""

    try:
        with safe_open(str(file), framework="pt", device=device) as f:
            return dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a damaged header/body
        raise error(f"{what} {file} is corrupt: {e}") from None


# A LoRA tensor: optional peft prefix, module path, A or B, an adapter name where the
# tensors come from a live peft model's state_dict (save_pretrained drops it).
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


def _listing(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _lora_pairs(file: Path, tensors: dict[str, "torch.Tensor"]) -> dict[str, tuple["torch.Tensor", "torch.Tensor"]]:  # noqa: F821
    """module path -> (A, B) from the file's tensors; anything else in the file is an error,
    since skipping it would apply a different expert than the one saved (a silent no-op
    when nothing is left)."""
    parts: dict[str, dict[str, object]] = {}
    adapters, other = set(), []
    for key, tensor in tensors.items():
        m = _LORA_KEY.match(key)
        if m is None:
            other.append(key)
            continue
        parts.setdefault(m["module"], {})[m["ab"]] = tensor
        adapters.add(m["adapter"])
    if other:
        raise ExpertFileError(
            f"expert file {file} holds tensors that are not LoRA A/B weights (DoRA, bias, embedding or "
            f"fully trained modules), which semoe cannot apply: {_listing(other)}"
        )
    if not parts:
        raise ExpertFileError(
            f"expert file {file} holds no LoRA weights: expected tensors named "
            f"'{PREFIX}<module>.lora_A.weight' and '{PREFIX}<module>.lora_B.weight'"
        )
    if len(adapters) > 1:
        raise ExpertFileError(
            f"expert file {file} holds several adapters ({_listing(sorted(map(str, adapters)))}); save one"
        )
    for module, ab in parts.items():
        if len(ab) < 2:
            missing = "lora_B" if "A" in ab else "lora_A"
            raise ExpertFileError(f"expert file {file} is corrupt: {PREFIX}{module}.{missing}.weight missing")
    return {module: (ab["A"], ab["B"]) for module, ab in parts.items()}


def _targeted(module: str, targets: object) -> bool:
    """peft's rule (``check_target_module_exists``): a regex must match the whole module
    path, a name its last components; ``all-linear`` is resolved by peft against the model."""
    if isinstance(targets, str):
        return targets == "all-linear" or re.fullmatch(targets, module) is not None
    if isinstance(targets, list):
        return any(module == t or module.endswith(f".{t}") for t in targets)
    return True


def _peft_settings(file: Path, modules: list[str]) -> tuple[int, float, str, dict[str, str]]:
    """(rank, alpha, passage id, meta) of a peft adapter from the ``adapter_config.json`` beside
    ``file``; the passage id is the adapter directory's name."""
    config_path = file.parent / PEFT_CONFIG
    if not config_path.is_file():
        raise ExpertFileError(
            f"expert file {file} has neither semoe's metadata (rank, alpha) nor a peft {PEFT_CONFIG} beside it"
        )
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExpertFileError(f"peft config {config_path} is unreadable: {e}") from None
    if not isinstance(cfg, dict):
        raise ExpertFileError(f"peft config {config_path} is not a JSON object")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ExpertFileError(f"peft config {config_path}: peft_type {cfg['peft_type']!r} is not LORA")
    # Each of these changes ΔW beyond one B @ A · alpha/r per module.
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "layer_replication") if cfg.get(k)]
    if unsupported:
        raise ExpertFileError(
            f"peft config {config_path}: {', '.join(unsupported)} not supported "
            "(semoe applies one rank and one alpha to every module)"
        )
    try:
        rank, lora_alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    except (KeyError, TypeError, ValueError) as e:
        raise ExpertFileError(
            f"peft config {config_path}: field 'r' or 'lora_alpha' missing or not a number ({e})"
        ) from None
    targets = cfg.get("target_modules")
    stray = [m for m in modules if not _targeted(m, targets)]
    if stray:
        raise ExpertFileError(
            f"expert file {file} has modules outside target_modules {targets!r} of {config_path}: {_listing(stray)}"
        )
    # rsLoRA (Kalajdzievski 2023, peft's use_rslora) scales by alpha/sqrt(r), LoraExpert by alpha/rank.
    alpha = lora_alpha * math.sqrt(rank) if cfg.get("use_rslora") else lora_alpha
    meta = {"format": "peft", "peft_config": str(config_path), "target_modules": json.dumps(targets)}
    if cfg.get("base_model_name_or_path"):
        meta["base_model"] = str(cfg["base_model_name_or_path"])
    return rank, alpha, file.parent.name, meta


def load_expert(path: str | Path, device: str = "cpu") -> LoraExpert:
    """One expert from a semoe expert file or a peft LoRA adapter.

    ``path``: a semoe ``.safetensors`` file (rank, alpha, passage id in its metadata), or a
    peft adapter saved with ``save_pretrained``: its directory or its
    ``adapter_model.safetensors``, read with the ``adapter_config.json`` beside it (``r``,
    ``lora_alpha``, ``use_rslora``, ``target_modules``, ``base_model_name_or_path``, which
    goes to ``meta["base_model"]``); a peft adapter's passage id is its directory's name.
    Tensor keys may carry peft's adapter name (``lora_A.default.weight``).

    Raises :class:`ExpertFileError` naming the file when it is missing or unreadable, holds
    no LoRA weights or tensors that are not LoRA A/B weights, A and B do not agree with
    the rank, or the peft config is missing, unreadable or uses what semoe cannot apply
    (DoRA, per-module ranks or alphas). Whether the expert fits a model is checked by
    :func:`semoe.experts.inference.load_experts`.
    """
    path = Path(path)
    file = path / PEFT_WEIGHTS if path.is_dir() else path
    if not file.is_file():
        legacy = path.is_dir() and (path / "adapter_model.bin").is_file()
        raise ExpertFileError(
            f"expert file not found: {file}"
            + (" (adapter_model.bin is not read: save the adapter with safe_serialization=True)" if legacy else "")
        )
    meta, tensors = read_safetensors(file, device)
    weights = _lora_pairs(file, tensors)
    if "rank" in meta:
        try:
            rank, alpha, pid = int(meta.pop("rank")), float(meta.pop("alpha")), meta.pop("passage_id")
        except KeyError as e:
            raise ExpertFileError(f"expert file {file} is corrupt: metadata {e} missing") from None
        except ValueError as e:
            raise ExpertFileError(f"expert file {file} is corrupt: metadata rank/alpha not a number ({e})") from None
    else:
        rank, alpha, pid, meta = _peft_settings(file, list(weights))
    for module, (a, b) in weights.items():
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise ExpertFileError(
                f"expert file {file}: {module} lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} "
                f"do not fit rank {rank} (expected (r, in) and (out, r))"
            )
    return LoraExpert(passage_id=pid, rank=rank, alpha=alpha, weights=weights, meta=meta)
