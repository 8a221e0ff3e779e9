"""Checks and conversions shared by the metrics: batches, targets, logits, the model's mode."""

from __future__ import annotations

import warnings
from typing import Any, TypeAlias

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..errors import InputError, TargetError

__all__ = ["TargetLike", "check_batch", "check_range", "logits_of", "targets_of", "warn_training"]

TargetLike: TypeAlias = int | str | Tensor
"""A class index, a LongTensor (B,) of indices, or ``"predicted"``."""

# what targets_of accepts beyond TargetLike: numpy indices (Quantus passes them)
_IndexLike: TypeAlias = TargetLike | np.integer | np.ndarray


def check_batch(x: Any, what: str = "x") -> Tensor:
    """``x`` itself if it is a floating-point batch (B, ...); an :class:`InputError` otherwise."""
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor, not {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{what} has dtype {x.dtype}; a floating-point tensor is needed")
    if x.dim() < 2:
        raise InputError(f"{what} must be a batch of shape (B, ...), got shape {tuple(x.shape)}")
    return x


def targets_of(target: _IndexLike, b: int, device: torch.device, logits: Tensor | None = None) -> Tensor:
    """Target class per sample as a LongTensor (B,); ``"predicted"`` needs ``logits``."""
    if isinstance(target, str):
        if target != "predicted" or logits is None:
            raise TargetError(f"target={target!r}: use a class index, a LongTensor (B,) or 'predicted'")
        return logits.argmax(1)
    if isinstance(target, bool):
        raise TargetError("target must be a class index, not a bool")
    if isinstance(target, (int, np.integer)):
        return torch.full((b,), int(target), dtype=torch.long, device=device)
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(target)
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex():
            raise TargetError(f"target must hold class indices (an integer tensor), got dtype {target.dtype}")
        t = target.to(device=device, dtype=torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        if t.numel() != b:
            raise TargetError(f"target has {t.numel()} indices but the batch has {b} samples")
        return t
    raise TargetError(f"unsupported target {target!r}: use an int, a LongTensor (B,) or 'predicted'")


def check_range(t: Tensor, c: int) -> None:
    """A :class:`TargetError` unless every class index in ``t`` is in 0..c-1."""
    bad = (t < 0) | (t >= c)
    if bool(bad.any()):
        raise TargetError(f"target class {int(t[bad][0])} is out of range: the model has {c} outputs (0..{c - 1})")


def logits_of(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)``, checked to be logits of shape (B, C)."""
    out = model(x)
    if not isinstance(out, Tensor) or out.dim() != 2:
        got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise InputError(f"the model returned {got}; metrics need logits of shape (B, C)")
    return out


def warn_training(model: nn.Module, what: str, stacklevel: int = 3) -> None:
    """Warn that ``what`` runs a model in training mode (dropout and batch statistics change scores)."""
    if model.training:
        warnings.warn(
            f"{what}: the model is in training mode (dropout and batch statistics change the scores); "
            "call model.eval() first",
            stacklevel=stacklevel,
        )
