"""The files of a training run and how they are read: ``last.ckpt``, ``best.ckpt``, ``metrics.json`` and, with
C1/C2 tuning, ``tuning.json`` and the tuning run's folder ``tuning/``.

Checkpoints are Lightning checkpoints (written by Lightning's ``ModelCheckpoint`` through an atomic checkpoint
IO plugin, see :mod:`relprop.isnet.fitting`) with relprop's own entry ``checkpoint["relprop"]``: the training
config, the model spec, the position (epochs done, batches done in the current epoch, optimiser steps), the
history of finished epochs, the running sums of the current epoch and the RNG states. Lightning does not save
RNG states, so :func:`rng_state` / :func:`set_rng_state` carry torch's, CUDA's, Python's and NumPy's.

Reading needs no ``lightning``: :func:`load_checkpoint` rebuilds a trained model anywhere.
"""

from __future__ import annotations

import json
import os
import random
import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from .._io import atomic_write_text
from ..errors import CheckpointError
from .config import TrainConfig

CHECKPOINT_NAME = "last.ckpt"  #: written after every epoch, when training stops (end, max_steps, a signal)
BEST_NAME = "best.ckpt"  #: the epoch with the lowest validation loss (ISNet training can diverge late)
METRICS_NAME = "metrics.json"  #: config, model spec, per-epoch history, finished / interrupted
TUNING_NAME = "tuning.json"  #: the C1/C2 tuning result (TrainConfig.tune_epochs > 0); its run is in tuning/
FORMAT = 2  #: checkpoint["relprop"]["format"]; 2: resumed through Lightning's own loop state


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON (no NaN), written atomically."""
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # relprop._io.atomic_write: .NAME.XXXXXXXX.tmp


def remove_stale_temporaries(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files that killed atomic writes (:func:`relprop._io.atomic_write`) of the files
    ``names`` in ``folder`` left behind, ``.NAME.XXXXXXXX.tmp``; other files are left alone. Call it when a
    process starts writing to ``folder`` (its own writes are not under way yet). Returns the removed paths."""
    folder, wanted = Path(folder), set(names)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match and match["name"] in wanted and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(Path(entry.path))
    return removed


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch, CUDA if available, Python, NumPy) as tensors and plain containers, so
    that ``torch.load(weights_only=True)`` reads them back."""
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA's only on as many devices as it was taken on)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if state.get("numpy") is not None:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` with ``checkpoint["relprop"]["config"]`` parsed into a :class:`TrainConfig`.

    Reads with ``torch.load(weights_only=True)`` (no arbitrary unpickling). Raises FileNotFoundError for a
    missing file and :class:`~relprop.errors.CheckpointError` for an unreadable one, one that is not a Lightning
    checkpoint or one without relprop metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        found = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
        if found:
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain containers, which relprop does not "
                f"unpickle (torch.load(weights_only=True)): {found[0]}"
            ) from exc
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated?): {exc}") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} is not a Lightning checkpoint: it has no 'state_dict'")
    meta = ckpt.get("relprop")
    if not isinstance(meta, Mapping) or "config" not in meta:
        raise CheckpointError(
            f"{path} has no relprop metadata (checkpoint['relprop']['config']); it was not written by "
            "relprop's training (fit or ISNetModule)"
        )
    try:
        meta_config = TrainConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the stored training config is invalid: {exc}") from exc
    ckpt["relprop"] = {**meta, "config": meta_config}
    return ckpt


def model_state(ckpt: Mapping[str, Any]) -> dict[str, Tensor]:
    """The trained model's own state dict (ISNetModule keeps it under ``model.``)."""
    return {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


_ORIGINS: weakref.WeakKeyDictionary[nn.Module, tuple[Path, TrainConfig]] = weakref.WeakKeyDictionary()


def checkpoint_origin(model: nn.Module) -> tuple[Path, TrainConfig] | None:
    """``(path, training config)`` of the checkpoint whose weights :func:`load_checkpoint` or
    :func:`load_weights` put into ``model`` (None for other models). Nothing is stored on the model itself;
    :func:`~relprop.isnet.fit` uses it to warn about ISNet training that starts from a plain network."""
    return _ORIGINS.get(model)


def load_weights(model: nn.Module, path: str | Path) -> TrainConfig:
    """Load the trained weights of a relprop checkpoint (``last.ckpt`` / ``best.ckpt``, or a run folder holding
    ``last.ckpt``) into ``model`` strictly, as initial weights of another run; returns that run's config.
    Raises what :func:`read_checkpoint` raises, and CheckpointError if the weights do not fit."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    ckpt = read_checkpoint(path)
    try:
        model.load_state_dict(model_state(ckpt))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit the model: {exc}") from exc
    config: TrainConfig = ckpt["relprop"]["config"]
    _ORIGINS[model] = (path, config)
    return config


def load_checkpoint(
    path: str | Path, build: Callable[[Mapping[str, Any]], nn.Module]
) -> tuple[nn.Module, TrainConfig, dict[str, Any] | None]:
    """``(model, config, model_spec)`` from a checkpoint written by :func:`~relprop.isnet.fit` or
    :class:`~relprop.isnet.ISNetModule`: the model is ``build(model_spec)`` (``model_spec`` None if the run had
    none) with the trained weights loaded strictly, in the mode ``build`` left it in.

    Raises FileNotFoundError for a missing file and :class:`~relprop.errors.CheckpointError` for an unreadable
    one or one without relprop metadata."""
    ckpt = read_checkpoint(path)
    meta = ckpt["relprop"]
    spec = meta.get("model_spec")
    model = build(spec)
    try:
        model.load_state_dict(model_state(ckpt))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit the model built from {spec!r}: {exc}") from exc
    _ORIGINS[model] = (Path(path), meta["config"])
    return model, meta["config"], (dict(spec) if spec is not None else None)


__all__ = [
    "BEST_NAME", "CHECKPOINT_NAME", "FORMAT", "METRICS_NAME", "TUNING_NAME", "checkpoint_origin", "load_checkpoint",
    "load_weights", "model_state", "read_checkpoint", "remove_stale_temporaries", "rng_state", "set_rng_state",
    "write_json",
]  # fmt: skip
