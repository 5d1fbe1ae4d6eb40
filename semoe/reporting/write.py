"""A report's files: its plots as PNG and the report in each format, each written atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from semoe.reporting.model import Report
from semoe.reporting.render import to_html, to_markdown
from semoe.storage.atomic import write_atomic
from semoe.storage.results import StoreError

REPORT_FORMATS = ("md", "html")


def default_report_dir(store_path: str | Path, run_id: str) -> Path:
    return Path(store_path).expanduser().parent / "reports" / run_id


def write_report(report: Report, out_dir: str | Path, formats: Sequence[str] = REPORT_FORMATS) -> dict[str, Path]:
    """Write the plots as PNG files and the report in ``formats``; returns kind -> path
    ("md", "html", and each plot's name)."""
    unknown = set(formats) - set(REPORT_FORMATS)
    if unknown:
        raise ValueError(f"unknown report formats {sorted(unknown)}; choose from {', '.join(REPORT_FORMATS)}")
    out = Path(out_dir).expanduser()
    paths: dict[str, Path] = {}
    renderers = {"md": lambda: to_markdown(report), "html": lambda: to_html(report)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for plot in report.plots:
            paths[plot.name] = out / plot.filename
            write_atomic(paths[plot.name], plot.png)
        for fmt in formats:
            paths[fmt] = out / f"report.{fmt}"
            write_atomic(paths[fmt], renderers[fmt]())
    except OSError as e:
        raise StoreError(f"cannot write the report to {out}: {e}") from None
    return paths


@dataclass
class WrittenReport:
    report: Report
    paths: dict[str, Path]

    def artifact_markdown(self) -> str:
        """The report for a Prefect markdown artifact: plots inlined, and where the files are."""
        where = ", ".join(f"`{p}`" for k, p in self.paths.items() if k in REPORT_FORMATS)
        return to_markdown(self.report, inline_images=True) + f"\nReport files: {where}\n"
