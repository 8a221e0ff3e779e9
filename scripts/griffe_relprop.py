"""Griffe extension for the documentation site (mkdocs.yml loads it): relprop's docstrings use a few Sphinx
conventions that Markdown does not know; this turns them into what mkdocstrings renders.

- ``#:`` comments above (or after) a module or class attribute become that attribute's docstring.
- Cross-reference roles (``:class:`~relprop.errors.UsageError```, ``:func:`.heatmap_loss```, ``:mod:`.loss```)
  become links to the API page that documents the target (optional links: a target the site does not render is
  shown as code, with no warning).
- A paragraph ending in ``::`` before an indented block ends in ``:`` (the block is a code block either way).
- reST simple tables (rows between ``=====  =====`` borders) become Markdown tables.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(?P<body>[^`]+)`")
_EXPLICIT = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$")
_LITERAL_INTRO = re.compile(r"::(?=\n\s*\n[ \t]+\S)")


_BORDER = re.compile(r"^(?P<indent>\s*)=+(?:\s+=+)+\s*$")
_CELL = re.compile(r"\S+(?: \S+)*")  # text up to a run of two spaces


def _table_row(line: str, starts: list[int]) -> list[str]:
    """The cells of one table row: each run of text goes to the last column starting at or before it."""
    cells = [""] * len(starts)
    for match in _CELL.finditer(line):
        column = max(i for i, start in enumerate(starts) if start <= match.start()) if match.start() >= starts[0] else 0
        cells[column] = f"{cells[column]} {match.group()}".strip()
    return [cell.replace("|", "\\|") for cell in cells]


def _rest_tables(text: str) -> str:
    """Turn reST simple tables (border, header, border, rows, border) into Markdown pipe tables."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        border = _BORDER.match(lines[i])
        closing = [j for j in range(i + 2, len(lines)) if lines[j].strip() == lines[i].strip()] if border else []
        if not border or len(closing) < 2 or closing[0] != i + 2:
            out.append(lines[i])
            i += 1
            continue
        starts = [m.start() for m in re.finditer(r"=+", lines[i])]
        header = _table_row(lines[i + 1], starts)
        end = closing[1]
        rows = [_table_row(line, starts) for line in lines[i + 3 : end] if line.strip()]
        indent = border["indent"]
        out.append(indent + "| " + " | ".join(header) + " |")
        out.append(indent + "|" + "---|" * len(starts))
        out.extend(indent + "| " + " | ".join(row) + " |" for row in rows)
        i = end + 1
    return "\n".join(out)


def _scopes(obj: griffe.Object) -> list[griffe.Object]:
    """obj and its parents, innermost first (where a bare name is looked up, as Sphinx does)."""
    scopes: list[griffe.Object] = []
    current: griffe.Object | None = obj
    while current is not None:
        scopes.append(current)
        current = current.parent
    return scopes


def _has_member(scope: griffe.Object, dotted: str) -> bool:
    head = dotted.split(".")[0]
    try:
        return head in scope.members
    except Exception:  # an alias that cannot be resolved
        return False


def _identifier(obj: griffe.Object, target: str) -> str:
    """The full dotted path a role's target names, seen from the docstring's object."""
    if target.startswith("."):  # relative to the current module (a package's __init__ is the package)
        name = target.lstrip(".")
        module = obj if obj.is_module else obj.module
        for scope in _scopes(obj):
            if _has_member(scope, name):
                return f"{scope.path}.{name}"
        return f"{module.path}.{name}"
    if target.startswith("relprop"):
        return target
    for scope in _scopes(obj):
        if _has_member(scope, target):
            return f"{scope.path}.{target}"
    return target


def _replace_roles(obj: griffe.Object, text: str) -> str:
    def link(match: re.Match[str]) -> str:
        body = match["body"].strip()
        explicit = _EXPLICIT.match(body)
        if explicit:
            title, target = explicit["title"], explicit["target"]
        else:
            target = body
            shown = body.lstrip("~")
            title = shown.rsplit(".", 1)[-1] if body.startswith("~") else shown.lstrip(".")
        identifier = _identifier(obj, target.lstrip("~"))
        return f'<autoref identifier="{escape(identifier)}" optional><code>{escape(title)}</code></autoref>'

    return _ROLE.sub(link, text)


def _comment_docstring(attr: griffe.Attribute) -> str | None:
    """The ``#:`` comment lines just above the attribute, or a ``#:`` comment at the end of its line."""
    if attr.lineno is None or attr.filepath is None or isinstance(attr.filepath, list):
        return None
    try:
        lines = attr.lines_collection[attr.filepath]
    except KeyError:
        return None
    first = lines[attr.lineno - 1] if attr.lineno <= len(lines) else ""
    trailing = re.search(r"#:\s?(.*)$", first)
    if trailing:
        return trailing.group(1).strip()
    collected: list[str] = []
    index = attr.lineno - 2
    while index >= 0:
        stripped = lines[index].strip()
        if not stripped.startswith("#:"):
            break
        collected.append(stripped[2:].removeprefix(" "))
        index -= 1
    return "\n".join(reversed(collected)) if collected else None


class RelpropDocstrings(griffe.Extension):
    """Sphinx-isms in relprop's docstrings rendered for mkdocstrings (see the module docstring)."""

    def on_attribute_instance(self, *, node: Any, attr: griffe.Attribute, agent: Any, **kwargs: Any) -> None:
        if attr.docstring is None:
            text = _comment_docstring(attr)
            if text:
                attr.docstring = griffe.Docstring(text, lineno=attr.lineno, endlineno=attr.lineno, parent=attr)

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                text = _replace_roles(obj, obj.docstring.value)
                obj.docstring.value = _rest_tables(_LITERAL_INTRO.sub(":", text))
            for member in obj.members.values():
                if not member.is_alias:
                    stack.append(member)  # type: ignore[arg-type]
