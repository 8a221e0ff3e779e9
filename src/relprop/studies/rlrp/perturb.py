"""Model perturbations of the R-LRP study: multiplicative weight noise, biases nudged so that
pre-activations sit at ≈ 0, and the top-down re-initialisation of the randomisation check."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ...composites import WEIGHTED_TYPES


def bias_of(module: nn.Module) -> Tensor:
    """The bias tensor of a Conv, Linear or BatchNorm module (which :func:`biased_modules` returns)."""
    bias = module.bias
    if not isinstance(bias, Tensor):
        raise TypeError(f"{type(module).__name__} has no bias tensor (got {type(bias).__name__})")
    return bias


def weight_noise_copy(model: nn.Module, level: float, seed: int) -> nn.Module:
    """A copy of ``model`` with every parameter multiplied by (1 + u), u ~ U(-level, level)."""
    m = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.0 + level * (torch.rand(p.shape, generator=gen, dtype=p.dtype) * 2 - 1))
    return m


def biased_modules(model: nn.Module, x: Tensor) -> list[nn.Module]:
    """Modules with a bias whose output is a hidden pre-activation (Conv, Linear, BatchNorm), in call order,
    without the last one called (the logit layer)."""
    order: list[nn.Module] = []
    cands = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in cands]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    seen: list[nn.Module] = []
    for m in order:
        if m not in seen:
            seen.append(m)
    return [m for m in seen[:-1] if getattr(m, "bias", None) is not None]


def nudge_biases(model: nn.Module, modules: Sequence[nn.Module], x1: Tensor, delta: float, limit: float) -> int:
    """Shift biases (in place) so that, on the single input ``x1``, in each channel of each module the
    pre-activation with the smallest |z| becomes +delta · std(z) (only channels where that |z| is below
    limit · std(z), so the change is tiny). Applied during one forward pass, so each layer sees the already
    nudged layers below it. Returns the number of nudged neurons."""
    count = 0

    def hook(mod: nn.Module, inputs: Any, z: Tensor) -> Tensor:
        nonlocal count
        zc = z[0].reshape(z.shape[1], -1)
        idx = zc.abs().argmin(1, keepdim=True)
        zmin = zc.gather(1, idx)[:, 0]
        s = zc.std()
        ok = zmin.abs() <= limit * s
        shift = torch.where(ok, delta * s - zmin, torch.zeros_like(zmin))
        bias_of(mod).add_(shift)
        count += int(ok.sum())
        return z + shift.view(1, -1, *([1] * (z.dim() - 2)))

    hooks = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in hooks:
            h.remove()
    return count


def randomised_copies(model: nn.Module, seed: int) -> tuple[nn.Module, nn.Module]:
    """Two copies of ``model``: the top weighted layer re-initialised (``reset_parameters``), and every
    weighted layer re-initialised from the top down (the first and last steps of
    :func:`relprop.evaluation.metrics.randomisation_check`, without the layers in between)."""
    work = copy.deepcopy(model)
    layers = [m for m in work.modules() if isinstance(m, WEIGHTED_TYPES)]
    copies: list[nn.Module] = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for group in (layers[-1:], layers[:-1]):
            with torch.no_grad():
                for m in reversed(group):
                    m.reset_parameters()  # type: ignore[operator]
            copies.append(copy.deepcopy(work) if not copies else work)
    return copies[0], copies[1]


__all__ = ["bias_of", "biased_modules", "nudge_biases", "randomised_copies", "weight_noise_copy"]
