"""The affine map z = W a + b of a ``linear`` step, its transpose, and BatchNorm folding.

The user's model is never modified: folding is computed functionally from the live parameters, so it stays
correct and differentiable while the model trains.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .batchnorm import bn_affine
from .kinds import BATCHNORM_MODULES
from .norms import FixedNorm

if TYPE_CHECKING:
    from .steps import Step


class LinearMap:
    """The affine map z = W a + b of a linear step, and its transpose, with BatchNorm folded.

    ``forward(x, weight, bias)`` evaluates the step's map with other parameters (rules modify
    them); ``transpose(s, weight, like)`` computes Wᵀ s, the input-gradient of the map.
    For parameter-free maps (average pooling) ``weight`` is ``None`` and the map is the step's
    own function; its weights are non-negative.

    A following BatchNorm (scale σ, shift τ per output channel) is folded into the weights, W' = σ ⊙ W and
    b' = σ ⊙ b + τ, when ``fold_weights`` (rules that modify weights, W'⁺ etc., need the folded ones; in eval
    mode without a graph the fold is cached). Otherwise ``out_scale`` = σ is kept apart and the map is
    z = σ ⊙ (W x) + b': the same linear map, but where the fold is recomputed every call (training) it costs an
    elementwise product on the activations instead of one on every weight, and its gradient likewise.
    """

    def __init__(self, step: Step, a: Tensor, z: Tensor, env: dict[Any, Any], fold_weights: bool = True) -> None:
        self.step = step
        module = step.module
        self.module = module
        self._pool_call = None
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        #: per-output-channel scale σ applied after W (a BatchNorm kept apart from the weights), or None
        self.out_scale: Tensor | None = None
        #: the input is known to be non-negative (True), known not to be (False), or unknown (None)
        self.input_nonneg: bool | None = None
        #: no relevance can arrive at negative outputs (the step feeds only ReLUs)
        self.negative_outputs_silent = False
        #: relevance at the output vanishes wherever the output is zero (all consumers multiply by it)
        self.output_proportional = False
        #: the ``z`` given to the rule is never negative (the forward pass kept relu(z) in its place, which
        #: every rule may use where no relevance arrives at z < 0)
        self.output_nonneg = False
        self._norm: FixedNorm | None = None
        if step.kind == "avgpool":
            self._pool_call = step.call
            self._env = env
            self._in_node = step.inputs[0].node
            self._version: tuple[Any, ...] | None = None
            return
        if step.kind == "normalise":  # statistics fixed at this input: an affine map without weights to modify
            assert step.norm is not None
            self._norm = step.norm.fixed(env, a)
            self._version = None
            return
        assert module is not None
        bn = module if isinstance(module, BATCHNORM_MODULES) else step.batchnorm
        tensors = [t for m in (module, bn) if m is not None for t in (*m.parameters(), *m.buffers())]
        batch_stats = bn is not None and (bn.training or bn.running_mean is None)
        self._version = None if batch_stats else tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        if getattr(module, "stand_in", False):  # a functional layer: its weight is a parameter, or computed
            own = [t for t in (_weight(module), _bias(module)) if t is not None]
            params = all(isinstance(t, nn.Parameter) for t in own)
            self._version = (*self._version, *((t.data_ptr(), t._version, t.dtype) for t in own)) \
                if params and self._version is not None else None  # fmt: skip
        if isinstance(module, BATCHNORM_MODULES):
            stats = env.get((step.node, "stats"))
            self.weight, self.bias = self.modified("affine", lambda: bn_affine(module, a, stats))
        elif step.batchnorm is not None:
            bn_mod = step.batchnorm
            pre = env.get(step.pre) if step.pre is not None else None
            stats = env.get((step.node, "stats"))
            w0, b0 = _weight(module), _bias(module)

            def fold() -> tuple[Tensor, Tensor]:
                scale, shift = bn_affine(bn_mod, pre, stats)
                return fold_affine(module, w0, b0, scale, shift)

            if fold_weights or (self._version is not None and not torch.is_grad_enabled()):
                self.weight, self.bias = self.modified("fold", fold)
            else:
                scale, shift = bn_affine(bn_mod, pre, stats)
                self.weight, self.out_scale = w0, scale
                self.bias = shift if b0 is None else b0 * scale + shift
        else:
            self.weight, self.bias = _weight(module), _bias(module)

    def modified(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()``, cached across calls while parameters are unchanged and no graph is recorded. The cache
        belongs to the module (see :func:`modified_cache`), so every explainer of a model shares it."""
        if self._version is None or torch.is_grad_enabled():
            return make()
        cache = modified_cache(self.module)
        full_key = (key, self.step.batchnorm)  # the module itself: its id cannot be reused while cached
        hit = cache.get(full_key)
        if hit is not None and hit[0] == self._version:
            return hit[1]
        value = make()
        cache[full_key] = (self._version, value)
        return value

    # z = W x + b
    def forward(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        m = self.module
        if self._norm is not None:
            return self._norm.forward(x)
        if self._pool_call is not None:
            env = dict(self._env)
            env[self._in_node] = x
            return self._pool_call(env)
        if isinstance(m, BATCHNORM_MODULES):
            assert weight is not None
            shape = (1, -1) + (1,) * (x.dim() - 2)
            z = x * weight.view(shape)
            return z + bias.view(shape) if bias is not None else z
        if self.out_scale is not None:
            z = self._raw(x, weight, None) * self._channel(self.out_scale, x.dim())
            return z if bias is None else z + self._channel(bias, x.dim())
        return self._raw(x, weight, bias)

    @staticmethod
    def _channel(v: Tensor, dim: int) -> Tensor:
        return v.view((1, -1) + (1,) * (dim - 2))

    def _raw(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        m = self.module
        assert weight is not None
        if isinstance(m, nn.Linear):
            return F.linear(x, weight, bias)
        assert isinstance(m, (nn.modules.conv._ConvNd,))
        nd = x.dim() - 2
        fn: Callable[..., Tensor]
        if m.transposed:
            fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
            padding = cast(tuple[int, ...], m.padding)  # transposed convolutions take no padding strings
            return fn(x, weight, bias, m.stride, padding, m.output_padding, m.groups, m.dilation)
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
        return fn(x, weight, bias, m.stride, m.padding, m.dilation, m.groups)  # padding may be "same"/"valid"

    # Wᵀ s, shaped like the input ``like``
    def transpose(self, s: Tensor, weight: Tensor | None, like: Tensor) -> Tensor:
        m = self.module
        if self._norm is not None:
            return self._norm.transpose(s)
        if self._pool_call is not None:
            with torch.enable_grad():
                x = like.detach().requires_grad_(True)
                z = self.forward(x, None, None)
                (g,) = torch.autograd.grad(z, x, s, create_graph=torch.is_grad_enabled() and s.requires_grad)
            if not s.requires_grad:
                g = g.detach()
            return g if g.is_contiguous() else g.contiguous()  # (sums give expanded gradients; rules write in place)
        if isinstance(m, BATCHNORM_MODULES):
            assert weight is not None
            return s * weight.view((1, -1) + (1,) * (s.dim() - 2))
        if self.out_scale is not None:
            s = s * self._channel(self.out_scale, s.dim())
        if isinstance(m, nn.Linear):
            assert weight is not None
            return s.matmul(weight)
        assert isinstance(m, nn.modules.conv._ConvNd) and weight is not None
        nd = like.dim() - 2
        padding = m.padding
        if isinstance(padding, str):
            padding = (
                tuple(0 for _ in range(nd))
                if padding == "valid"
                else tuple((k - 1) * d // 2 for k, d in zip(m.kernel_size, m.dilation))
            )
        out_pad = list(m.output_padding) if m.transposed else [0] * nd
        if m.transposed:
            # input-gradient of a transposed convolution is the plain convolution
            fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
            return fn(s, weight, None, m.stride, padding, m.dilation, m.groups)
        return torch.ops.aten.convolution_backward(
            s, like, weight, None, list(m.stride), list(padding), list(m.dilation), False, out_pad,
            m.groups, [True, False, False],
        )[0]  # fmt: skip


_MODIFIED: weakref.WeakKeyDictionary[nn.Module, dict[Any, tuple[Any, Any]]] = weakref.WeakKeyDictionary()


def modified_cache(module: nn.Module | None) -> dict[Any, tuple[Any, Any]]:
    """Modified weights derived from ``module``'s parameters (W⁺, folded BatchNorm, ...), keyed by what they are
    and stamped with the parameters' versions; held weakly by module (never keeps a model alive), shared by
    every explainer of the model so that two of them do not keep two copies."""
    if module is None:
        return {}
    return _MODIFIED.setdefault(module, {})


def _weight(module: nn.Module) -> Tensor:
    w = module.weight
    assert isinstance(w, Tensor), f"{type(module).__name__} has no weight tensor"
    return w


def _bias(module: nn.Module) -> Tensor | None:
    b = getattr(module, "bias", None)
    return b if isinstance(b, Tensor) else None


def fold_affine(module: nn.Module, w: Tensor, b: Tensor | None, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Fold an elementwise affine map (scale, shift) that follows ``module`` into its weights."""
    if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
        g = module.groups
        cin = w.shape[0]
        wg = w.reshape(g, cin // g, w.shape[1], *w.shape[2:])
        sg = scale.reshape(g, 1, -1, *([1] * (w.dim() - 2)))
        w2 = (wg * sg).reshape(w.shape)
    else:
        w2 = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    b2 = shift if b is None else b * scale + shift
    return w2, b2


__all__ = ["LinearMap", "bn_affine", "fold_affine"]
