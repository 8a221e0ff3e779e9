"""``relprop report RUN [RUN ...] --out report.html``: one self-contained HTML page from run and study folders."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ._common import wrap


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``relprop report``."""
    parser.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN", help="run folders (relprop train) or results folders"
    )
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="the HTML file to write")
    parser.add_argument("--title", default=None, help="page title (default: the folder names)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="render run folders (relprop train/evaluate) and study folders into one self-contained HTML page",
        description=wrap(
            "Render one or more run folders (relprop train / evaluate) or results folders (relprop study, the "
            "demo's bias/ folder) into ONE HTML file with every image embedded: metrics tables, training "
            "curves, heatmap grids, figures, the folders' Markdown reports and configurations."
        ),
    )
    add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Write the HTML report and print its path."""
    from ..viz.report import render_report

    path = render_report(args.runs, args.out, title=args.title)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0
