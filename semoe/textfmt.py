"""Plain-text tables for the command line: aligned columns, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from typing import Sequence


def format_table(columns: Sequence[str], rows: Sequence[Sequence], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps([dict(zip(columns, r)) for r in rows], indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4f}".rstrip("0").rstrip(".") if v == v else "nan"
        return "" if v is None else str(v)

    text = [[cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in text]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in text])
