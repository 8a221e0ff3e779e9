"""``relprop study rlrp|isnet|cxr``: run a measured study of :mod:`relprop.studies` and write its report.

Each study's plain-Python entry is its ``run_study``; this module turns the options into its arguments. ``rlrp``
runs in a child process (:func:`run_in_child`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._common import command_line

_STUDIES = {
    "rlrp": "R-LRP against classical LRP, presets and gradients (under 30 min on 2 cores; --quick: seconds)",
    "isnet": "plain vs RRR vs ISNet variants on biased digits, 3 seeds (30-60 min on 2 cores); resumable",
    "cxr": "plain vs RRR vs ISNet variants on the chest-X-ray-style benchmark, external test; resumable",
}


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


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``relprop study NAME``; ``rlrp`` runs in a child process (see :func:`run_in_child`)."""
    from dataclasses import replace

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
    from ..studies import cxr, isnet

    module = cxr if args.study == "cxr" else isnet
    settings = module.QUICK if args.quick else module.StudySettings()
    if args.epochs is not None:
        settings = replace(settings, epochs=args.epochs)
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: must be at least 1")
    if settings.epochs < 1:
        raise UsageError(f"--epochs {settings.epochs}: must be at least 1")
    extra: dict[str, object] = {}
    if args.study == "cxr" and args.costly_seeds:
        extra["seeds_for"] = {m: args.costly_seeds for m in ("dual", "original")}
    try:
        module.run_study(
            args.out, methods=args.methods, seeds=args.seeds, settings=settings, work=args.work, jobs=args.jobs,
            cache_dir=args.data_cache, command=command_line(argv), **extra,
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
