"""What a relevance pass starts from: the output relevance for a target, in the one form the engine uses."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Union

import torch
from torch import Tensor

from ..errors import TargetError

#: a class index, indices per sample, ``"predicted"``, a float tensor (B, C) used as the output relevance, or
#: a callable on the logits returning either tensor form
Target = Union[int, str, Tensor, Callable[[Tensor], Tensor]]


def output_relevance(logits: Tensor, target: Target, seed: str = "logit") -> tuple[Tensor, Tensor | None]:
    """The output relevance (B, C) for ``target`` and the explained class per sample (None when the target
    is itself the output relevance). ``seed="logit"`` puts the explained logit's value on its class,
    ``"unit"`` puts 1 there."""
    b, c = logits.shape
    if callable(target) and not isinstance(target, Tensor):
        target = target(logits.detach())
        if not isinstance(target, Tensor):
            raise TargetError(f"the target callable returned {type(target).__name__}, expected a tensor")
    if isinstance(target, str):
        if target != "predicted":
            raise TargetError(f"target={target!r}: the only string target is 'predicted'")
        idx = logits.detach().argmax(1)
    elif isinstance(target, bool):
        raise TargetError("target must be a class index, not a bool")
    elif isinstance(target, numbers.Integral):  # int, numpy integers
        idx = torch.full((b,), int(target), dtype=torch.long, device=logits.device)
    elif isinstance(target, Tensor):
        if target.is_floating_point():
            if target.shape != logits.shape:
                raise TargetError(
                    f"a float target is the output relevance and must have the logits' shape "
                    f"{tuple(logits.shape)}, got {tuple(target.shape)}"
                )
            return target.to(logits), None
        idx = target.to(device=logits.device, dtype=torch.long).reshape(-1)
        if idx.numel() == 1:
            idx = idx.expand(b)
        if idx.numel() != b:
            raise TargetError(f"target has {idx.numel()} indices but the batch has {b} samples")
    else:
        raise TargetError(f"unsupported target {target!r}: use an int, 'predicted', a tensor or a callable")
    bad = (idx < 0) | (idx >= c)
    if bool(bad.any()):
        value = int(idx[bad][0])
        raise TargetError(f"target class {value} is out of range: the model has {c} outputs (0..{c - 1})")
    onehot = torch.nn.functional.one_hot(idx, c).to(logits.dtype)
    return (onehot * logits if seed == "logit" else onehot), idx


__all__ = ["Target", "output_relevance"]
