"""What each section of the HTML report shows, as plain data for the template (no HTML is built here).

Numbers are formatted here (three decimals, a dash where a value is missing); escaping is the template's job.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from ._report_folders import HEATMAPS, Folder, png_data_uri, png_file_uri
from ._report_markdown import FolderMarkdown

KNOWN_SPLITS = ("test_biased", "test_unbiased", "test_deceiving")
MAX_JSON_CHARS = 100_000
DASH = "—"


def _get(doc: Any, key: str) -> Any:
    return doc.get(key) if isinstance(doc, Mapping) else None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value: Any, digits: int = 3) -> str:
    x = _num(value)
    return DASH if x is None else f"{x:.{digits}f}"


# -- summary ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SummaryRow:
    """One folder in the summary table, and where it lies and which command made it."""

    label: str
    kind: str  # "run" or "results"
    method: str
    data: str
    model: str
    epochs: str
    finished: str  # "yes", "no" or DASH; also the cell's CSS class
    stopped: str  # " (interrupted: ...)" or ""
    path: str
    command: str | None


def _describe_data(data: Any) -> str:
    if not isinstance(data, Mapping):
        return DASH
    parts = [str(data["source"])] if "source" in data else []
    parts += [f"{data[k]} {name}" for k, name in (("n_train", "train"), ("n_test", "test")) if k in data]
    parts += [f"seed {data['seed']}"] if "seed" in data else []
    return ", ".join(parts) or json.dumps(data)[:80]


def summary(folders: Sequence[Folder]) -> list[SummaryRow]:
    rows = []
    for f in folders:
        cfg = f.config
        spec = (f.run or {}).get("model_spec") or (f.metrics or {}).get("model_spec")
        model = DASH
        if isinstance(spec, Mapping):
            model = str(spec.get("name", DASH)) + (f" (width {spec['width']})" if "width" in spec else "")
        epochs = DASH
        if f.metrics is not None:
            planned = cfg.get("epochs")
            epochs = f"{len(f.history)} of {planned}" if planned is not None else str(len(f.history))
        command = (f.run or {}).get("command") or _get(f.results, "command")
        interrupted = _get(f.metrics, "interrupted")
        rows.append(
            SummaryRow(
                label=f.label,
                kind="run" if f.is_run else "results",
                method=str(cfg.get("method", DASH)),
                data=_describe_data((f.run or {}).get("data", _get(f.results, "data"))),
                model=model,
                epochs=epochs,
                finished=DASH if f.metrics is None else ("yes" if f.metrics.get("finished") else "no"),
                stopped=f" (interrupted: {interrupted})" if interrupted else "",
                path=str(f.path),
                command=None if command is None else str(command),
            )
        )
    return rows


# -- metrics ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsTable:
    """Rows of (folder, model, last val accuracy, then accuracy and bg share per split), all formatted."""

    splits: list[str]
    rows: list[list[str]]


def _splits_of(entry: Mapping[str, Any]) -> list[str]:
    return [k for k, v in entry.items() if isinstance(v, Mapping) and ("accuracy" in v or "background_share" in v)]


def _eval_entries(f: Folder) -> list[tuple[str, Mapping[str, Any]]]:
    """(model label, {split: {...}}) pairs of a folder's evaluation.json, or of results.json's ``results``."""
    source: Any = f.evaluation
    if source is None:
        source = _get(f.results, "results")
    if not isinstance(source, Mapping):
        return []
    return [(str(k), v) for k, v in source.items() if isinstance(v, Mapping) and _splits_of(v)]


def metrics(folders: Sequence[Folder]) -> MetricsTable | None:
    """The test-split metrics of every evaluated model and every run; None when there is none."""
    entries = [(f, _eval_entries(f)) for f in folders]
    found = {s for _, es in entries for _, e in es for s in _splits_of(e)}
    splits = [s for s in KNOWN_SPLITS if s in found] + sorted(found - set(KNOWN_SPLITS))
    if not splits:
        splits = list(KNOWN_SPLITS)
    rows = []
    for f, es in entries:
        if not es and not f.is_run:
            continue
        vals = [h.get("val_acc") for h in f.history]
        last_val = _fmt(vals[-1]) if vals else DASH
        for label, entry in es or [(DASH, {})]:
            cells = [f.label, label, last_val]
            for s in splits:
                res: Mapping[str, Any] = entry[s] if isinstance(entry.get(s), Mapping) else {}
                cells += [_fmt(res.get("accuracy")), _fmt(res.get("background_share"))]
            rows.append(cells)
    return MetricsTable(splits, rows) if rows else None


# -- training curves --------------------------------------------------------------------------------------------


def curves_uri(folders: Sequence[Folder]) -> str | None:
    """Data URI of a PNG with loss and accuracy per epoch of every run with a history; None if none has one."""
    runs = [f for f in folders if f.history]
    if not runs:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), dpi=100, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for f, color in zip(runs, colors):
        label = f.label.replace("$", r"\$")  # no mathtext; a leading "_" would hide the legend entry
        label = " " + label if label.startswith("_") else label
        x = [(h["epoch"] + 1 if _num(h.get("epoch")) is not None else i + 1) for i, h in enumerate(f.history)]

        def series(key: str, f: Folder = f) -> list[float]:
            return [v if (v := _num(h.get(key))) is not None else math.nan for h in f.history]

        ax_loss.plot(x, series("train_loss"), "o-", color=color, label=label)
        ax_loss.plot(x, series("val_ce"), "s--", color=color, alpha=0.6)
        ax_acc.plot(x, series("val_acc"), "o-", color=color, label=label)
        ax_acc.plot(x, series("train_acc"), "s:", color=color, alpha=0.6)
    ax_loss.set(title="loss (solid: training loss, dashed: validation CE)", xlabel="epoch")
    ax_acc.set(title="accuracy (solid: validation, dotted: training)", xlabel="epoch", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.title.set_fontsize(10)
    ax_acc.legend(fontsize=8, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return png_data_uri(buf.getvalue())


# -- configurations ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigDoc:
    """One folder's JSON document, pretty-printed (and cut after MAX_JSON_CHARS characters)."""

    label: str
    name: str
    text: str


def configs(folders: Sequence[Folder]) -> list[ConfigDoc]:
    out = []
    for f in folders:
        docs: list[tuple[str, Any]] = []
        if f.run is not None:
            docs.append(("run.json", f.run))
        elif f.metrics is not None:
            docs.append(("metrics.json (config)", {k: f.metrics.get(k) for k in ("config", "model_spec")}))
        if f.results is not None:
            docs.append(("results.json", f.results))
        for name, doc in docs:
            text = json.dumps(doc, indent=2, ensure_ascii=False, default=str)
            if len(text) > MAX_JSON_CHARS:
                text = text[:MAX_JSON_CHARS] + f"\n… (cut; {len(text)} characters in all)"
            out.append(ConfigDoc(f.label, name, text))
    return out


# -- documents and pictures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One Markdown file of a folder, rendered."""

    label: str
    name: str
    html: Markup


@dataclass(frozen=True)
class Picture:
    """A PNG of a folder for a gallery (``uri`` None: not a readable PNG), or, with ``note``, the remark that a
    run has no such file."""

    label: str
    name: str
    uri: str | None = None
    note: bool = False


def documents_and_pictures(folders: Sequence[Folder]) -> tuple[list[Document], list[Picture], list[Picture]]:
    """The folders' Markdown files, their heatmap grids and their other figures; a PNG that a Markdown file shows
    is embedded there only."""
    documents: list[Document] = []
    heatmaps: list[Picture] = []
    figures: list[Picture] = []
    for f in folders:
        md = FolderMarkdown(f.path)
        documents += [Document(f.label, name, Markup(md.render(text))) for name, text in f.markdown.items()]
        for png in f.pngs:
            if png.resolve() not in md.embedded:
                (heatmaps if png.name == HEATMAPS else figures).append(Picture(f.label, png.name, png_file_uri(png)))
        if f.is_run and not (f.path / HEATMAPS).is_file():
            heatmaps.append(Picture(f.label, HEATMAPS, note=True))
    return documents, heatmaps, figures
