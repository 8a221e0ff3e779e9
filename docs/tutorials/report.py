"""Read a report: render `relprop report` over run and results folders, and picture each of its sections.

The folders are the ones docs/tutorials/train_isnet.py writes (two run folders from relprop.isnet.fit, plain
and ISNet, each with metrics.json and a heatmaps.png, and a results folder with results.json, results.md and
heatmaps.png); this script runs that tutorial first if they are missing. `relprop train` + `relprop evaluate`
run folders (the built-in biased digits) are read the same way.

Writes to --out:
  report_example.html     the report: one self-contained HTML file (every image embedded)
  report_<section>.png    a picture of each section (summary, metrics, curves, heatmaps, documents, configs),
                          taken with a headless Chromium where one is installed, else the section's own images
                          (curves, heatmaps) or its text drawn as an image
  report_sections.txt     the sections the report has, in order

Run: python docs/tutorials/report.py --out outputs/tutorials [--quick]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import importlib.util
import io
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from relprop.cli import main as relprop_cli

RUNS = Path("outputs/tutorials/train_isnet_runs")  # where train_isnet.py writes its folders
SECTION = re.compile(r'<section id="([\w-]+)">(.*?)</section>', re.DOTALL)
#: the section pictures docs/howto/read-a-report.md shows: each must be written (the report has that section)
PICTURES = ("report_summary.png", "report_metrics.png", "report_curves.png", "report_heatmaps.png",
            "report_documents.png", "report_configs.png")  # fmt: skip
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/tutorials"), help="folder for the figures")
    parser.add_argument("--quick", action="store_true", help="passed on to train_isnet.py if its folders are missing")
    parser.add_argument("--runs", type=Path, default=RUNS, help=f"train_isnet.py's run folders (default {RUNS})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    folders = [args.runs / "plain", args.runs / "isnet", args.runs / "results"]
    if not all((f / name).is_file() for f, name in zip(folders, ("metrics.json", "metrics.json", "results.json"))):
        _train_isnet(["--out", str(args.out), "--runs", str(args.runs), *(["--quick"] if args.quick else [])])

    # --8<-- [start:report]
    page = args.out / "report_example.html"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the same as `relprop report RUN [RUN ...] --out FILE` in a shell
        status = relprop_cli(["report", *map(str, folders), "--out", str(page), "--title", "plain vs ISNet"])
    # --8<-- [end:report]
    print(printed.getvalue().strip())
    if status != 0:
        raise RuntimeError(f"relprop report exited with status {status}")

    text = page.read_text(encoding="utf-8")
    sections = SECTION.findall(text)
    names = []
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    for key, body in sections:
        title = re.sub(r"<[^>]+>", "", body.split("</h2>", 1)[0]).strip()
        names.append(f"{key}: {title}")
        target = args.out / f"report_{key}.png"
        if browser is not None:
            _screenshot(browser, text, key, target)
        else:
            _fallback_picture(body, target)
        print(f"wrote {target}")
    (args.out / "report_sections.txt").write_text("\n".join(names) + "\n")
    missing = [name for name in PICTURES if not (args.out / name).is_file()]
    if missing:
        raise RuntimeError(f"the report has no section for {', '.join(missing)}; sections: {', '.join(names)}")
    print("sections: " + ", ".join(names) + ("" if browser else " (no browser: section images or text drawn)"))


def _train_isnet(argv: list[str]) -> None:
    spec = importlib.util.spec_from_file_location("relprop_tutorial_train_isnet", Path(__file__).with_name(
        "train_isnet.py"))  # fmt: skip
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


def _screenshot(browser: str, page: str, key: str, target: Path) -> None:
    """The report with every other section left out, rendered by a headless browser and cropped to its content."""
    start = page.index(">", page.index("<body")) + 1  # the report's title and navigation are left out too
    end = page.rindex("</section>") + len("</section>")
    keep = "".join(m.group(0) for m in SECTION.finditer(page) if m.group(1) == key)
    one = page[:start] + keep + page[end:]
    with tempfile.TemporaryDirectory() as tmp:
        source, shot = Path(tmp) / "section.html", Path(tmp) / "shot.png"
        source.write_text(one, encoding="utf-8")
        subprocess.run(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1100,2400", f"--screenshot={shot}", source.as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        image = Image.open(shot).convert("RGB")
    a = np.asarray(image)
    rows = np.flatnonzero((a < 245).any(axis=(1, 2)))
    cols = np.flatnonzero((a < 245).any(axis=(0, 2)))
    box = (max(cols[0] - 8, 0), max(rows[0] - 8, 0), min(cols[-1] + 8, a.shape[1]), min(rows[-1] + 8, a.shape[0]))
    image.crop(box).save(target)


def _fallback_picture(body: str, target: Path) -> None:
    """Without a browser: the section's embedded image, or its text drawn in a monospaced font."""
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', body)
    if images:
        target.write_bytes(base64.b64decode(images[0]))
        return
    text = html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"</(tr|p|h2|li|pre|div)>", "\n", body)))
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    lines = [line[:140] for line in lines if line][:60]
    font = ImageFont.load_default()
    canvas = Image.new("RGB", (1100, 16 * len(lines) + 20), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((10, 10 + 16 * i), line, fill="black", font=font)
    canvas.save(target)


if __name__ == "__main__":
    main()
