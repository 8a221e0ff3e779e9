"""``relprop train`` and ``relprop evaluate``: ISNet training runs on the built-in biased-digits data.

A run folder holds ``run.json`` (data set and model spec), ``last.ckpt`` and ``metrics.json`` (written
by :func:`relprop.isnet.training.fit` after every epoch) and, after ``relprop evaluate``,
``evaluation.json`` and ``heatmaps.png``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._io import atomic_write_json, atomic_write_text
from .loss import HeatmapLossConfig

TEST_SPLITS = ("test_biased", "test_unbiased", "test_deceiving")
RUN_FILE = "run.json"
EVAL_FILE = "evaluation.json"


class RunError(ValueError):
    """A run folder is missing files or holds files relprop did not write."""


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (temporary file + os.replace)."""
    return atomic_write_json(path, data, indent=2)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .training import METHODS

    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="run folder (created; resumed if present)")
    p.add_argument("--method", default="selective", choices=METHODS, help="training method (default selective)")
    p.add_argument(
        "--data", default="digits", choices=("digits", "fashion"), help="biased MNIST digits or Fashion-MNIST"
    )
    p.add_argument("--epochs", type=int, default=6, help="epochs (default 6)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--P", type=float, default=0.7, dest="P", help="heatmap-loss weight P in [0, 1] (default 0.7)")
    p.add_argument("--d", type=float, default=0.9, help="GWRP decay d (default 0.9)")
    p.add_argument("--C1", type=float, default=1.0, help="foreground lower bound C1 (default 1)")
    p.add_argument("--C2", type=float, default=25.0, help="foreground upper bound C2 (default 25)")
    p.add_argument("--rrr-lambda", type=float, default=10.0, help="weight of the RRR penalty (default 10)")
    p.add_argument("--width", type=int, default=16, help="width of the DigitsCNN backbone (default 16)")
    p.add_argument("--n-train", type=int, default=3000, help="training digits (default 3000)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and training (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-resume", action="store_true", help="start over even if DIR has a checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders written by `relprop train`")
    p.add_argument("--out", type=Path, metavar="DIR", help="folder for evaluation.json and heatmaps.png "
                   "(default: the run folder when one run is given, required for several)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def data_config(data: str, n_train: int, seed: int) -> Any:
    from ..data import BiasedDigitsConfig

    return BiasedDigitsConfig(source="mnist" if data == "digits" else "fashion", n_train=n_train, seed=seed)


def run_train(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """``relprop train``: train one model on biased digits, write the run folder, print the test table."""
    from ..data import biased_digits
    from ..models import build_model
    from .training import TrainConfig, TrainingInterrupted, fit

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: must be at least 1")
        torch.set_num_threads(args.threads)
    out: Path = args.out
    dcfg = data_config(args.data, args.n_train, args.seed)
    splits = biased_digits(dcfg)
    spec = {"name": "digits_cnn", "num_classes": splits["train"].num_classes, "in_channels": 1, "width": args.width}
    config = TrainConfig(
        method=args.method, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        P=args.P, loss=HeatmapLossConfig(d=args.d, C1=args.C1, C2=args.C2), rrr_lambda=args.rrr_lambda,
        seed=args.seed,
    )  # fmt: skip
    run_file = out / RUN_FILE
    run = {"data": asdict(dcfg), "model_spec": spec, "config": config.to_dict()}
    if run_file.is_file() and not args.no_resume:
        old = read_run(out)
        if old["data"] != run["data"] or old["model_spec"] != spec:
            raise RunError(
                f"{out} holds a run on other data or another model ({run_file}); use another --out or --no-resume"
            )
    words = list(sys.argv[1:] if argv is None else argv)
    write_json(run_file, {**run, "command": "relprop " + shlex.join(words)})
    torch.manual_seed(args.seed)
    model = build_model(spec)
    start = time.perf_counter()
    try:
        result = fit(
            model, splits["train"], splits["val"], config, out_dir=out, resume=not args.no_resume,
            progress=not args.quiet, model_spec=spec,
        )  # fmt: skip
    except TrainingInterrupted as exc:
        raise KeyboardInterrupt(
            f"stopped in epoch {exc.epoch} after {exc.step} steps; {exc.checkpoint} is up to date: run the same "
            "command again to resume"
        ) from exc
    last = result.history[-1] if result.history else {}
    print(
        f"trained {args.method} for {len(result.history)} epochs in {time.perf_counter() - start:.0f} s; "
        f"val accuracy {last.get('val_acc') or float('nan'):.3f}; wrote {result.last_checkpoint} and "
        f"{result.metrics_path}"
    )
    return 0


def read_run(run: Path) -> dict[str, Any]:
    path = run / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run} a run folder written by `relprop train`?")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, Mapping) or not {"data", "model_spec"} <= set(data):
        raise RunError(f"{path} lacks the 'data' and 'model_spec' entries relprop writes")
    return dict(data)


def load_run(run: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a run folder (eval mode) and its run.json."""
    from ..models import build_model
    from .training import load_checkpoint

    meta = read_run(run)
    ckpt = run / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt} not found: train first with `relprop train --out {run}`")
    model, _, _ = load_checkpoint(ckpt, build_model)
    return model.eval(), meta


def run_evaluate(args: argparse.Namespace) -> int:
    """``relprop evaluate``: accuracy and background relevance share on the three tests, heatmap grid."""
    from ..data import BiasedDigitsConfig, biased_digits
    from .evaluation import evaluate, heatmap_figure

    runs: list[Path] = args.runs
    if len(runs) > 1 and args.out is None:
        raise ValueError("--out is required when several runs are evaluated together")
    out: Path = args.out or runs[0]
    models: dict[str, nn.Module] = {}
    data_cfg = None
    results: dict[str, Any] = {}
    for run in runs:
        model, meta = load_run(run)
        cfg = BiasedDigitsConfig(**meta["data"])
        if data_cfg is not None and cfg != data_cfg:
            raise RunError(f"{run} was trained on other data than {runs[0]}; evaluate them separately")
        data_cfg = cfg
        splits = biased_digits(cfg)
        label = _label(run, meta, list(models))
        models[label] = model
        tests = {s: splits[s] for s in TEST_SPLITS}
        results[label] = {"run": str(run), **evaluate(model, tests, progress=not args.quiet)}
    assert data_cfg is not None
    print(format_table(results))
    write_json(out / EVAL_FILE, results)
    splits = biased_digits(data_cfg)
    fig = heatmap_figure(
        models, splits["test_deceiving"], out / "heatmaps.png", class_names=splits["train"].class_names,
        title="deceiving test: LRP of the predicted class",
    )  # fmt: skip
    print(f"wrote {out / EVAL_FILE} and {fig}")
    return 0


def _label(run: Path, meta: Mapping[str, Any], taken: list[str]) -> str:
    method = str(meta.get("config", {}).get("method", run.name))
    label = method
    k = 2
    while label in taken:
        label = f"{method} ({k})"
        k += 1
    return label


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table: one row per model, accuracy and background share on each test split."""
    head = f"{'model':<14}" + "".join(f"{s.removeprefix('test_'):>22}" for s in TEST_SPLITS)
    sub = f"{'':<14}" + "".join(f"{'accuracy':>12}{'bg share':>10}" for _ in TEST_SPLITS)
    lines = [head, sub]
    for label, res in results.items():
        cells = "".join(f"{res[s]['accuracy']:>12.3f}{res[s]['background_share']:>10.3f}" for s in TEST_SPLITS)
        lines.append(f"{label:<14}{cells}")
    return "\n".join(lines)


#: the main demo's training part: (method, selective class, epochs) on biased digits; the selective variant
#: explaining the true class's log-odds was the best method of the reproduction study (docs/studies/isnet)
DEMO_RUNS = (("plain", "lowest", 2), ("selective", "label", 10))


def run_bias_demo(out: Path, *, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a plain classifier and a Faster ISNet (selective variant, true class) on biased digits, print the
    three-test table and write ``out/results.json``, ``out/results.md`` and ``out/heatmaps.png``.

    Runs live in ``out/<method>/`` and resume if interrupted. ``quick`` uses 300 digits and one epoch
    (for tests; the numbers are then meaningless)."""
    from ..data import biased_digits
    from ..models import build_model
    from .evaluation import evaluate, heatmap_figure
    from .training import TrainConfig, fit

    dcfg = data_config("digits", 300 if quick else 3000, 0)
    splits = biased_digits(dcfg)
    tests = {s: splits[s] for s in TEST_SPLITS}
    if quick:
        tests = {s: _subset(d, 200) for s, d in tests.items()}
    spec = {"name": "digits_cnn", "num_classes": 10, "in_channels": 1, "width": 16}
    models: dict[str, nn.Module] = {}
    results: dict[str, Any] = {}
    for method, selective_class, epochs in DEMO_RUNS:
        config = TrainConfig(
            method=method, epochs=1 if quick else epochs, batch_size=32, lr=0.01, seed=0,
            selective_class=selective_class,
        )  # fmt: skip
        label = "Faster ISNet" if method != "plain" else "plain"
        print(f"training {label} ({method}, {config.epochs} epochs on {len(splits['train'])} biased digits)")
        torch.manual_seed(0)
        model = build_model(spec)
        start = time.perf_counter()
        fit(model, splits["train"], None, config, out_dir=out / method, progress=progress, model_spec=spec)
        seconds = time.perf_counter() - start
        model.eval()
        models[label] = model
        results[label] = {"method": method, "epochs": config.epochs, "train_seconds": round(seconds, 1)}
        results[label].update(evaluate(model, tests, progress=progress))
    table = format_table(results)
    print(table)
    write_json(out / "results.json", {"data": asdict(dcfg), "model_spec": spec, "results": results})
    md = [
        "# Plain classifier vs Faster ISNet on digits with a synthetic background bias",
        "",
        "Training images carry a bright square whose position encodes the class. Tests: biased (same "
        "pairing), unbiased (no square), deceiving (another class's square). `bg share` is the share of "
        "LRP relevance (|R|) outside the digit's box.",
        "",
        "```",
        table,
        "```",
        "",
        "![heatmaps](heatmaps.png)",
        "",
    ]
    atomic_write_text(out / "results.md", "\n".join(md))
    fig = heatmap_figure(
        models, splits["test_deceiving"], out / "heatmaps.png", class_names=splits["train"].class_names,
        title="deceiving test: LRP of the predicted class",
    )  # fmt: skip
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {fig}")
    return results


def _subset(dataset: Any, n: int) -> Any:
    from torch.utils.data import Subset

    return Subset(dataset, range(min(n, len(dataset))))


__all__ = [
    "add_evaluate_arguments", "add_train_arguments", "format_table", "load_run", "run_bias_demo", "run_evaluate",
    "run_train",
]  # fmt: skip
