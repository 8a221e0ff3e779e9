"""Helpers shared by the command modules: help-text wrapping, the command line as a string, warnings, and the
run folders of ``relprop train`` / ``relprop evaluate``."""

from __future__ import annotations

import json
import shlex
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn

#: the files of a run folder: the data set and model spec (``relprop train``), the test results (``evaluate``)
RUN_FILE = "run.json"
EVAL_FILE = "evaluation.json"


def wrap(text: str) -> str:
    """A sub-command description, filled to 78 columns."""
    return textwrap.fill(text, width=78)


def command_line(argv: Sequence[str]) -> str:
    """``relprop ARGS...`` as a shell command (recorded in the files a command writes)."""
    return "relprop " + shlex.join(argv)


def warn(message: str) -> None:
    """Print ``relprop: warning: <message>`` on stderr (above any progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"relprop: warning: {message}", file=sys.stderr)


def out_folder(path: Path, flag: str = "--out") -> Path:
    """``path`` if it can be the output folder of a command (missing, or a folder); a UsageError naming
    ``flag`` if it is an existing file."""
    from ..errors import UsageError

    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is an existing file, not a folder: pass a folder (it is created if missing)")
    return path


def read_run(run: Path) -> dict[str, Any]:
    """The ``run.json`` of a run folder written by ``relprop train``."""
    from ..errors import UsageError

    path = run / RUN_FILE
    if not path.is_file():
        raise UsageError(f"{path} not found: is {run} a run folder written by `relprop train`?")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, Mapping) or not {"data", "model_spec"} <= set(data):
        raise UsageError(f"{path} lacks the 'data' and 'model_spec' entries relprop writes")
    return dict(data)


def load_run(run: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a run folder (eval mode) and its run.json."""
    from ..errors import UsageError
    from ..isnet.training import load_checkpoint
    from ..models import build_model

    meta = read_run(run)
    ckpt = run / "last.ckpt"
    if not ckpt.is_file():
        raise UsageError(f"{ckpt} not found: train first with `relprop train --out {run}`")
    model, _, _ = load_checkpoint(ckpt, build_model)
    return model.eval(), meta


# ----------------------------------------------------------------------------------------------------------------------
# Runs on the user's image + mask folder (``relprop train --data-dir``)

#: ``run.json["data"]["kind"]`` of a run on an image + mask folder (digit runs have no "kind")
FOLDER_KIND = "folder"
#: the split name of an external source in a folder run's splits and evaluation.json (``external:<source>``)
EXTERNAL_PREFIX = "external:"


def is_folder_run(meta: Mapping[str, Any]) -> bool:
    """Whether a run.json describes a run on an image + mask folder (``relprop train --data-dir``)."""
    data = meta.get("data")
    return isinstance(data, Mapping) and data.get("kind") == FOLDER_KIND


def _sources_text(names: Sequence[str]) -> str:
    if names == ("",) or not names:
        return (
            "the data set has no sources (the folder layout has none; they come from the 'source' column of a "
            "--csv file)"
        )
    return f"the data set's sources are {', '.join(repr(n) for n in names)}"


def folder_splits(data: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The :class:`relprop.data.MaskedImageFolder` of a folder run's ``run.json["data"]`` and its splits:
    ``train``, ``val``, ``test`` (in-distribution) and ``external:<source>`` for each held-out source.

    The items of the ``external`` sources and of ``val_source`` are taken out first; the rest is split per class
    into train / val / test by ``val_fraction`` and ``test_fraction`` (:func:`relprop.data.split`, seeded by
    ``seed``), val only when no ``val_source`` is given. Deterministic: ``relprop evaluate`` gets the same split.
    Raises the folder loader's DataError for an unusable folder, a UsageError naming the flag otherwise."""
    from ..data import LabelledSubset, MaskedImageFolder, split
    from ..errors import UsageError

    size = data.get("size")
    dataset = MaskedImageFolder(
        data.get("root"), csv=data.get("csv"), mask_root=data.get("mask_root"), classes=data.get("classes"),
        channels=int(data["channels"]), size=None if size is None else tuple(size),
    )  # fmt: skip
    sources: tuple[str, ...] = dataset.sources
    known: tuple[str, ...] = dataset.source_names
    held = [str(s) for s in data.get("external") or ()]
    val_source = data.get("val_source")
    for flag, names in (("--external", held), ("--val-source", [val_source] if val_source else [])):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(f"{flag} {' '.join(unknown)}: no such source; {_sources_text(known)}")
    if val_source is not None and val_source in held:
        raise UsageError(f"--val-source {val_source} is also an --external source; give it to one of them")
    pool = [i for i, s in enumerate(sources) if s not in held and s != val_source]
    if not pool:
        raise UsageError(f"no images left for training: --external/--val-source take every source ({', '.join(known)})")
    test_fraction = float(data["test_fraction"])
    val_fraction = 0.0 if val_source is not None else float(data["val_fraction"])
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    if val_source is not None:
        del fractions["val"]
    parts = split(LabelledSubset(dataset, pool), fractions, seed=int(data.get("seed", 0)))
    splits: dict[str, Any] = {name: LabelledSubset(dataset, [pool[i] for i in p.indices]) for name, p in parts.items()}
    if val_source is not None:
        splits["val"] = LabelledSubset(dataset, [i for i, s in enumerate(sources) if s == val_source])
    for name in held:
        splits[EXTERNAL_PREFIX + name] = LabelledSubset(dataset, [i for i, s in enumerate(sources) if s == name])
    for name, flag in (("train", "--val-fraction/--test-fraction"), ("val", "--val-fraction"),
                       ("test", "--test-fraction")):  # fmt: skip
        if len(splits[name]) == 0:
            raise UsageError(
                f"the {name} split of {len(pool)} images is empty: change {flag} (each class is split on its own)"
            )
    return dataset, splits
