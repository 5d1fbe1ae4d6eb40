"""Converting the embedded GGUF model (SmolLM2-135M-Instruct, Q4_1) to safetensors: what a cold
``semoe run`` pays once per cache root, before its first answer.

* ``transformers``: transformers' own GGUF loading alone: the file parsed three times
  (tokenizer, config, weights) and gguf's tensor-name map built per submodule, the model
  rebuilt for saving with the random initialisation its weights then overwrite;
* ``one parse``: semoe's conversion (``semoe.models.loading._convert_gguf``): the same
  loading with the reader (over a plain array view of its memory map) and the name map
  memoised (``_one_gguf_parse``), the rebuild without that initialisation (``no_init_weights``).

Both write the converted directory; the script fails unless the two are byte-identical.
Timing (``_common``): process CPU time beside wall time, 1 torch thread (the conversion is
single-threaded Python), a warm-up of each side, then ``--repeats`` interleaved rounds.

    python benchmarks/bench_model_convert.py --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import shutil
import tempfile
from pathlib import Path
from unittest import mock

from _common import add_timing_args, apply_threads, compare, print_table

from semoe.models import loading


def convert(gguf_file: Path, out: Path, memoised: bool) -> dict[str, bytes]:
    shutil.rmtree(out, ignore_errors=True)
    initialization = importlib.import_module("transformers.initialization")
    if memoised:
        loading._convert_gguf(gguf_file, out)
    else:
        with (
            mock.patch.object(loading, "_one_gguf_parse", contextlib.nullcontext),
            mock.patch.object(initialization, "no_init_weights", contextlib.nullcontext),
        ):
            loading._convert_gguf(gguf_file, out)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", choices=sorted(loading.EMBEDDED_MODELS))
    add_timing_args(ap)
    args = ap.parse_args()
    threads = apply_threads(args.threads)
    gguf_file = loading._embedded_gguf_path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "transformers": lambda: convert(gguf_file, Path(tmp) / "plain", memoised=False),
            "one parse": lambda: convert(gguf_file, Path(tmp) / "memoised", memoised=True),
        }
        timings, results = compare(variants, args.repeats)
    if results["transformers"] != results["one parse"]:
        raise SystemExit("the converted files differ between the two ways")
    size = sum(len(b) for b in results["one parse"].values()) / 2**20
    print_table(
        f"convert {gguf_file.name} ({gguf_file.stat().st_size / 2**20:.0f} MiB) to {size:.0f} MiB of safetensors "
        f"+ tokenizer, {threads} torch thread(s); files byte-identical",
        timings,
        "transformers",
        speedup=True,
    )


if __name__ == "__main__":
    main()
