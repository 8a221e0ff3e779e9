"""Reading the folders the HTML report shows: run folders (``relprop train``/``evaluate``) and results folders.

Everything here is checked data, no HTML: JSON documents, Markdown text and PNG bytes, with a
:class:`~relprop.errors.ReportError` naming the file at fault when one is unreadable or of the wrong shape.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ReportError

RUN_FILES = ("run.json", "metrics.json")
RESULT_FILES = ("evaluation.json", "results.json", "report.md", "results.md")
MARKDOWN_FILES = ("report.md", "results.md")  # shown first, in this order; other *.md files follow by name
HEATMAPS = "heatmaps.png"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Folder:
    """What the report uses of one run or results folder."""

    path: Path
    label: str = ""
    run: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    results: Any = None  # results.json: any JSON
    markdown: dict[str, str] = field(default_factory=dict)
    pngs: list[Path] = field(default_factory=list)

    @property
    def is_run(self) -> bool:
        return self.run is not None or self.metrics is not None

    @property
    def config(self) -> Mapping[str, Any]:
        for doc in (self.run, self.metrics):
            if doc is not None and isinstance(doc.get("config"), Mapping):
                config: Mapping[str, Any] = doc["config"]
                return config
        return {}

    @property
    def history(self) -> list[Mapping[str, Any]]:
        return list(self.metrics.get("history", [])) if self.metrics else []


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} is not readable JSON: {exc}") from exc


def _read_object(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ReportError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def load_folder(path: Path) -> Folder:
    """Read one folder; raises :class:`ReportError` if it is not a run or results folder or a file is corrupt."""
    expected = ", ".join(RUN_FILES + RESULT_FILES)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise ReportError(f"{path} {what}: expected a run folder (from `relprop train`) or a results folder")
    if not any((path / name).is_file() for name in RUN_FILES + RESULT_FILES):
        raise ReportError(f"{path} is neither a run folder nor a results folder: it holds none of {expected}")
    folder = Folder(path)
    folder.run = _read_object(path / "run.json")
    folder.metrics = _read_object(path / "metrics.json")
    folder.evaluation = _read_object(path / "evaluation.json")
    folder.results = _read_json(path / "results.json") if (path / "results.json").is_file() else None
    if folder.metrics is not None:
        history = folder.metrics.get("history", [])
        if not isinstance(history, list) or not all(isinstance(h, Mapping) for h in history):
            raise ReportError(f"{path / 'metrics.json'}: 'history' must be a list of per-epoch objects")
    if folder.evaluation is not None and not all(isinstance(v, Mapping) for v in folder.evaluation.values()):
        raise ReportError(f"{path / 'evaluation.json'}: expected {{label: {{split: {{accuracy, ...}}}}}}")
    others = sorted(p.name for p in path.glob("*.md") if p.name not in MARKDOWN_FILES)
    for name in (*MARKDOWN_FILES, *others):
        md = path / name
        if md.is_file():
            try:
                folder.markdown[name] = md.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ReportError(f"{md} is not readable UTF-8 text: {exc}") from exc
    folder.pngs = sorted(p for p in path.glob("*.png") if p.is_file())
    return folder


def folder_labels(paths: Sequence[Path]) -> list[str]:
    """Folder names, with the parent's name where names repeat and a counter where that still repeats."""
    names = [p.resolve().name or str(p) for p in paths]
    labels = [n if names.count(n) == 1 else f"{p.resolve().parent.name}/{n}" for p, n in zip(paths, names)]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def png_data_uri(data: bytes) -> str:
    """``data:image/png;base64,...`` of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def png_file_uri(path: Path) -> str | None:
    """The data URI of the PNG file ``path``, or None when it is unreadable or not a PNG."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return png_data_uri(data) if data.startswith(_PNG_MAGIC) else None
