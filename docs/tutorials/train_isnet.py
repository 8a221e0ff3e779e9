"""Train an ISNet on your own image + mask folder, then compare it with a plain classifier.

The folder here is generated (relprop's chest-X-ray-style benchmark on the real lung masks that ship with
torchxrayvision): every image has a lung mask, and hospital markers (a "PORTABLE" tag, a border, a letter)
outside the lungs are correlated with the class in the training hospitals. A plain classifier can learn the
markers; an ISNet is trained to keep its LRP relevance inside the mask. Put your own data in the same layout
(ROOT/<class>/<image>, ROOT/masks/<class>/<same stem>.png) and the rest of the script runs unchanged.

Writes to --out:
  train_isnet_data.png       examples of the folder: one row per hospital, image and image with its mask
  train_isnet_heatmaps.png   external-hospital images: mask, plain classifier's and ISNet's LRP heatmaps
  train_isnet_table.txt      accuracy and background relevance share per test set (Markdown table)
  train_isnet_check.txt      what `relprop check-data` printed for the folder
and to --runs (default outputs/tutorials/train_isnet_runs): the two run folders fit writes (plain/, isnet/:
metrics.json, last.ckpt, best.ckpt, plus heatmaps.png) and a results folder (results/: results.json, results.md,
heatmaps.png), which `relprop report` renders (docs/tutorials/report.py).

Run: python docs/tutorials/train_isnet.py --out outputs/tutorials [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

import relprop
from relprop.cli import main as relprop_cli
from relprop.data import CXRConfig, cxr_montage, default_cxr_sources, make_cxr_folder
from relprop.data.folders import MaskedImageFolder, split_by_source
from relprop.isnet import TrainConfig, evaluate, fit
from relprop.models import DigitsCNN
from relprop.viz.heatmap import save_grid, save_png

RUNS = Path("outputs/tutorials/train_isnet_runs")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/tutorials"), help="folder for the figures")
    parser.add_argument("--quick", action="store_true", help="tiny data (32 px) and 2 epochs: a smoke run")
    parser.add_argument("--runs", type=Path, default=RUNS, help=f"folder for the run folders (default {RUNS})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    size, n_train, n_external, epochs, width = (32, 100, 30, 4, 8) if args.quick else (64, 400, 100, 8, 16)
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"

    with tempfile.TemporaryDirectory() as tmp:
        # --8<-- [start:folder]
        # An image + mask folder: ROOT/<class>/<name>.png, ROOT/masks/<class>/<name>.png, plus ROOT/index.csv
        # (columns image, mask, label, source) naming the hospital each image comes from.
        root = Path(tmp) / "xray"
        sources = default_cxr_sources(num_classes=2, n_train=n_train, n_external=n_external)
        make_cxr_folder(root, CXRConfig(size=size, sources=sources, n_masks=60 if args.quick else None))
        # --8<-- [end:folder]
        save_png(cxr_montage(root, per_class=2, scale=2 if args.quick else 1), args.out / "train_isnet_data.png")

        # --8<-- [start:check]
        # Check every image and mask before training (the same as `relprop check-data ROOT --csv ROOT/index.csv`).
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            status = relprop_cli(["check-data", str(root), "--csv", str(root / "index.csv")])
        # --8<-- [end:check]
        (args.out / "train_isnet_check.txt").write_text(printed.getvalue().replace(str(root), "ROOT"))
        print(printed.getvalue().strip())
        if status != 0:
            raise RuntimeError(f"relprop check-data found problems (exit status {status})")

        # --8<-- [start:load]
        # The CSV names each image's source, so whole hospitals can be held out as an external test.
        dataset = MaskedImageFolder(csv=root / "index.csv", channels=1)
        parts = split_by_source(dataset, ["hospital_c", "hospital_d"], val_fraction=0.2, seed=0)
        train, val = parts["train"], parts["val"]
        external = {name: [i for i in parts["external"].indices if dataset.sources[i] == name]
                    for name in ("hospital_c", "hospital_d")}  # fmt: skip
        # (Without sources: MaskedImageFolder(root) reads ROOT/<class>/ and ROOT/masks/<class>/, and
        # relprop.data.folders.split(dataset, {"train": 0.8, "val": 0.2}) splits it per class.)
        # --8<-- [end:load]
        print(f"{dataset}; train {len(train)}, val {len(val)}, external {len(parts['external'])}")

        # --8<-- [start:fit]
        models = {}
        for name, method in (("plain", "plain"), ("ISNet", "selective")):  # selective: the Faster ISNet variant
            torch.manual_seed(0)
            model = DigitsCNN(num_classes=2, in_channels=1, width=width)
            config = TrainConfig(method=method, epochs=epochs, batch_size=32, lr=0.01, P=0.7, seed=0)
            fit(model, train, val, config, out_dir=args.runs / name.lower(), resume=False, accelerator=accelerator,
                progress=not args.quick, model_spec={"name": "digits_cnn", "num_classes": 2, "width": width})
            models[name] = model.eval()
        # --8<-- [end:fit]

        # --8<-- [start:evaluate]
        tests = {"val": val,  # the training hospitals
                 "hospital_c": Subset(dataset, external["hospital_c"]),  # markers independent of the class
                 "hospital_d": Subset(dataset, external["hospital_d"])}  # another contrast
        results = {name: evaluate(model, tests, progress=False) for name, model in models.items()}
        # --8<-- [end:evaluate]
        shown = Subset(dataset, external["hospital_c"][: 4 if args.quick else 6])
        grid = _heatmaps(models, shown, dataset.class_names)
        path = save_grid(args.out / "train_isnet_heatmaps.png", **grid,
                         title="external hospital: LRP heatmaps of the predicted class")  # fmt: skip
        print(f"wrote {path}")
        for name, model in models.items():  # each run folder gets its own grid, as `relprop evaluate` writes one
            save_grid(args.runs / name.lower() / "heatmaps.png", **_heatmaps({name: model}, shown, dataset.class_names))

    lines = ["| model | test set | accuracy | background share of relevance |", "|---|---|---|---|"]
    for name, per_test in results.items():
        for test, r in per_test.items():
            lines.append(f"| {name} | {test} (n = {int(r['n'])}) | {r['accuracy']:.3f} | {r['background_share']:.3f} |")
    lines += ["", (
        f"*Measured by `train_isnet.py{' --quick' if args.quick else ''}`: {size}×{size} images, {2 * n_train} from "
        f"the training hospitals (80 % train, 20 % val), {epochs} epochs, DigitsCNN, {args.device}. Background "
        "share: Σ|R| outside the lung mask / Σ|R|, ISNet's LRP rules, predicted class."
        + (" Quick settings: too little training for the numbers to mean much." if args.quick else "") + "*"
    )]  # fmt: skip
    (args.out / "train_isnet_table.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    results_dir = args.runs / "results"  # a results folder, as relprop report reads it
    results_dir.mkdir(parents=True, exist_ok=True)
    doc = {"command": f"python docs/tutorials/train_isnet.py{' --quick' if args.quick else ''}", "results": results,
           "data": {"source": "cxr-style", "n_train": len(train), "n_test": len(val) + len(parts["external"])}}
    (results_dir / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (results_dir / "results.md").write_text("# Plain vs ISNet on the X-ray-style folder\n\n" + "\n".join(lines) + "\n")
    (results_dir / "heatmaps.png").write_bytes((args.out / "train_isnet_heatmaps.png").read_bytes())


def _heatmaps(models: dict[str, torch.nn.Module], shown: Dataset, class_names: tuple[str, ...]) -> dict:
    """save_grid's arguments: per image the input, its mask and each model's ISNet-rule LRP heatmap."""
    items = [shown[i] for i in range(len(shown))]  # type: ignore[arg-type]
    x = torch.stack([it[0] for it in items])
    heatmaps: dict[str, list[torch.Tensor]] = {"lung mask": [it[1] for it in items]}
    for name, model in models.items():
        e = relprop.Explainer(model, relprop.composites.isnet()).explain(x, "predicted")
        heatmaps[name] = list(e.relevance)
    rows = [f"true: {class_names[int(it[2])]}" for it in items]  # the predictions are in the metrics
    return {"images": list(x), "heatmaps": heatmaps, "row_titles": rows}


if __name__ == "__main__":
    main()
