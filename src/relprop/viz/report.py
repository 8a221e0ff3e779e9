"""One self-contained HTML page from training runs and results folders (``relprop report``).

A *run folder* is what ``relprop train`` writes (``run.json``, ``metrics.json``, ``last.ckpt``) plus,
after ``relprop evaluate``, ``evaluation.json`` and ``heatmaps.png``. A *results folder* holds
``results.json``, ``evaluation.json``, ``report.md``/``results.md`` and PNG figures (a study's or
``relprop evaluate --out``'s output). :func:`render_report` writes one HTML file with every image
embedded as a base64 data URI: a summary, a metrics table, training curves, heatmap grids, other
figures, the folders' markdown files (a small subset: headings, paragraphs, lists, tables, code, images)
and the configurations. The page needs no network and no other file.

A short inline script records on page load whether every image decoded and how many rows each table
shows (``<body data-images-ok data-images data-table-rows>``), for headless-browser checks.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from ..errors import ReportError

RUN_FILES = ("run.json", "metrics.json")
RESULT_FILES = ("evaluation.json", "results.json", "report.md", "results.md")
MARKDOWN_FILES = ("report.md", "results.md")
HEATMAPS = "heatmaps.png"
KNOWN_SPLITS = ("test_biased", "test_unbiased", "test_deceiving")
MAX_JSON_CHARS = 100_000
DASH = "—"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class _Folder:
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
                return doc["config"]
        return {}

    @property
    def history(self) -> list[Mapping[str, Any]]:
        return list(self.metrics.get("history", [])) if self.metrics else []


# -- reading folders ---------------------------------------------------------------------------------------------


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


def _load_folder(path: Path) -> _Folder:
    expected = ", ".join(RUN_FILES + RESULT_FILES)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise ReportError(f"{path} {what}: expected a run folder (from `relprop train`) or a results folder")
    if not any((path / name).is_file() for name in RUN_FILES + RESULT_FILES):
        raise ReportError(f"{path} is neither a run folder nor a results folder: it holds none of {expected}")
    folder = _Folder(path)
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


def _labels(paths: Sequence[Path]) -> list[str]:
    """Folder names, with the parent's name where names repeat and a counter where that still repeats."""
    names = [p.resolve().name or str(p) for p in paths]
    labels = [n if names.count(n) == 1 else f"{p.resolve().parent.name}/{n}" for p, n in zip(paths, names)]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


# -- small HTML helpers -------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _get(doc: Any, key: str) -> Any:
    return doc.get(key) if isinstance(doc, Mapping) else None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value: Any, digits: int = 3) -> str:
    x = _num(value)
    return DASH if x is None else f"{x:.{digits}f}"


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _png_bytes(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(_PNG_MAGIC) else None


def _img(path: Path, alt: str) -> str:
    data = _png_bytes(path)
    if data is None:
        return f'<p class="missing">{_e(path.name)}: not a readable PNG, left out</p>'
    return f'<img src="{_data_uri(data)}" alt="{_e(alt)}">'


def _figure(path: Path, caption: str) -> str:
    return f"<figure>{_img(path, caption)}<figcaption>{_e(caption)}</figcaption></figure>"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], head_html: str | None = None) -> str:
    """A table; ``rows`` are cells already HTML-escaped, ``head`` plain text (or ``head_html`` as is)."""
    thead = head_html or "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead>{thead}</thead><tbody>{body}</tbody></table></div>'


# -- markdown ---------------------------------------------------------------------------------------------------

_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?![\s*])(.+?)(?<![\s*])\*(?![\w*])")


class _Markdown:
    """A tiny markdown-to-HTML converter for the reports relprop writes; images must be PNGs in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self.embedded: set[str] = set()

    def _local_png(self, target: str) -> Path | None:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or not target.lower().endswith(".png"):
            return None
        path = (self.folder / target).resolve()
        return path if path.is_file() and path.is_relative_to(self.folder) else None

    def _image(self, m: re.Match[str]) -> str:
        alt, target = html.unescape(m.group(1)), html.unescape(m.group(2))
        path = self._local_png(target)
        if path is None:
            return f'<span class="missing">[image {_e(target)} not found in {_e(self.folder.name)}]</span>'
        self.embedded.add(path.name)
        return _img(path, alt or path.name)

    @staticmethod
    def _link(m: re.Match[str]) -> str:
        text, target = m.group(1), html.unescape(m.group(2))
        if re.match(r"^https?://", target):
            return f'<a href="{_e(target)}">{text}</a>'
        return text

    def inline(self, text: str) -> str:
        """HTML of one line: code spans, images, links, bold and italic; everything else escaped."""
        kept: list[str] = []  # finished HTML (code, images, links), kept out of the bold/italic patterns

        def keep(html_: str) -> str:
            kept.append(html_)
            return f"\0{len(kept) - 1}\0"

        s = re.sub(r"`([^`]*)`", lambda m: keep(f"<code>{_e(m.group(1))}</code>"), text.replace("\0", ""))
        s = _e(s)
        s = _IMAGE.sub(lambda m: keep(self._image(m)), s)
        s = _LINK.sub(lambda m: keep(self._link(m)), s)
        s = _ITALIC.sub(r"<em>\1</em>", _BOLD.sub(r"<strong>\1</strong>", s))
        return re.sub("\0(\\d+)\0", lambda m: kept[int(m.group(1))], s)

    @staticmethod
    def _cells(line: str) -> list[str]:
        s = line.strip()
        s = s[1:] if s.startswith("|") else s
        s = s[:-1] if s.endswith("|") and not s.endswith("\\|") else s
        return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s)]

    def convert(self, text: str, shift: int = 2) -> str:
        """HTML of ``text``; headings move down ``shift`` levels (``#`` becomes ``<h3>``)."""
        lines = text.splitlines()
        out: list[str] = []
        para: list[str] = []

        def flush() -> None:
            if para:
                out.append(f"<p>{self.inline(' '.join(para))}</p>")
                para.clear()

        i = 0
        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            if stripped.startswith("```"):
                flush()
                j = i + 1
                while j < len(lines) and not lines[j].strip().startswith("```"):
                    j += 1
                out.append(f"<pre>{_e(chr(10).join(lines[i + 1 : j]))}</pre>")
                i = j + 1
            elif not stripped:
                flush()
                i += 1
            elif re.fullmatch(r"(-{3,}|\*{3,}|_{3,})", stripped):
                flush()
                out.append("<hr>")
                i += 1
            elif m := re.match(r"^(#{1,6})\s+(.*?)\s*#*$", stripped):
                flush()
                level = min(len(m.group(1)) + shift, 6)
                out.append(f"<h{level}>{self.inline(m.group(2))}</h{level}>")
                i += 1
            elif stripped.startswith("|") and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1]):
                flush()
                head = self._cells(stripped)
                rows = []
                j = i + 2
                while j < len(lines) and lines[j].strip().startswith("|"):
                    cells = self._cells(lines[j])
                    rows.append([self.inline(c) for c in (cells + [""] * len(head))[: max(len(head), len(cells))]])
                    j += 1
                head_html = "<tr>" + "".join(f"<th>{self.inline(h)}</th>" for h in head) + "</tr>"
                out.append(_table(head, rows, head_html))
                i = j
            elif m := re.match(r"^([-*+]|\d+[.)])\s+", stripped):
                flush()
                tag = "ol" if m.group(1)[0].isdigit() else "ul"
                items = []
                while i < len(lines) and (m := re.match(r"^\s*([-*+]|\d+[.)])\s+(.*)$", lines[i])):
                    item = [m.group(2)]
                    i += 1
                    while i < len(lines) and lines[i].startswith((" ", "\t")) and lines[i].strip():
                        if re.match(r"^\s*([-*+]|\d+[.)])\s+", lines[i]):
                            break
                        item.append(lines[i].strip())
                        i += 1
                    items.append(f"<li>{self.inline(' '.join(item))}</li>")
                out.append(f"<{tag}>{''.join(items)}</{tag}>")
            else:
                para.append(stripped)
                i += 1
        flush()
        return "\n".join(out)


def markdown_to_html(text: str, folder: Path) -> str:
    """HTML of simple markdown ``text`` (headings, paragraphs, lists, ``| a | b |`` tables, code, images);
    images that name PNG files inside ``folder`` are embedded, other images become a note."""
    return _Markdown(folder).convert(text)


# -- sections ---------------------------------------------------------------------------------------------------


def _describe_data(data: Any) -> str:
    if not isinstance(data, Mapping):
        return DASH
    parts = [str(data["source"])] if "source" in data else []
    parts += [f"{data[k]} {name}" for k, name in (("n_train", "train"), ("n_test", "test")) if k in data]
    parts += [f"seed {data['seed']}"] if "seed" in data else []
    return ", ".join(parts) or json.dumps(data)[:80]


def _summary(folders: Sequence[_Folder]) -> str:
    rows, paths = [], []
    for f in folders:
        cfg = f.config
        data = (f.run or {}).get("data", _get(f.results, "data"))
        spec = (f.run or {}).get("model_spec") or (f.metrics or {}).get("model_spec")
        model = DASH
        if isinstance(spec, Mapping):
            model = str(spec.get("name", DASH)) + (f" (width {spec['width']})" if "width" in spec else "")
        epochs = DASH
        if f.metrics is not None:
            planned = cfg.get("epochs")
            epochs = f"{len(f.history)} of {planned}" if planned is not None else str(len(f.history))
        finished = DASH if f.metrics is None else ("yes" if f.metrics.get("finished") else "no")
        stopped = f" (interrupted: {f.metrics['interrupted']})" if f.metrics and f.metrics.get("interrupted") else ""
        command = (f.run or {}).get("command") or _get(f.results, "command")
        rows.append([
            _e(f.label), "run" if f.is_run else "results", _e(cfg.get("method", DASH)), _e(_describe_data(data)),
            _e(model), _e(epochs), f'<span class="{finished}">{_e(finished + stopped)}</span>',
        ])  # fmt: skip
        where = f"<li><strong>{_e(f.label)}</strong>: <code>{_e(f.path)}</code>"
        paths.append(where + (f"; made by <code>{_e(command)}</code></li>" if command else "</li>"))
    head = ("folder", "kind", "method", "data", "model", "epochs", "finished")
    return _table(head, rows) + f'<ul class="paths">{"".join(paths)}</ul>'


def _eval_entries(f: _Folder) -> list[tuple[str, Mapping[str, Any]]]:
    """(model label, {split: {...}}) pairs of a folder's evaluation.json, or of results.json's ``results``."""
    source: Any = f.evaluation
    if source is None:
        source = _get(f.results, "results")
    if not isinstance(source, Mapping):
        return []
    return [(str(k), v) for k, v in source.items() if isinstance(v, Mapping) and _splits_of(v)]


def _splits_of(entry: Mapping[str, Any]) -> list[str]:
    return [k for k, v in entry.items() if isinstance(v, Mapping) and ("accuracy" in v or "background_share" in v)]


def _metrics(folders: Sequence[_Folder]) -> str:
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
            cells = [_e(f.label), _e(label), last_val]
            for s in splits:
                res = entry.get(s) if isinstance(entry.get(s), Mapping) else {}
                cells += [_fmt(res.get("accuracy")), _fmt(res.get("background_share"))]
            rows.append(cells)
    if not rows:
        return ""
    head_html = (
        '<tr><th rowspan="2">folder</th><th rowspan="2">model</th><th rowspan="2">val accuracy<br>(last epoch)</th>'
        + "".join(f'<th colspan="2">{_e(s.removeprefix("test_"))}</th>' for s in splits)
        + "</tr><tr>"
        + "<th>accuracy</th><th>bg share</th>" * len(splits)
        + "</tr>"
    )
    note = (
        '<p class="note">Test splits from <code>evaluation.json</code> (or <code>results.json</code>); '
        "bg share: share of absolute LRP relevance outside the object mask (lower is better). "
        f"{DASH}: not available (run <code>relprop evaluate RUN</code>).</p>"
    )
    return _table([], rows, head_html) + note


def _curves_png(folders: Sequence[_Folder]) -> bytes | None:
    runs = [f for f in folders if f.history]
    if not runs:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), dpi=100, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for f, color in zip(runs, colors):
        label = f.label.replace("$", r"\$")
        label = " " + label if label.startswith("_") else label
        x = [(h["epoch"] + 1 if _num(h.get("epoch")) is not None else i + 1) for i, h in enumerate(f.history)]

        def series(key: str, f: _Folder = f) -> list[float]:
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
    return buf.getvalue()


def _curves(folders: Sequence[_Folder]) -> str:
    if not any(f.is_run for f in folders):
        return ""
    png = _curves_png(folders)
    if png is None:
        return '<p class="note">No training history (no run folder with metrics.json).</p>'
    img = f'<img src="{_data_uri(png)}" alt="training curves">'
    return f"<figure>{img}<figcaption>per epoch, from metrics.json</figcaption></figure>"


def _configs(folders: Sequence[_Folder]) -> str:
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
            out.append(f"<details><summary>{_e(f.label)}: {_e(name)}</summary><pre>{_e(text)}</pre></details>")
    return "\n".join(out) or '<p class="note">No configurations.</p>'


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;background:#fff;
 max-width:1120px;margin:0 auto;padding:1.2em 1.6em 3em}
h1{font-size:1.7em;margin:.2em 0}h2{border-bottom:2px solid #d8dee8;padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.4em}nav a{margin-right:1em}.meta,.note,figcaption{color:#5a6472;font-size:.9em}
.scroll{overflow-x:auto;margin:.6em 0}table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #d8dee8;padding:.3em .6em;text-align:left;vertical-align:top}
thead th{background:#eef2f7}tbody tr:nth-child(even){background:#f8fafc}
td{font-variant-numeric:tabular-nums}
code{overflow-wrap:anywhere;font-size:.9em;background:#f1f3f6;padding:0 .2em;border-radius:3px}
pre{background:#f6f8fa;border:1px solid #e1e5eb;padding:.7em;overflow:auto;max-height:28em;font-size:.85em}
img{max-width:100%;height:auto}figure{margin:1em 0}
details{margin:.4em 0}summary{cursor:pointer;font-weight:600}
.yes{color:#17803d;font-weight:600}.no{color:#b3261e;font-weight:600}.missing{color:#b3261e}
.gallery{display:flex;flex-wrap:wrap;gap:0 1.5em;align-items:flex-start}
.gallery>figure{flex:0 1 auto;max-width:100%;margin:.5em 0}.gallery>p{flex-basis:100%}
.paths{font-size:.9em;padding-left:1.2em}.doc h3{font-size:1.3em}.doc h4{font-size:1.15em}.doc h5,.doc h6{font-size:1em}
.doc{border-left:3px solid #d8dee8;padding-left:1em}
"""

# Records on load whether every image decoded and how many visible body rows each table has.
_CHECK_JS = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var rows = Array.prototype.map.call(document.querySelectorAll("table"), function (t) {
    return Array.prototype.filter.call(t.querySelectorAll("tbody tr"), function (r) {
      return r.getBoundingClientRect().height > 0;
    }).length;
  });
  var b = document.body.dataset;
  b.images = String(imgs.length);
  b.imagesOk = String(broken.length === 0);
  b.brokenImages = broken.map(function (i) { return i.alt; }).join("|");
  b.tables = String(rows.length);
  b.tableRows = rows.join(",");
});
"""


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
    folders = [_load_folder(p) for p in paths]
    for f, label in zip(folders, _labels(paths)):
        f.label = label
    title = title or ("relprop report: " + ", ".join(f.label for f in folders))

    docs, heatmaps, figures = [], [], []
    for f in folders:
        md = _Markdown(f.path)
        for name, text in f.markdown.items():
            docs.append(f'<h3>{_e(f.label)}: {_e(name)}</h3><div class="doc">{md.convert(text)}</div>')
        for png in f.pngs:
            if png.name in md.embedded:
                continue
            target = heatmaps if png.name == HEATMAPS else figures
            target.append(_figure(png, f"{f.label}: {png.name}"))
        if f.is_run and not (f.path / HEATMAPS).is_file():
            heatmaps.append(f'<p class="note">{_e(f.label)}: no {HEATMAPS} (run <code>relprop evaluate</code>).</p>')

    from .. import __version__

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        ("summary", "Summary", _summary(folders)),
        ("metrics", "Metrics", _metrics(folders)),
        ("curves", "Training curves", _curves(folders)),
        ("heatmaps", "Heatmaps", f'<div class="gallery">{"".join(heatmaps)}</div>' if heatmaps else ""),
        ("figures", "Figures", f'<div class="gallery">{"".join(figures)}</div>' if figures else ""),
        ("documents", "Documents", "\n".join(docs)),
        ("configs", "Configurations", _configs(folders)),
    ]
    sections = [s for s in sections if s[2]]
    nav = "".join(f'<a href="#{key}">{_e(name)}</a>' for key, name, _ in sections)
    body = "\n".join(
        f'<section id="{key}"><h2>{_e(name)}</h2>\n{content}\n</section>' for key, name, content in sections
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f'<body data-images-ok="pending">\n<h1>{_e(title)}</h1>\n'
        f'<p class="meta">{len(folders)} folder(s); generated {stamp} by relprop {_e(__version__)}</p>\n'
        f"<nav>{nav}</nav>\n{body}\n<script>{_CHECK_JS}</script>\n</body>\n</html>\n"
    )
    atomic_write_text(out, page)
    return out


# -- command line -----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``relprop report RUN [RUN ...] --out report.html [--title T]``."""
    parser.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN", help="run folders (relprop train) or results folders"
    )
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="the HTML file to write")
    parser.add_argument("--title", default=None, help="page title (default: the folder names)")


def run(args: argparse.Namespace) -> int:
    """``relprop report``: write the HTML report and print its path."""
    path = render_report(args.runs, args.out, title=args.title)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


__all__ = ["ReportError", "add_arguments", "markdown_to_html", "render_report", "run"]
