"""Build the tiny random Open-RAG model of the CPU demo (configs/openrag-cpu-demo.yaml): ~92K
parameters, a byte-level tokenizer carrying the reflection tokens, saved in the released
checkpoint's layout (``tests.support.openrag.make_tiny_openrag``). Nothing is downloaded.

    python scripts/make_tiny_openrag.py results/tiny-openrag [--seed 0] [--context 1024]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's semoe and tests.support

from tests.support.openrag import make_tiny_openrag  # noqa: E402

# Open-RAG's prompt and two passages take ~400 tokens of the byte-level tokenizer.
DEMO_CONTEXT = 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="directory to write (created)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--context", type=int, default=DEMO_CONTEXT, help="max_position_embeddings (tokens)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(make_tiny_openrag(args.out, args.seed, max_position_embeddings=args.context))


if __name__ == "__main__":
    main()
