"""The closed set of step kinds, and which torch modules, functions and methods fall into each.

``input``, ``const``, ``meta`` (sizes, shapes), ``output``: structure, no relevance rule.
``linear``: Linear, Conv, ConvTranspose (with a following BatchNorm folded in), stand-alone BatchNorm.
``avgpool``: parameter-free linear maps with non-negative weights (average pooling, ``mean``).
``add``: ``x + y`` / ``x - y`` of two tensors (residual connections).
``activation``: elementwise non-linearities.
``pass``: elementwise maps y = c ⊙ x (dropout, identity, casts, scaling by a constant).
``maxpool``: max pooling (relevance to each window's winner).
``route``: maps that move values without mixing them (flatten, view, permute, cat, indexing, adaptive max
pooling); relevance follows their gradient.
``product``: a product of two input-dependent tensors, bilinear in them (gating ``x * gate(x)``, squeeze-excitation,
``matmul`` / ``bmm`` / two-operand ``einsum``, attention's q·kᵀ and attention × v).
``softmax``: softmax over one dimension (attention weights).
``normalise``: LayerNorm, GroupNorm, RMSNorm and functional batch norm: with their statistics held fixed, an
affine map of the input.

Steps whose inputs do not depend on the explained input at all (weights sliced or computed from parameters,
masks, position embeddings) are ``const``: evaluated in the forward pass, crossed by no relevance.

Besides its kind, a step carries static *facts* (see :class:`StepFacts`) that the engine combines with the
rules' declarations: whether its output is never negative, whether zero inputs give zero outputs, whether it
is ReLU-like. They are properties of the operation, known here, so no other layer tests names.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

LINEAR_MODULES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
BATCHNORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
AVGPOOL_MODULES = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
ROUTE_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Unflatten,
)
PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


def _softplus(m: nn.Softplus, x: Tensor) -> Tensor:
    return F.softplus(x, m.beta, m.threshold)


def _hardtanh(m: nn.Hardtanh, x: Tensor) -> Tensor:
    return F.hardtanh(x, m.min_val, m.max_val)


# Activation modules and the out-of-place call we make for them (the user's module may be in-place,
# which would overwrite a pre-activation we keep for the backward pass).
ACTIVATION_MODULES: dict[type[nn.Module], Callable[[nn.Module, Tensor], Tensor]] = {
    nn.ReLU: lambda m, x: torch.relu(x),
    nn.ReLU6: lambda m, x: F.relu6(x),
    nn.LeakyReLU: lambda m, x: F.leaky_relu(x, cast(nn.LeakyReLU, m).negative_slope),
    nn.ELU: lambda m, x: F.elu(x, cast(nn.ELU, m).alpha),
    nn.CELU: lambda m, x: F.celu(x, cast(nn.CELU, m).alpha),
    nn.SELU: lambda m, x: F.selu(x),
    nn.GELU: lambda m, x: F.gelu(x, approximate=cast(nn.GELU, m).approximate),
    nn.SiLU: lambda m, x: F.silu(x),
    nn.Mish: lambda m, x: F.mish(x),
    nn.Sigmoid: lambda m, x: torch.sigmoid(x),
    nn.Tanh: lambda m, x: torch.tanh(x),
    nn.Softplus: lambda m, x: _softplus(cast(nn.Softplus, m), x),
    nn.Hardtanh: lambda m, x: _hardtanh(cast(nn.Hardtanh, m), x),
    nn.Hardswish: lambda m, x: F.hardswish(x),
    nn.Hardsigmoid: lambda m, x: F.hardsigmoid(x),
    nn.PReLU: lambda m, x: m(x),
}

ACTIVATION_FUNCTIONS: set[Any] = {
    F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu,
    F.silu, F.mish, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus, F.hardtanh,
    F.hardswish, F.hardsigmoid,
}  # fmt: skip
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}
# Functions that only move values around; relevance follows their gradient.
ROUTE_FUNCTIONS: set[Any] = {
    torch.flatten, torch.reshape, torch.cat, torch.concat, torch.stack, torch.permute, torch.transpose,
    torch.squeeze, torch.unsqueeze, torch.chunk, torch.split, operator.getitem, F.max_pool1d,
    F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    torch.movedim, F.pad, torch.unbind, torch.roll, torch.swapaxes, torch.swapdims, torch.flip, torch.narrow,
    torch.select, torch.tile, torch.index_select, torch.split_with_sizes, torch.tensor_split, torch.hstack,
    torch.vstack, torch.t,
}  # fmt: skip
ROUTE_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
    "chunk", "split", "view_as", "reshape_as", "expand", "expand_as", "movedim", "t", "unbind", "roll", "swapaxes",
    "swapdims", "flip", "narrow", "select", "repeat", "tile", "unflatten", "index_select", "tensor_split",
    "moveaxis", "unfold",
}  # fmt: skip
MAXPOOL_FUNCTIONS: dict[Any, Any] = {
    F.max_pool1d: F.max_pool1d, F.max_pool2d: F.max_pool2d, F.max_pool3d: F.max_pool3d,
    torch.max_pool1d: F.max_pool1d, torch.max_pool2d: F.max_pool2d, torch.max_pool3d: F.max_pool3d,
}  # fmt: skip
AVGPOOL_FUNCTIONS: set[Any] = {
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, torch.mean,
}  # fmt: skip
AVGPOOL_METHODS = {"mean"}
PASS_FUNCTIONS: set[Any] = {
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, operator.neg, torch.neg, operator.pos,
}  # fmt: skip
PASS_METHODS = {"clone", "float", "double", "half", "bfloat16", "to", "type_as"}
PRODUCT_FUNCTIONS: set[Any] = {operator.mul, operator.imul, torch.mul, operator.matmul, torch.matmul, torch.bmm,
                                torch.einsum}  # fmt: skip
PRODUCT_METHODS = {"mul", "mul_", "matmul", "bmm"}
SOFTMAX_FUNCTIONS: set[Any] = {F.softmax, torch.softmax}
SOFTMAX_METHODS = {"softmax"}
NORM_FUNCTIONS: set[Any] = {F.layer_norm, F.group_norm, F.batch_norm, F.instance_norm, F.normalize} | (
    {F.rms_norm} if hasattr(F, "rms_norm") else set()  # torch >= 2.4
)
NORM_MODULES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)
#: functional layers with a weight argument (a parameter or a tensor computed from parameters)
LINEAR_FUNCTIONS: set[Any] = {F.linear, F.conv1d, F.conv2d, F.conv3d}
ADD_FUNCTIONS: set[Any] = {operator.add, operator.iadd, torch.add}
SUB_FUNCTIONS: set[Any] = {operator.sub, operator.isub, torch.sub}
META_METHODS = {"size", "dim", "numel"}
META_FUNCTIONS: set[Any] = {getattr, len}
INPLACE_METHODS = {"relu_": "relu", "sigmoid_": "sigmoid", "tanh_": "tanh", "add_": "add"}

#: step kinds, in the order of the module docstring
KINDS = (
    "input", "const", "meta", "output", "linear", "avgpool", "add", "activation", "pass", "maxpool", "route", "product",
    "softmax", "normalise",
)  # fmt: skip

_RELU_LIKE = {"relu", "relu_", "relu6"}
_ZERO_AT_ZERO = _RELU_LIKE | {
    "leakyrelu", "leaky_relu", "elu", "celu", "selu", "gelu", "silu", "mish", "tanh", "tanh_", "hardtanh",
    "hardswish", "prelu",
}  # fmt: skip
_NONNEG_ACTIVATIONS = _RELU_LIKE | {"sigmoid", "sigmoid_", "softplus", "hardsigmoid"}
#: bounded in [0, 1]: such an output multiplying another tensor is a gate
_GATES = {"sigmoid", "sigmoid_", "hardsigmoid", "softmax"}
_SCALING_CALLS = {"clone", "float", "double", "half", "bfloat16", "to", "type_as", "contiguous", "dropout",
                  "dropout1d", "dropout2d", "dropout3d", "stochastic_depth", "mul", "truediv", "div", "neg",
                  "pos"}  # fmt: skip
DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
DROPOUT_FUNCTIONS = {"dropout", "dropout1d", "dropout2d", "dropout3d", "stochastic_depth"}


@dataclass(frozen=True)
class StepFacts:
    """What is known about a step's operation before running it.

    Attributes:
        nonneg: the output is never negative, whatever the input (ReLU, sigmoid, ...).
        keeps_nonneg: the output is non-negative when every input is (pooling, routing, sums, positive scaling).
        zero_at_zero: an input element that is zero contributes zero (f(0) = 0 elementwise, or values only moved):
            relevance that vanishes on zero outputs then vanishes on zero inputs.
        relu_like: y = 0 exactly where x <= 0 and y = x elsewhere (up to a clip): ReLU, ReLU6.
        gate: the output lies in [0, 1] (sigmoid, hard sigmoid, softmax): multiplying another tensor, it is a
            gate, and the product's other factor is the signal.
    """

    nonneg: bool = False
    keeps_nonneg: bool = False
    zero_at_zero: bool = False
    relu_like: bool = False
    gate: bool = False


NO_FACTS = StepFacts()
MOVES_VALUES = StepFacts(keeps_nonneg=True, zero_at_zero=True)


def activation_facts(name: str) -> StepFacts:
    """Facts of an elementwise activation by its lower-case module or function name."""
    return StepFacts(
        nonneg=name in _NONNEG_ACTIVATIONS, zero_at_zero=name in _ZERO_AT_ZERO, relu_like=name in _RELU_LIKE,
        gate=name in _GATES,
    )


def pass_facts(name: str, constants: list[Any]) -> StepFacts:
    """Facts of a ``pass`` step ``name`` (a call with the non-tensor arguments ``constants``; a tensor constant,
    e.g. a layer scale, is passed as None): y = c ⊙ x with c != 0 keeps zeros; positive c keeps signs."""
    if name not in _SCALING_CALLS or any(isinstance(c, (int, float)) and c == 0 for c in constants):
        return NO_FACTS
    if any(c is None for c in constants):  # a tensor factor: zeros stay zero (for products), signs unknown
        return StepFacts(zero_at_zero=name in ("mul", "div", "truediv"))
    positive = (
        all(isinstance(c, (int, float)) and c > 0 for c in constants) if name in ("mul", "truediv", "div") else True
    )
    return StepFacts(keeps_nonneg=positive and name != "neg", zero_at_zero=True)
