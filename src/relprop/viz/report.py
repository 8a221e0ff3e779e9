"""One self-contained HTML page from training runs and results folders (``relprop report``).

A *run folder* is what ``relprop train`` writes (``run.json``, ``metrics.json``, ``last.ckpt``) plus,
after ``relprop evaluate``, ``evaluation.json`` and ``heatmaps.png``. A *results folder* holds
``results.json``, ``evaluation.json``, ``report.md``/``results.md`` and PNG figures (a study's or
``relprop evaluate --out``'s output). :func:`render_report` writes one HTML file with every image
embedded as a base64 data URI: a summary, a metrics table, training curves, heatmap grids, other
figures, the folders' Markdown files and the configurations. The page needs no network and no other file.

The parts: ``_report_folders`` reads and checks the folders; ``_report_sections`` turns them into plain
data per section (and draws the training curves); ``_report_markdown`` renders Markdown with markdown-it-py
(raw HTML escaped, only the folder's own PNGs embedded); the autoescaped jinja2 template
``templates/report.html.j2`` (with ``report.css`` and ``report.js``) lays out the page.

A short inline script records on page load whether every image decoded and how many rows each table
shows (``<body data-images-ok data-images data-table-rows>``), for headless-browser checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import jinja2

from .._io import atomic_write_text
from ..errors import ReportError
from ._report_folders import folder_labels, load_folder
from ._report_markdown import markdown_to_html
from ._report_sections import DASH, configs, curves_uri, documents_and_pictures, metrics, summary


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("relprop.viz", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2")


def render_report(runs: Sequence[Path], out: Path, *, title: str | None = None) -> Path:
    """Write one self-contained HTML report of ``runs`` (run or results folders) to ``out`` (a .html file,
    written atomically); returns ``out``. Raises :class:`ReportError` naming the folder or file at fault."""
    paths = [Path(p) for p in runs]
    out = Path(out)
    if not paths:
        raise ReportError("no folders given: pass one or more run or results folders")
    if out.suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"{out}: the report is one HTML file; give a path ending in .html")
    if out.is_dir():
        raise ReportError(f"{out} is a folder; give the path of the .html file to write")
    folders = [load_folder(p) for p in paths]
    for f, label in zip(folders, folder_labels(paths)):
        f.label = label
    title = title or ("relprop report: " + ", ".join(f.label for f in folders))

    documents, heatmaps, figures = documents_and_pictures(folders)
    table = metrics(folders)
    sections = [
        (key, name)
        for key, name, shown in [
            ("summary", "Summary", True),
            ("metrics", "Metrics", table is not None),
            ("curves", "Training curves", any(f.is_run for f in folders)),
            ("heatmaps", "Heatmaps", bool(heatmaps)),
            ("figures", "Figures", bool(figures)),
            ("documents", "Documents", bool(documents)),
            ("configs", "Configurations", True),
        ]
        if shown
    ]
    from .. import __version__

    page = _template().render(
        title=title,
        stamp=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
        dash=DASH,
        sections=sections,
        summary=summary(folders),
        metrics=table,
        curves=curves_uri(folders),
        heatmaps=heatmaps,
        figures=figures,
        documents=documents,
        configs=configs(folders),
    )
    atomic_write_text(out, page)
    return out


__all__ = ["ReportError", "markdown_to_html", "render_report"]
