"""Foreground masks: the one validator every mask consumer uses (ISNet losses and variants, ``rrr_penalty``,
background-share metrics, masked data sets), low in the package so that every layer can use it."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import InputError


class EmptyForegroundWarning(UserWarning):
    """Some samples of a batch have an all-background mask: their heatmap loss normalises by a zero foreground."""


def _values_problem(m: Tensor, what: str) -> str | None:
    """Why ``m`` (any dtype) is not a binary 0/1 foreground mask, with the fix; None if it is one."""
    if m.dtype == torch.bool:
        return None
    if m.is_complex():
        return f"{what} has the complex dtype {m.dtype}; use a bool or 0/1 float tensor"
    if m.is_floating_point() and not bool(torch.isfinite(m).all()):
        return f"{what} contains NaN or Inf values; a foreground mask holds 0 (background) and 1 (foreground) only"
    binary = (m == 0) | (m == 1)
    if bool(binary.all()):
        return None
    values = torch.unique(m[~binary].flatten()[:100_000].double())
    shown = ", ".join(f"{float(v):g}" for v in values[:4]) + (", ..." if values.numel() > 4 else "")
    if bool(((m == 0) | (m == 255)).all()):
        return (
            f"{what} is not binary: it holds 0 and 255 (an 8-bit mask image), and 1 - 255 would weight the "
            "foreground as background; pass (mask / 255) or (mask > 0)"
        )
    n = int((~binary).sum())
    return (
        f"{what} is not binary: it contains {n} values other than 0 and 1 (e.g. {shown}); "
        "threshold it first, e.g. (mask > 0.5), or for an 8-bit mask (mask / 255) or (mask > 0)"
    )


def check_mask(
    mask: Tensor,
    *,
    batch: int | None = None,
    size: Sequence[int] | None = None,
    what: str = "mask",
    of: str = "the batch",
) -> Tensor:
    """The foreground mask as a float32 (or the mask's float dtype) tensor of shape (B, 1, H, W), checked.

    The one validator of every function that takes a foreground mask (the heatmap losses, ``rrr_penalty``,
    ``isnet_step``, :func:`relprop.evaluation.background_share`, :class:`relprop.data.MaskedTensorDataset`).
    ``mask`` is a tensor (B, H, W), (B, 1, H, W) or (B, 1, 1, H, W) of bools or of the values 0 and 1 only
    (1 = foreground); a uint8 {0, 255} mask, values outside {0, 1} and NaN are an
    :class:`~relprop.errors.InputError` naming the fix. ``batch``: the number of samples it must have;
    ``size``: its (H, W); ``of`` names what ``batch`` counts in the message.
    """
    if not isinstance(mask, Tensor):
        raise InputError(f"{what} must be a torch.Tensor (B, 1, H, W) of 0/1 values, not {type(mask).__name__}")
    m = mask
    if m.dim() == 3:
        m = m.unsqueeze(1)
    if m.dim() == 5 and m.shape[2] == 1:
        m = m.squeeze(2)
    if m.dim() != 4 or m.shape[1] != 1:
        raise InputError(f"{what} must have shape (B, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
    if batch is not None and m.shape[0] != batch:
        raise InputError(f"{what} has {m.shape[0]} samples but {of} {'has' if of == 'the batch' else 'have'} {batch}")
    if size is not None:
        h, w = int(size[0]), int(size[1])
        H, W = int(m.shape[-2]), int(m.shape[-1])
        if (H, W) != (h, w):
            raise InputError(f"{what} is {H}x{W} but the input is {h}x{w}: give a mask of the input's size (H, W)")
    problem = _values_problem(m, what)
    if problem is not None:
        raise InputError(problem)
    return m if m.is_floating_point() else m.float()


def warn_empty_foreground(mask: Tensor, stacklevel: int = 3) -> None:
    """Warn (:class:`EmptyForegroundWarning`) naming how many samples of a checked mask (B, 1, ...) have no
    foreground pixel."""
    empty = int((mask.flatten(1).amax(1) == 0).sum()) if mask.numel() else 0
    if empty:
        warnings.warn(
            f"{empty} of {mask.shape[0]} samples in the batch have an empty foreground (an all-background mask): "
            "their heatmap loss normalises by a zero foreground and is very large; drop them from the data or "
            "give them a foreground",
            EmptyForegroundWarning,
            stacklevel=stacklevel,
        )


__all__ = ["EmptyForegroundWarning", "check_mask", "warn_empty_foreground"]
