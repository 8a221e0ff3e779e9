"""Run on a GPU, or on many images: the device arguments, and `relprop explain DIR` with --devices N.

1. In Python: the explainer runs wherever the model and the input are (model.to(device), x.to(device)).
   Images per second for a few batch sizes on this machine's device.
2. On a folder: `relprop explain DIR --model lenet5 --out OUT` on real MNIST digits written as PNG files;
   with --devices N (N processes through Lightning's predict loop: N GPUs with --accelerator gpu, or N CPU
   processes). Non-quick runs 2 CPU processes (or all GPUs), --quick runs 1. Then the same command again:
   it resumes, skipping every image already explained.

Writes to --out: gpu_many_heatmaps.png (inputs and the heatmap files the command wrote), gpu_many_speed.png,
gpu_many_log.txt (what the commands printed) and gpu_many_manifest.txt (the first manifest lines).

Run: python docs/tutorials/gpu_and_many.py --out outputs/tutorials [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

import relprop
from relprop.cli import main as relprop_cli
from relprop.models import load_mnist_digits, load_model
from relprop.viz.heatmap import montage, save_png


def write_digit_folder(root: Path, per_class: int) -> list[Path]:
    """Real MNIST digits as 8-bit PNG files: ROOT/<digit>/<index>.png."""
    images, labels = load_mnist_digits(n_per_class=per_class)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = root / str(int(label)) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def run_command(words: list[str], processes: int) -> str:
    """`relprop WORDS...`; in this process for one process, else as its own command (Lightning's ddp launcher
    starts the other processes by running the same command line again). Returns what it printed."""
    if processes == 1:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # (progress bars go to stderr)
            status = relprop_cli(words)
        text = printed.getvalue()
    else:
        done = subprocess.run([sys.executable, "-m", "relprop.cli", *words], capture_output=True, text=True)
        status, text = done.returncode, done.stdout + (done.stderr if done.returncode else "")
    if status != 0:
        raise RuntimeError(f"relprop {' '.join(words)} exited with status {status}:\n{text}")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/tutorials"), help="folder for the figures")
    parser.add_argument("--quick", action="store_true", help="40 images and one process")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    # --8<-- [start:device]
    device = torch.device(args.device)  # "cuda", "cuda:1", "cpu", ...
    model = load_model("lenet5").to(device)  # the explainer runs where the model is
    explainer = relprop.Explainer(model, "epsilon_plus_flat")
    images, labels = load_mnist_digits(n_per_class=20)
    relevance = explainer(images.to(device), target="predicted")  # the input goes to the model's device too
    # --8<-- [end:device]
    assert relevance.device.type == device.type

    sizes = [1, 16, 64] if args.quick else [1, 8, 32, 128, 200]
    speed = []
    for b in sizes:
        x = images[:b].to(device)
        explainer(x)  # warm-up (modified weights are cached after the first call)
        repeats = max(1, 64 // b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            explainer(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        speed.append(b * repeats / (time.perf_counter() - start))
    _speed_figure(args.out / "gpu_many_speed.png", sizes, speed, device, torch.get_num_threads())

    processes = 1 if args.quick else (torch.cuda.device_count() if device.type == "cuda" else 2)
    per_class = 4 if args.quick else 20
    log = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "digits", Path(tmp) / "heatmaps"
        paths = write_digit_folder(folder, per_class)
        # --8<-- [start:folder]
        words = ["explain", str(folder), "--model", "lenet5", "--composite", "epsilon_plus_flat",
                 "--out", str(out), "--batch-size", "16", "--devices", str(processes)]  # fmt: skip
        if device.type == "cuda":
            words += ["--accelerator", "gpu"]
        start = time.perf_counter()
        printed = run_command(words, processes)  # the same as typing `relprop explain ...` in a shell
        seconds = time.perf_counter() - start
        again = run_command(words, processes)  # the same command again: resumes, nothing left to do
        # --8<-- [end:folder]
        shown = " ".join(w if not w.startswith(tmp) else w.replace(tmp, "TMP") for w in words)
        log += [f"$ relprop {shown}", printed.replace(tmp, "TMP").strip(),
                f"({len(paths)} images, {processes} process{'es' * (processes > 1)}, {seconds:.1f} s wall)", "",
                f"$ relprop {shown}    # again", again.replace(tmp, "TMP").strip()]  # fmt: skip
        manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
        explained = [r for r in manifest if r.get("status") == "ok"]
        log.append(f"\nmanifest.jsonl: {len(manifest)} records, {len(explained)} with status ok")
        first = "\n".join(json.dumps(r) for r in manifest[:2]).replace(tmp, "TMP")
        (args.out / "gpu_many_manifest.txt").write_text(first + "\n")
        tiles = []
        for record in sorted(explained, key=lambda r: r["image"])[:: max(1, len(explained) // 10)][:10]:
            image = np.asarray(Image.open(folder / record["image"]).convert("RGB"))
            heatmap = np.asarray(Image.open(out / record["heatmap"]).convert("RGB"))
            tiles += [image, np.asarray(Image.fromarray(heatmap).resize(image.shape[1::-1], Image.NEAREST))]
        save_png(montage(tiles, ncols=10, scale=4), args.out / "gpu_many_heatmaps.png")
    (args.out / "gpu_many_log.txt").write_text("\n".join(log) + "\n")
    print("\n".join(log))
    if len(explained) != len(paths):
        raise RuntimeError(f"{len(explained)} of {len(paths)} images explained")


def _speed_figure(path: Path, sizes: list[int], speed: list[float], device: torch.device, threads: int) -> None:
    fig = Figure(figsize=(5, 2.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.bar([str(b) for b in sizes], speed, color="#4477aa")
    for i, s in enumerate(speed):
        ax.text(i, s, f"{s:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("batch size", fontsize=9)
    ax.set_ylabel("images per second", fontsize=9)
    where = f"{device.type}" + (f", {threads} threads" if device.type == "cpu" else "")
    ax.set_title(f"LeNet-5, epsilon_plus_flat, on this machine ({where})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, facecolor="white")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
