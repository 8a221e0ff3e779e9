"""The folders' Markdown files as HTML for the report, rendered by markdown-it-py (CommonMark plus GFM tables).

What the report adds to plain CommonMark, as markdown-it core and render rules:

- raw HTML is never passed through (``html=False``: a ``<script>`` in the text or a code block is shown as text);
- an image is embedded only if it names a PNG file inside the Markdown file's folder (symbolic links resolved), as
  a data URI; any other image (remote, outside the folder, missing, not a PNG) becomes a visible note, so the page
  never loads anything and never shows a file from elsewhere;
- links stay links only for ``http(s)://`` targets; a local link (``[data](results.json)``) is reduced to its
  text, since the page travels alone and the file would not be there;
- headings move two levels down (``#`` becomes ``<h3>``) to sit under the page's ``<h2>`` sections;
- tables scroll sideways in a ``<div class="scroll">`` instead of widening the page.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token

from ._report_folders import png_file_uri

HEADING_SHIFT = 2
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)
_WEB = re.compile(r"^https?://", re.I)


def _shift_headings(state: StateCore) -> None:
    for token in state.tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1:]) + HEADING_SHIFT, 6)}"


def _unlink_local(state: StateCore) -> None:
    """Drop the link_open/link_close pair of every link whose target is not http(s), keeping its text."""
    for block in state.tokens:
        if block.type != "inline" or not block.children:
            continue
        kept: list[Token] = []
        dropped: list[bool] = []  # one entry per open link: was its link_open dropped?
        for token in block.children:
            if token.type == "link_open":
                dropped.append(not _WEB.match(str(token.attrGet("href") or "")))
                if dropped[-1]:
                    continue
            elif token.type == "link_close" and dropped.pop():
                continue
            kept.append(token)
        block.children = kept


def _local_png(folder: Path, src: str) -> Path | None:
    """The PNG file inside ``folder`` that ``src`` names, or None (a URL, outside the folder, missing, not .png)."""
    target = unquote(src)
    if _SCHEME.match(target) or not target.lower().endswith(".png"):
        return None
    path = (folder / target).resolve()
    return path if path.is_file() and path.is_relative_to(folder) else None


def _image(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: dict[str, Any]) -> str:
    token = tokens[idx]
    folder: Path = env["folder"]
    src = str(token.attrGet("src") or "")
    path = _local_png(folder, src)
    if path is None:
        what = html.escape(unquote(src))
        return f'<span class="missing">[image {what} not found in {html.escape(folder.name)}]</span>'
    env["embedded"].add(path)
    uri = png_file_uri(path)
    if uri is None:
        return f'<span class="missing">{html.escape(path.name)}: not a readable PNG, left out</span>'
    alt = self.renderInlineAsText(token.children or [], options, env) or path.name
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _table_open(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    return '<div class="scroll">' + str(self.renderToken(tokens, idx, options, env))


def _table_close(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    return str(self.renderToken(tokens, idx, options, env)) + "</div>\n"


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    md.core.ruler.push("relprop_headings", _shift_headings)
    md.core.ruler.push("relprop_links", _unlink_local)
    md.add_render_rule("image", _image)
    md.add_render_rule("table_open", _table_open)
    md.add_render_rule("table_close", _table_close)
    return md


_MD = _parser()


class FolderMarkdown:
    """Renders the Markdown files of one folder and remembers which of its PNGs they embedded."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self.embedded: set[Path] = set()  # resolved paths of the PNGs shown

    def render(self, text: str) -> str:
        """HTML of ``text`` (see the module docstring for what differs from CommonMark)."""
        return _MD.render(text, {"folder": self.folder, "embedded": self.embedded})


def markdown_to_html(text: str, folder: Path) -> str:
    """HTML of Markdown ``text`` (CommonMark and tables, raw HTML escaped); images that name PNG files inside
    ``folder`` are embedded as data URIs, other images become a note, only http(s) links stay links."""
    return FolderMarkdown(Path(folder)).render(text)
