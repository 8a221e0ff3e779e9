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


def _sections(parser: argparse.ArgumentParser, prog: str) -> list[str]:
    """The help of ``prog`` and, recursively, of its sub-commands (``relprop study isnet``, ...)."""
    parts = [f"## {prog}" if prog.count(" ") < 2 else f"### {prog}", "", "```text", _help(parser), "```", ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts += _sections(sub, f"{prog} {name}")
    return parts


def cli_help_markdown() -> str:
    """The help of ``relprop`` and of every command, as Markdown sections with code blocks."""
    os.environ["COLUMNS"] = "88"  # argparse wraps at the terminal width: the same text everywhere, fits the page
    from relprop.cli import build_parser

    return "\n".join(_sections(build_parser(), "relprop"))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_help_markdown())
    return markdown
