"""relprop.report: the HTML report of run and results folders, checked as text and in headless Chromium."""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from relprop.cli.report import add_arguments, run
from relprop.viz._report_markdown import FolderMarkdown
from relprop.viz.report import ReportError, markdown_to_html, render_report

SPLITS = ("test_biased", "test_unbiased", "test_deceiving")
APT = "apt-get update && apt-get install -y chromium chromium-driver"


# -- fake folders in the formats relprop train / evaluate / study write -------------------------------------------


def _png(path: Path, w: int = 60, h: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1))


def _make_run(
    folder: Path,
    method: str = "plain",
    epochs: int = 2,
    done: int = 2,
    evaluated: bool = True,
    label: str | None = None,
) -> Path:
    folder.mkdir(parents=True)
    config = {"method": method, "epochs": epochs, "batch_size": 32, "lr": 0.05, "P": 0.7, "seed": 0}
    spec = {"name": "digits_cnn", "num_classes": 10, "in_channels": 1, "width": 16}
    data = {"source": "mnist", "n_train": 200, "n_test": 1500, "seed": 0}
    command = f"relprop train --method {method} --out {folder}"
    _write(folder / "run.json", {"data": data, "model_spec": spec, "config": config, "command": command})
    history = [
        {
            "epoch": e,
            "train_loss": 2.0 - 0.3 * e,
            "train_ce": 2.0 - 0.3 * e,
            "train_acc": 0.3 + 0.2 * e,
            "train_heatmap": None if method == "plain" else 1.0 / (e + 1),
            "val_acc": 0.25 + 0.25 * e,
            "val_ce": 2.1 - 0.2 * e,
            "val_heatmap": None,
            "seconds": 1.5,
        }  # fmt: skip
        for e in range(done)
    ]
    metrics = {"config": config, "model_spec": spec, "history": history, "finished": done >= epochs}
    _write(folder / "metrics.json", metrics)
    (folder / "last.ckpt").write_bytes(b"not read by the report")
    if evaluated:
        res = {
            s: {"accuracy": 0.875 - 0.1 * i, "background_share": 0.0425 + i, "n": 1500.0} for i, s in enumerate(SPLITS)
        }
        _write(folder / "evaluation.json", {label or method: {"run": str(folder), **res}})
        _png(folder / "heatmaps.png", 90, 120, seed=1)
        _png(folder / "extra_figure.png", seed=2)
    return folder


REPORT_MD = """# A study

Some *emphasis*, **bold** and `code <x>`; a [link](https://example.org) and a [local](results.json) one.

## Results

| method | accuracy | note |
|---|---:|---|
| plain | 0.91 | a \\| pipe |
| isnet | 0.88 | <b>not bold</b> |

- first item
- second item

```
raw <table> text
```

![the figure](fig.png)

![gone](missing.png) ![outside](../x.png) ![remote](https://example.org/a.png)
"""


def _make_results(folder: Path) -> Path:
    folder.mkdir(parents=True)
    _write(folder / "results.json", {"command": "relprop study isnet --out x", "settings": {"epochs": 3}})
    (folder / "report.md").write_text(REPORT_MD)
    _png(folder / "fig.png", seed=3)
    _png(folder / "other.png", seed=4)
    return folder


def _images(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)


def _decoded_pngs(page: str) -> list[Image.Image]:
    out: list[Image.Image] = []
    for src in _images(page):
        assert src.startswith("data:image/png;base64,"), src[:60]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        out.append(Image.open(io.BytesIO(data)))
    return out


def _section(page: str, key: str) -> str:
    found = re.search(rf'<section id="{key}">(.*?)</section>', page, re.S)
    assert found, f"no section {key}"
    return found.group(1)


# -- the page as text --------------------------------------------------------------------------------------------


def test_report_of_runs_and_a_results_folder(tmp_path: Path) -> None:
    a = _make_run(tmp_path / "a", "plain")
    b = _make_run(tmp_path / "b", "stochastic", epochs=3, done=1, evaluated=False)
    study = _make_results(tmp_path / "study")
    out = render_report([a, b, study], tmp_path / "out" / "report.html", title="My runs")
    page = out.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # atomic write left no temporary file
    for section in ("summary", "metrics", "curves", "heatmaps", "figures", "documents", "configs"):
        assert f'<section id="{section}">' in page
    assert "<title>My runs</title>" in page and "<h1>My runs</h1>" in page
    # summary: methods, data, epochs done of planned, finished or not
    assert "stochastic" in page and "mnist, 200 train, 1500 test, seed 0" in page
    assert "2 of 2" in page and "1 of 3" in page
    assert '<span class="yes">yes</span>' in page and '<span class="no">no</span>' in page
    # metrics: evaluated run has numbers, the other dashes; the last val accuracy of each run
    rows = re.findall(r"<tr><td>(a|b)</td>(.*?)</tr>", _section(page, "metrics"))
    assert [r[0] for r in rows] == ["a", "b"]
    assert "0.875" in rows[0][1] and "0.043" in rows[0][1] and "0.500" in rows[0][1]
    assert rows[1][1].count("<td>—</td>") == 7 and "<td>0.250</td>" in rows[1][1]
    assert "b: no heatmaps.png" in page
    # images: curves, a's heatmaps + extra figure, the study's fig.png (inline) + other.png; all embedded PNGs
    images = _decoded_pngs(page)
    assert len(images) == 5 and all(im.format == "PNG" and im.width > 0 for im in images)
    assert page.count('alt="a: heatmaps.png"') == 1 and 'alt="study: other.png"' in page
    assert 'alt="the figure"' in page and 'alt="study: fig.png"' not in page  # shown once, in the document
    # configurations, collapsible
    assert page.count("<details>") == 3 and "relprop study isnet --out x" in page


def test_page_is_self_contained(tmp_path: Path) -> None:
    out = render_report([_make_run(tmp_path / "a"), _make_results(tmp_path / "s")], tmp_path / "r.html")
    page = out.read_text()
    assert not re.search(r"""\b(src|srcset|poster|data)\s*=\s*["']?(https?:|file:|//)""", page, re.I)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert re.findall(r"<script\b[^>]*>", page) == ["<script>"]  # one inline script, no src=
    assert all(src.startswith("data:image/png;base64,") for src in _images(page))
    assert str(tmp_path / "s" / "fig.png") not in page.replace("<code>", "")


def test_text_is_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    a = _make_run(tmp_path / 'x<b>&"q', label=evil)
    (a / "report.md").write_text(f"# {evil}\n\n| {evil} | b |\n|---|---|\n| 1 | 2 |\n")
    out = render_report([a], tmp_path / "r.html", title="<img src=x onerror=alert(2)>")
    page = out.read_text()
    assert len(re.findall(r"<script\b", page)) == 1
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # metrics row, markdown heading, table
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert re.search(r"x&lt;b&gt;&amp;(&quot;|&#34;)q", page) and "<b>&" not in page  # jinja2 writes " as &#34;


def _flat(fragment: str) -> str:
    """HTML with the whitespace between tags removed (markdown-it puts block tags on lines of their own)."""
    return re.sub(r">\s+<", "><", re.sub(r"\n(?=<)", "", fragment))


def test_markdown_subset() -> None:
    folder = Path(__file__).parent  # no PNG named fig.png here: every image becomes a note
    out = _flat(markdown_to_html(REPORT_MD, folder))
    assert "<h3>A study</h3>" in out and "<h4>Results</h4>" in out
    assert "<em>emphasis</em>" in out and "<strong>bold</strong>" in out and "<code>code &lt;x&gt;</code>" in out
    assert '<a href="https://example.org">link</a>' in out and "and a local one." in out  # local links: text
    assert '<th>method</th><th style="text-align:right">accuracy</th><th>note</th>' in out
    assert "<td>a | pipe</td>" in out and "<td>&lt;b&gt;not bold&lt;/b&gt;</td>" in out
    assert "<ul><li>first item</li><li>second item</li></ul>" in out
    assert "<pre><code>raw &lt;table&gt; text</code></pre>" in out
    assert "<img" not in out and out.count('class="missing"') == 4
    assert "https://example.org/a.png" in out and 'src="https' not in out


def test_markdown_never_passes_raw_html(tmp_path: Path) -> None:
    text = (
        "<script>alert(1)</script>\n\n"
        '<div onclick="alert(2)">block</div>\n\n'
        "Inline <img src=x onerror=alert(3)> and `<script>` in code.\n\n"
        "```html\n<script>alert(4)</script>\n```\n\n"
        "    <script>alert(5)</script>\n\n"
        "[js](javascript:alert(6)) [data](data:text/html,x) <https://example.org/auto> [local](notes.md)\n"
    )
    out = markdown_to_html(text, tmp_path)
    assert not re.search(r"<(script|div|img)\b", out), out
    for n in (1, 4, 5):
        assert f"&lt;script&gt;alert({n})&lt;/script&gt;" in out
    assert "&lt;div onclick=&quot;alert(2)&quot;&gt;" in out and "&lt;img src=x onerror=alert(3)&gt;" in out
    assert "<code>&lt;script&gt;</code>" in out and '<pre><code class="language-html">&lt;script&gt;' in out
    assert re.findall(r"<a\b[^>]*>", out) == ['<a href="https://example.org/auto">']  # only the http(s) link
    assert "javascript:" not in out.replace("[js](javascript:alert(6))", "")  # left as plain text, not a link
    assert "local" in out and "notes.md" not in out


def test_markdown_images_only_from_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    (folder / "sub").mkdir(parents=True)
    _png(folder / "fig.png", 30, 20)
    _png(folder / "my fig.png", 31, 20)
    _png(folder / "sub" / "inner.png", 32, 20)
    outside = _png(tmp_path / "outside.png", 33, 20)
    (folder / "link.png").symlink_to(outside)
    (folder / "fake.png").write_text("not a png")
    (folder / "fig.jpg").write_bytes((folder / "fig.png").read_bytes())
    text = (
        "![a](fig.png) ![b](<my fig.png>) ![c](sub/inner.png) ![d](./sub/../fig.png)\n\n"
        f"![e](../outside.png) ![f]({outside}) ![g](link.png) ![h](fake.png) ![i](fig.jpg) ![j](gone.png)\n\n"
        f"![k](data:image/png;base64,AAAA) ![l](file://{outside})\n"
    )
    md = FolderMarkdown(folder)
    out = md.render(text)
    widths = [im.width for im in _decoded_pngs(out)]
    assert widths == [30, 31, 32, 30]  # the four PNGs inside the folder, and nothing else
    assert re.findall(r'alt="(\w)"', out) == ["a", "b", "c", "d"]
    assert out.count("<img") == 4 and "![l](file://" in out  # markdown-it refuses file: links: left as text
    assert out.count('class="missing"') == 7 and "fake.png: not a readable PNG" in out  # e to k: notes
    assert "../outside.png" in out and "not found in study" in out
    assert md.embedded == {(folder / n).resolve() for n in ("fig.png", "my fig.png", "sub/inner.png", "fake.png")}


def test_markdown_headings_lists_and_tables() -> None:
    text = (
        "# one\n\n### three\n\n##### five\n\nSetext\n======\n\n"
        "1. first\n2. second\n   - nested *x*\n\n"
        "| left | centre | right |\n|:--|:-:|--:|\n| `a\\|b` | **c** | 3 |\n| short |\n\n"
        "a ~~struck~~ word\n\n---\n"
    )
    out = _flat(markdown_to_html(text, Path(__file__).parent))
    assert "<h3>one</h3>" in out and "<h5>three</h5>" in out and "<h6>five</h6>" in out and "<h3>Setext</h3>" in out
    assert "<ol><li>first</li><li>second<ul><li>nested <em>x</em></li></ul></li></ol>" in out
    assert '<div class="scroll"><table><thead><tr><th style="text-align:left">left</th>' in out
    assert '<th style="text-align:center">centre</th><th style="text-align:right">right</th>' in out
    assert '<td style="text-align:left"><code>a|b</code></td><td style="text-align:center"><strong>c</strong>' in out
    assert '<td style="text-align:right">3</td>' in out
    assert re.search(r"<tr><td[^>]*>short</td><td[^>]*></td><td[^>]*></td></tr>", out)  # short rows padded
    assert "</table></div>" in out and "<s>struck</s>" in out and "<hr" in out


def test_report_embeds_a_markdown_figure_once(tmp_path: Path) -> None:
    """A PNG shown by a Markdown file is not repeated among the figures; one in a subfolder does not hide a
    top-level PNG of the same name."""
    folder = _make_results(tmp_path / "study")
    (folder / "sub").mkdir()
    _png(folder / "sub" / "other.png", 10, 10)
    (folder / "report.md").write_text("![inner](sub/other.png) ![fig](fig.png)\n")
    page = render_report([folder], tmp_path / "r.html").read_text()
    assert len(_decoded_pngs(_section(page, "documents"))) == 2
    assert re.findall(r'alt="([^"]*)"', _section(page, "figures")) == ["study: other.png"]


def test_templates_are_package_data() -> None:
    """The page template and its CSS/JS ship with the package: pyproject's package-data patterns name them."""
    import fnmatch
    from importlib import resources

    import tomllib

    templates = resources.files("relprop.viz") / "templates"
    names = sorted(p.name for p in templates.iterdir() if p.is_file())
    assert {"report.html.j2", "report.css", "report.js"} <= set(names)
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["relprop"]
    for name in names:
        assert any(fnmatch.fnmatch(f"viz/templates/{name}", pat) for pat in patterns), (name, patterns)


def test_run_without_evaluation_and_an_unfinished_history(tmp_path: Path) -> None:
    a = _make_run(tmp_path / "a", evaluated=False, epochs=5, done=0)
    page = render_report([a], tmp_path / "r.html").read_text()
    assert "0 of 5" in page and "No training history" in page and "a: no heatmaps.png" in page
    assert re.search(r"<tr><td>a</td><td>—</td><td>—</td>(<td>—</td>){6}</tr>", _section(page, "metrics"))
    assert _images(page) == [] and '<section id="figures">' not in page


def test_evaluation_folder_of_several_runs(tmp_path: Path) -> None:
    """``relprop evaluate A B --out DIR`` writes only evaluation.json and heatmaps.png to DIR."""
    folder = tmp_path / "eval"
    folder.mkdir()
    res = {s: {"accuracy": 0.5, "background_share": 0.25, "n": 10.0} for s in SPLITS}
    _write(folder / "evaluation.json", {"plain": {"run": "a", **res}, "selective": {"run": "b", **res}})
    _png(folder / "heatmaps.png")
    page = render_report([folder], tmp_path / "r.html").read_text()
    assert re.findall(r"<tr><td>eval</td><td>(\w+)</td>", _section(page, "metrics")) == ["plain", "selective"]
    assert len(_decoded_pngs(page)) == 1


def test_bias_demo_style_results_folder(tmp_path: Path) -> None:
    """results.json may be any JSON; a PNG that results.md shows is embedded there only."""
    folder = tmp_path / "bias"
    folder.mkdir()
    _write(folder / "results.json", [1, 2])
    (folder / "notes.md").write_text("Notes *here*.")
    (folder / "results.md").write_text("# Title\n\n```\nmodel  accuracy\n```\n\n![heatmaps](heatmaps.png)\n")
    _png(folder / "heatmaps.png")
    page = render_report([folder], tmp_path / "r.html").read_text()
    assert '<section id="heatmaps">' not in page and len(_decoded_pngs(_section(page, "documents"))) == 1
    assert "<pre><code>model  accuracy\n</code></pre>" in page
    assert page.index("bias: results.md") < page.index("bias: notes.md") and "<em>here</em>" in page
    assert '<section id="metrics">' not in page and '<section id="curves">' not in page  # no runs, no evaluation


def test_real_training_run(tmp_path: Path) -> None:
    """The folder that relprop.isnet.training.fit writes (no run.json: fit alone does not write one)."""
    from relprop.isnet.training import TrainConfig, fit

    sys.path.insert(0, str(Path(__file__).parent))
    from _isnet_train_worker import BoxDataset, plain_model

    config = TrainConfig(method="plain", epochs=1, batch_size=32, seed=0)
    fit(plain_model(0), BoxDataset(), BoxDataset(8, seed=2), config, out_dir=tmp_path / "run", progress=False)
    page = render_report([tmp_path / "run"], tmp_path / "r.html").read_text()
    assert "1 of 1" in page and '<span class="yes">yes</span>' in page and "metrics.json (config)" in page
    assert len(_decoded_pngs(page)) == 1  # the curves


# -- errors ------------------------------------------------------------------------------------------------------


def test_folders_that_are_not_runs(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "pngs").mkdir()
    _png(tmp_path / "pngs" / "a.png")
    for path, words in [
        (tmp_path / "nope", "does not exist"),
        (tmp_path / "file.txt", "is not a folder"),
        (tmp_path / "empty", "neither a run folder nor a results folder"),
        (tmp_path / "pngs", "run.json, metrics.json, evaluation.json, results.json"),
    ]:
        with pytest.raises(ReportError, match=re.escape(str(path))) as info:
            render_report([path], tmp_path / "r.html")
        assert words in str(info.value)
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("metrics.json", '{"history": [', "is not readable JSON"),
        ("evaluation.json", "[1, 2]", "holds a JSON list, expected an object"),
        ("evaluation.json", '{"plain": 3}', "expected {label:"),
        ("run.json", b"\xff\xfe{", "is not readable JSON"),
        ("metrics.json", '{"history": 5}', "'history' must be a list"),
    ],
)
def test_corrupt_files_are_named(tmp_path: Path, name: str, content: str | bytes, words: str) -> None:
    run_dir = _make_run(tmp_path / "a")
    target = run_dir / name
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ReportError, match=re.escape(str(target))) as info:
        render_report([run_dir], tmp_path / "r.html")
    assert words in str(info.value)


def test_bad_arguments(tmp_path: Path) -> None:
    a = _make_run(tmp_path / "a")
    with pytest.raises(ReportError, match="no folders"):
        render_report([], tmp_path / "r.html")
    with pytest.raises(ReportError, match="ending in .html"):
        render_report([a], tmp_path / "report")
    (tmp_path / "dir.html").mkdir()
    with pytest.raises(ReportError, match="is a folder"):
        render_report([a], tmp_path / "dir.html")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    a, b = _make_run(tmp_path / "a"), _make_run(tmp_path / "b", "selective")
    args = parser.parse_args([str(a), str(b), "--out", str(tmp_path / "r.html"), "--title", "T"])
    assert run(args) == 0
    assert "wrote" in capsys.readouterr().out and "<title>T</title>" in (tmp_path / "r.html").read_text()
    with pytest.raises(SystemExit):
        parser.parse_args([str(a)])  # --out is required


# -- the page in headless Chromium -----------------------------------------------------------------------------


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    reason = f"headless Chromium (chromium or chromium-browser on PATH) is needed for the browser check; {APT}"
    if _on_ci():
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


def _browse(page: Path, profile: Path, *args: str) -> str:
    cmd = [
        _chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
        *args, page.as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def _body_state(page: Path, profile: Path) -> dict[str, str]:
    dom = _browse(page, profile, "--dump-dom")
    body = re.search(r"<body\b([^>]*)>", dom)
    assert body, f"no <body> in Chromium's DOM dump of {page}: {dom[:500]!r}"
    state = {k: html.unescape(v) for k, v in re.findall(r'\bdata-([\w-]+)="([^"]*)"', body.group(1))}
    assert state.get("images-ok") in ("true", "false"), f"the page's load script did not run: {state}"
    return state


def test_report_in_headless_chromium(tmp_path: Path) -> None:
    runs = [_make_run(tmp_path / "plain"), _make_run(tmp_path / "selective", "selective", evaluated=False)]
    out = render_report([*runs, _make_results(tmp_path / "study")], tmp_path / "report.html")
    n_images = len(_images(out.read_text()))
    n_tables = out.read_text().count("<table>")
    state = _body_state(out, tmp_path / "profile")
    assert state["images-ok"] == "true", f"images that did not load: {state['broken-images']}"
    assert int(state["images"]) == n_images == 5
    rows = [int(r) for r in state["table-rows"].split(",")]
    assert int(state["tables"]) == len(rows) == n_tables == 3 and all(r > 0 for r in rows), state

    shot = tmp_path / "report.png"
    _browse(out, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000")
    with Image.open(shot) as im:
        assert im.size == (1200, 2000)
        assert np.asarray(im.convert("L")).std() > 10  # not a blank page
    keep = os.environ.get("RELPROP_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


def test_chromium_check_sees_a_broken_image(tmp_path: Path) -> None:
    """The load script reports an image that does not decode (so a passing check means something)."""
    out = render_report([_make_run(tmp_path / "a")], tmp_path / "report.html")
    page = out.read_text()
    first = _images(page)[1]
    broken = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    out.write_text(page.replace(first, broken, 1))
    state = _body_state(out, tmp_path / "profile")
    assert state["images-ok"] == "false" and state["broken-images"] == "a: heatmaps.png"
