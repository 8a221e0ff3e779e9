"""Normalisation layers as the engine sees them: with their statistics held at the values of the forward pass,
an affine map of the input.

LayerNorm, GroupNorm and instance norm (with input statistics) keep the mean subtraction, which is linear:
``y = (x − mean(x)) / σ₀ ⊙ w + b`` with σ₀ the forward pass's standard deviation (the division is the only
non-linear part; holding it fixed is AttnLRP's identity rule for the normalisation). RMSNorm is
``y = x / rms₀ ⊙ w``. Functional batch norm is elementwise, ``y = (x − μ₀) / σ₀ ⊙ w + b``, with the running
statistics in eval mode and the batch's (fixed) in training mode, as for BatchNorm modules. Every map equals the
layer's output at the forward pass's input; its transpose is written out (no autograd).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

Env = dict[Any, Any]

_PARAMS = {
    "layer_norm": ("normalized_shape", "weight", "bias", "eps"),
    "group_norm": ("num_groups", "weight", "bias", "eps"),
    "rms_norm": ("normalized_shape", "weight", "eps"),
    "batch_norm": ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    "instance_norm": ("running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps"),
    "normalize": ("p", "dim", "eps"),
    "affine": ("scale", "shift"),
}
_DEFAULTS: dict[str, Any] = {
    "weight": None, "bias": None, "eps": 1e-5, "running_mean": None, "running_var": None, "training": False,
    "momentum": 0.1, "use_input_stats": True, "p": 2.0, "dim": 1,
}  # fmt: skip


@dataclass
class FixedNorm:
    """A normalisation with fixed statistics: ``forward(x) = (x − centre(x)) ⊙ scale + shift`` and its
    transpose. ``centre`` subtracts the mean over ``dims`` (after grouping the channels into ``groups``) or,
    with ``dims`` empty, the constant ``mean``."""

    scale: Tensor  # broadcast against the (grouped) input
    shift: Tensor | None
    dims: tuple[int, ...]
    mean: Tensor | None
    groups: int | None
    weight: Tensor | None  # per-channel weight applied after grouping (group / instance norm)

    def _grouped(self, x: Tensor) -> Tensor:
        return x if self.groups is None else x.reshape(x.shape[0], self.groups, -1)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        g = self._grouped(x)
        centred = g - g.mean(self.dims, keepdim=True) if self.dims else (g if self.mean is None else g - self.mean)
        y = (centred * self.scale).reshape(shape)
        if self.weight is not None:
            y = y * _channels(self.weight, len(shape))
        return y if self.shift is None else y + self.shift

    def transpose(self, s: Tensor) -> Tensor:
        shape = s.shape
        if self.weight is not None:
            s = s * _channels(self.weight, len(shape))
        t = self._grouped(s) * self.scale
        if self.dims:
            t = t - t.mean(self.dims, keepdim=True)
        return t.reshape(shape)


def _channels(v: Tensor, dim: int) -> Tensor:
    return v.reshape((1, -1) + (1,) * (dim - 2))


def _rsqrt_var(x: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    x = x.detach()
    centred = x - x.mean(dims, keepdim=True)
    return torch.rsqrt(centred.square().mean(dims, keepdim=True) + eps)


def fixed_norm(name: str, x0: Tensor, p: dict[str, Any]) -> FixedNorm:
    """The normalisation ``name`` (``layer_norm``, ``group_norm``, ``rms_norm``, ``batch_norm``, ``instance_norm``)
    with arguments ``p``, its statistics fixed at the input ``x0``."""
    eps = p.get("eps")
    eps = 1e-5 if eps is None else float(eps)
    w, b = p.get("weight"), p.get("bias")
    if name == "affine":  # y = shift + scale ⊙ x (torch.addcmul with constant shift and scale)
        return FixedNorm(p["scale"] * p.get("value", 1), p.get("shift"), (), None, None, None)
    if name == "normalize":  # y = x / max(‖x‖_p, eps), the norm fixed
        norm = x0.detach().norm(float(p.get("p", 2.0)), dim=int(p.get("dim", 1)), keepdim=True)
        return FixedNorm(1.0 / norm.clamp_min(float(p.get("eps") or 1e-12)), None, (), None, None, None)
    if name in ("layer_norm", "rms_norm"):
        shape = p["normalized_shape"]
        n = 1 if isinstance(shape, int) else len(shape)
        dims = tuple(range(-n, 0))
        if name == "rms_norm":
            if p.get("eps") is None:
                eps = torch.finfo(x0.dtype).eps
            scale = torch.rsqrt(x0.detach().square().mean(dims, keepdim=True) + eps)
            return FixedNorm(scale if w is None else scale * w, None, (), None, None, None)
        scale = _rsqrt_var(x0, dims, eps)
        return FixedNorm(scale if w is None else scale * w, b, dims, None, None, None)
    if name == "group_norm" or (name == "instance_norm" and p.get("use_input_stats", True)):
        groups = int(p["num_groups"]) if name == "group_norm" else x0.shape[1]
        g = x0.reshape(x0.shape[0], groups, -1)
        scale = _rsqrt_var(g, (-1,), eps)
        shift = None if b is None else _channels(b, x0.dim())
        return FixedNorm(scale, shift, (-1,), None, groups, w)
    # batch norm (and instance norm with running statistics): elementwise per channel
    rm, rv = p.get("running_mean"), p.get("running_var")
    if name == "batch_norm" and (p.get("training") or rm is None):
        dims = (0, *range(2, x0.dim()))
        x = x0.detach()
        mean = x.mean(dims, keepdim=True)
        inv = torch.rsqrt((x - mean).square().mean(dims, keepdim=True) + eps)
    else:
        assert rm is not None and rv is not None
        mean, inv = _channels(rm, x0.dim()), _channels(torch.rsqrt(rv + eps), x0.dim())
    scale = inv if w is None else inv * _channels(w, x0.dim())
    return FixedNorm(scale, None if b is None else _channels(b, x0.dim()), (), mean, None, None)


@dataclass
class NormSpec:
    """How a ``normalise`` step reads its arguments: the normalisation's name and, per parameter, an fx node
    (read from the forward pass's values), a constant, or a getter on the module."""

    name: str
    args: dict[str, Any]
    module: nn.Module | None = None

    def params(self, env: Env) -> dict[str, Any]:
        if self.module is not None:
            return {k: getattr(self.module, k, _DEFAULTS.get(k)) for k in _PARAMS[self.name]} | self.args
        return {k: fx.node.map_arg(v, lambda n: env[n]) if isinstance(v, (fx.Node, list, tuple)) else v
                for k, v in self.args.items()}  # fmt: skip

    def fixed(self, env: Env, x0: Tensor) -> FixedNorm:
        return fixed_norm(self.name, x0, self.params(env))


_MODULE_NAMES: dict[type[nn.Module], str] = {nn.LayerNorm: "layer_norm", nn.GroupNorm: "group_norm"}
if hasattr(nn, "RMSNorm"):
    _MODULE_NAMES[nn.RMSNorm] = "rms_norm"


def module_norm(module: nn.Module) -> NormSpec:
    """The spec of a LayerNorm / GroupNorm / RMSNorm module."""
    name = next(v for k, v in _MODULE_NAMES.items() if isinstance(module, k))
    extra: dict[str, Any] = {}
    if name == "layer_norm" and not getattr(module, "elementwise_affine", True):
        extra = {"weight": None, "bias": None}
    if name == "group_norm" and not getattr(module, "affine", True):
        extra = {"weight": None, "bias": None}
    if name == "rms_norm" and getattr(module, "weight", None) is None:
        extra = {"weight": None}
    return NormSpec(name, extra, module)


_FUNCTIONS: dict[Callable[..., Any], str] = {
    F.layer_norm: "layer_norm", F.group_norm: "group_norm", F.batch_norm: "batch_norm",
    F.instance_norm: "instance_norm", F.normalize: "normalize",
}  # fmt: skip
if hasattr(F, "rms_norm"):
    _FUNCTIONS[F.rms_norm] = "rms_norm"


def function_norm(target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[NormSpec, Any]:
    """The spec of a functional normalisation call and its input argument (an fx node)."""
    name = _FUNCTIONS[target]
    bound = inspect.signature(target).bind(*args, **kwargs)
    values = dict(bound.arguments)
    x = values.pop("input")
    return NormSpec(name, {k: values.get(k, _DEFAULTS.get(k)) for k in _PARAMS[name]}), x


__all__ = ["FixedNorm", "NormSpec", "fixed_norm", "function_norm", "module_norm"]
