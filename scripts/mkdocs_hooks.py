"""MkDocs hooks for the documentation site (mkdocs.yml loads this file).

``<!-- relprop-cli-help -->`` in a page becomes the ``--help`` text of ``relprop`` and of each of its commands,
taken from the parser itself (relprop.cli.build_parser), so the page cannot drift from the command line.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

MARKER = "<!-- relprop-cli-help -->"


def _help(parser: argparse.ArgumentParser) -> str:
    return parser.format_help().rstrip()


def cli_help_markdown() -> str:
    """The help of ``relprop`` and of every command, as Markdown sections with code blocks."""
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal width: the same text everywhere
    from relprop.cli import build_parser

    parser = build_parser()
    parts = ["## relprop", "", "```text", _help(parser), "```", ""]
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subparsers:
        for name, sub in action.choices.items():
            parts += [f"## relprop {name}", "", "```text", _help(sub), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_help_markdown())
    return markdown
