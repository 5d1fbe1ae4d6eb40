"""A report as Markdown (images as files or data URIs) and as one self-contained HTML page."""

from __future__ import annotations

import html

from semoe.reporting.model import LABELS, Plot, Report, Table

# Plots larger than this are linked by path instead of inlined into the Prefect artifact.
ARTIFACT_IMAGE_MAX_BYTES = 256_000


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    lines = [f"_{table.caption}_", ""] if table.caption else []
    lines.append("| " + " | ".join(LABELS.get(c, c) for c in table.columns) + " |")
    lines.append("|" + "---|" * len(table.columns))
    lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.cells())
    if table.notes:
        lines.append("")
        lines.extend(f"[{i}] {note}  " for i, note in enumerate(table.notes, 1))
    return lines + [""]


def _md_image(plot: Plot, inline: bool) -> list[str]:
    inline = inline and len(plot.png) <= ARTIFACT_IMAGE_MAX_BYTES
    return [f"![{plot.title}]({plot.data_uri() if inline else plot.filename})", ""]


def to_markdown(report: Report, inline_images: bool = False) -> str:
    """Markdown with images linked as files next to it, or inlined as data URIs (for Prefect
    artifacts, which hold text only; plots over ARTIFACT_IMAGE_MAX_BYTES stay file names)."""
    lines = [f"# {report.title}", ""]
    lines.extend(f"- **{k}**: {v}" for k, v in report.facts)
    lines.append("")
    for section in report.sections:
        lines.extend([f"## {section.title}", ""])
        if section.note:
            lines.extend([section.note, ""])
        if section.plot is not None:
            lines.extend(_md_image(section.plot, inline_images))
        for table in section.tables:
            lines.extend(_md_table(table))
        for figure in section.figures:
            lines.extend(_md_image(figure, inline_images))
    return "\n".join(lines).rstrip() + "\n"


HTML_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}
caption{caption-side:top;text-align:left;font-style:italic;padding:.3em 0}
img{max-width:100%}.note{color:#666}"""


def to_html(report: Report) -> str:
    """One self-contained page: tables as HTML, plots as inline PNG data URIs."""

    def e(text: str) -> str:  # escaped, without the markdown code quotes
        return html.escape(text.replace("`", ""))

    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(report.title)}</title>',
        f"<style>{HTML_STYLE}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
        "<ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in report.facts) + "</ul>",
    ]
    for section in report.sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        if section.note:
            parts.append(f'<p class="note">{e(section.note)}</p>')
        if section.plot is not None:
            parts.append(f'<img alt="{e(section.plot.title)}" src="{section.plot.data_uri()}">')
        for table in section.tables:
            head = "".join(f"<th>{e(LABELS.get(c, c))}</th>" for c in table.columns)
            rows = ("".join(f"<td>{html.escape(c)}</td>" for c in row) for row in table.cells())
            body = "".join(f"<tr>{r}</tr>" for r in rows)
            caption = f"<caption>{e(table.caption)}</caption>" if table.caption else ""
            parts.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            parts.extend(f'<p class="note">[{i}] {e(note)}</p>' for i, note in enumerate(table.notes, 1))
        for figure in section.figures:
            parts.append(f'<figure><img alt="{e(figure.title)}" src="{figure.data_uri()}">')
            parts.append(f"<figcaption>{e(figure.title)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
