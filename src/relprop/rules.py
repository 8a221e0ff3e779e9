"""LRP rules: how relevance crosses one step of the relevance graph.

Notation for a linear step z = W a + b (Linear, Conv, folded BatchNorm): ``a`` is the step's input,
``z`` its output, ``R`` the relevance arriving at ``z``; W⁺ = max(W, 0), W⁻ = min(W, 0), likewise
a⁺, a⁻, b⁺, b⁻. ``stab(x) = x + ε·sign(x)`` with sign(0) = +1 (the ``stabilizer``). Every rule costs
at most one extra forward of the layer and one or two transposed products Wᵀ s, computed directly;
where the input is non-negative (after a ReLU) the rules skip their negative-input half, and where no
relevance arrives at negative outputs they skip the negative-output half.

The rules follow the formulas of Bach et al. (2015) and Montavon et al. (2017, 2019), in the generalised
form of the zennit library (which the tests use as the reference), so results agree with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .graph import LinearMap


def stabilize(x: Tensor, epsilon: float) -> Tensor:
    """x + ε·sign(x), with sign(0) = +1."""
    return x + torch.where(x >= 0, epsilon, -epsilon).to(x.dtype)


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """num / den, with 0 where den == 0 (differentiable: no NaN in either branch)."""
    zero = den == 0
    return num / torch.where(zero, torch.ones_like(den), den) * (~zero).to(num.dtype)


class Rule:
    """Base class. Subclasses implement the hooks for the step kinds they apply to."""

    #: short name shown in reports and error messages
    name: str = "rule"

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        raise NotImplementedError(f"rule {self!r} does not apply to linear or pooling steps")

    def add(self, parts: Sequence[Tensor], z: Tensor, R: Tensor) -> list[Tensor]:
        raise NotImplementedError(f"rule {self!r} does not apply to additions")

    def activation(self, fn: object, x: Tensor, y: Tensor, R: Tensor) -> Tensor:
        raise NotImplementedError(f"rule {self!r} does not apply to activations")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def _require_weight(rule: Rule, layer: LinearMap) -> Tensor:
    if layer.weight is None:
        raise NotImplementedError(
            f"rule {rule!r} needs a weighted layer, but step '{layer.step.name}' is a pooling step; "
            "use Norm() or Epsilon() there"
        )
    return layer.weight


def _nonneg(a: Tensor) -> bool:
    return bool((a >= 0).all())


class Epsilon(Rule):
    """LRP-ε: R_in = a ⊙ Wᵀ(R / stab(z)), z = W a + b.

    ``epsilon=0`` gives LRP-0 with 0/0 := 0 (see :class:`Zero`). ``ignore_bias=True`` uses z − b in
    the denominator, which makes the rule conservative (Σ R_in = Σ R).
    """

    name = "epsilon"

    def __init__(self, epsilon: float = 1e-6, ignore_bias: bool = False) -> None:
        if epsilon < 0:
            raise ValueError(f"Epsilon(epsilon={epsilon}): epsilon must be >= 0")
        self.epsilon = float(epsilon)
        self.ignore_bias = ignore_bias

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        if self.ignore_bias and layer.bias is not None:
            z = layer.forward(a, layer.weight, None)
        if self.epsilon == 0:
            s = safe_divide(R, z)
        else:
            s = R / stabilize(z, self.epsilon)
        return a * layer.transpose(s, layer.weight, a)

    def add(self, parts: Sequence[Tensor], z: Tensor, R: Tensor) -> list[Tensor]:
        s = safe_divide(R, z) if self.epsilon == 0 else R / stabilize(z, self.epsilon)
        return [p * s for p in parts]


class Zero(Epsilon):
    """LRP-0: R_in = a ⊙ Wᵀ(R / z), with 0/0 := 0."""

    name = "zero"

    def __init__(self, ignore_bias: bool = False) -> None:
        super().__init__(0.0, ignore_bias)


class Norm(Epsilon):
    """Proportional split for pooling and additions: R_i = x_i · R / stab(Σ x)."""

    name = "norm"

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__(stabilizer)


class _PosNeg(Rule):
    """Shared machinery of rules that treat positive and negative weights separately."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)

    def _weights(self, layer: LinearMap) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        w = _require_weight(self, layer)
        b = layer.bias

        def make() -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
            return (
                w.clamp(min=0),
                w.clamp(max=0),
                None if b is None else b.clamp(min=0),
                None if b is None else b.clamp(max=0),
            )

        return layer.modified("posneg", make)


class ZPlus(_PosNeg):
    """LRP-z⁺: R_in = a⁺ ⊙ W⁺ᵀ s + a⁻ ⊙ W⁻ᵀ s, s = R / stab(W⁺a⁺ + W⁻a⁻ + b⁺)."""

    name = "zplus"

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        wp, wn, bp, _ = self._weights(layer)
        if _nonneg(a):
            s = R / stabilize(layer.forward(a, wp, bp), self.stabilizer)
            return a * layer.transpose(s, wp, a)
        ap, an = a.clamp(min=0), a.clamp(max=0)
        s = R / stabilize(layer.forward(ap, wp, bp) + layer.forward(an, wn, None), self.stabilizer)
        return ap * layer.transpose(s, wp, a) + an * layer.transpose(s, wn, a)


class AlphaBeta(_PosNeg):
    """LRP-αβ: R_in = α (a⁺ ⊙ W⁺ᵀ s⁺ + a⁻ ⊙ W⁻ᵀ s⁺) − β (a⁺ ⊙ W⁻ᵀ s⁻ + a⁻ ⊙ W⁺ᵀ s⁻),
    s⁺ = R / stab(W⁺a⁺ + W⁻a⁻ + b⁺), s⁻ = R / stab(W⁻a⁺ + W⁺a⁻ + b⁻); α − β = 1."""

    name = "alphabeta"

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> None:
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
            raise ValueError(f"AlphaBeta(alpha={alpha}, beta={beta}): need alpha, beta >= 0 and alpha - beta = 1")
        super().__init__(stabilizer)
        self.alpha, self.beta = float(alpha), float(beta)

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        wp, wn, bp, bn = self._weights(layer)
        eps = self.stabilizer
        if _nonneg(a):
            zp = layer.forward(a, wp, bp)
            sp = R / stabilize(zp, eps)
            out = self.alpha * (a * layer.transpose(sp, wp, a))
            if self.beta != 0:
                zn = layer.forward(a, wn, bn)
                out = out - self.beta * (a * layer.transpose(R / stabilize(zn, eps), wn, a))
            return out
        ap, an = a.clamp(min=0), a.clamp(max=0)
        sp = R / stabilize(layer.forward(ap, wp, bp) + layer.forward(an, wn, None), eps)
        out = self.alpha * (ap * layer.transpose(sp, wp, a) + an * layer.transpose(sp, wn, a))
        if self.beta != 0:
            sn = R / stabilize(layer.forward(ap, wn, bn) + layer.forward(an, wp, None), eps)
            out = out - self.beta * (ap * layer.transpose(sn, wn, a) + an * layer.transpose(sn, wp, a))
        return out


class Gamma(Rule):
    """Generalised LRP-γ. With W_γ⁺ = W + γW⁺ and W_γ⁻ = W + γW⁻ (biases likewise):

    for outputs z > 0: s⁺ = R·[z>0] / stab(W_γ⁺a⁺ + W_γ⁻a⁻ + b_γ⁺),
    for outputs z < 0: s⁻ = R·[z<0] / stab(W_γ⁻a⁺ + W_γ⁺a⁻ + b_γ⁻),
    R_in = a⁺ ⊙ (W_γ⁺ᵀ s⁺ + W_γ⁻ᵀ s⁻) + a⁻ ⊙ (W_γ⁻ᵀ s⁺ + W_γ⁺ᵀ s⁻).

    On non-negative inputs this is Montavon et al.'s γ rule; the halves whose inputs or arriving
    relevance are all zero are skipped.
    """

    name = "gamma"

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6) -> None:
        if gamma < 0:
            raise ValueError(f"Gamma(gamma={gamma}): gamma must be >= 0")
        self.gamma = float(gamma)
        self.stabilizer = float(stabilizer)

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        w = _require_weight(self, layer)
        b, g = layer.bias, self.gamma

        def make() -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
            return (
                w + g * w.clamp(min=0),
                w + g * w.clamp(max=0),
                None if b is None else b + g * b.clamp(min=0),
                None if b is None else b + g * b.clamp(max=0),
            )

        wgp, wgn, bgp, bgn = layer.modified(f"gamma{g}", make)
        eps = self.stabilizer
        rp = R * (z > 0)
        rn = R * (z < 0)
        has_neg_out = bool(rn.any())
        if _nonneg(a):
            out = a * layer.transpose(rp / stabilize(layer.forward(a, wgp, bgp), eps), wgp, a)
            if has_neg_out:
                out = out + a * layer.transpose(rn / stabilize(layer.forward(a, wgn, bgn), eps), wgn, a)
            return out
        ap, an = a.clamp(min=0), a.clamp(max=0)
        sp = rp / stabilize(layer.forward(ap, wgp, bgp) + layer.forward(an, wgn, None), eps)
        out = ap * layer.transpose(sp, wgp, a) + an * layer.transpose(sp, wgn, a)
        if has_neg_out:
            sn = rn / stabilize(layer.forward(ap, wgn, bgn) + layer.forward(an, wgp, None), eps)
            out = out + ap * layer.transpose(sn, wgn, a) + an * layer.transpose(sn, wgp, a)
        return out


class ZBox(Rule):
    """LRP-z^B (box) for inputs bounded in [low, high]:
    R_in = a ⊙ Wᵀs − l ⊙ W⁺ᵀs − h ⊙ W⁻ᵀs, s = R / stab(z − (W⁺l + b⁺) − (W⁻h + b⁻)).

    ``low`` and ``high`` are floats or tensors broadcastable to the input (e.g. shape (1, C, 1, 1)
    for per-channel bounds of normalised images).
    """

    name = "zbox"

    def __init__(self, low: float | Tensor = 0.0, high: float | Tensor = 1.0, stabilizer: float = 1e-6) -> None:
        lo, hi = torch.as_tensor(low, dtype=torch.float64), torch.as_tensor(high, dtype=torch.float64)
        if bool((lo > hi).any()):
            raise ValueError(f"ZBox(low={low}, high={high}): low must not exceed high")
        self.low, self.high = low, high
        self.stabilizer = float(stabilizer)

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        w = _require_weight(self, layer)
        b = layer.bias
        low = torch.as_tensor(self.low, dtype=a.dtype, device=a.device).expand_as(a)
        high = torch.as_tensor(self.high, dtype=a.dtype, device=a.device).expand_as(a)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        bp = None if b is None else b.clamp(min=0)
        bn = None if b is None else b.clamp(max=0)
        den = z - layer.forward(low, wp, bp) - layer.forward(high, wn, bn)
        s = R / stabilize(den, self.stabilizer)
        return a * layer.transpose(s, w, a) - low * layer.transpose(s, wp, a) - high * layer.transpose(s, wn, a)


class WSquare(Rule):
    """LRP-w²: R_in = (W²)ᵀ (R / stab(W² 1 + b²)); relevance independent of the input values."""

    name = "wsquare"

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        w = _require_weight(self, layer)
        b = layer.bias
        w2, b2 = layer.modified("wsquare", lambda: (w * w, None if b is None else b * b))
        ones = torch.ones_like(a)
        s = R / stabilize(layer.forward(ones, w2, b2), self.stabilizer)
        return layer.transpose(s, w2, a)


class Flat(Rule):
    """LRP-flat: R_in = 1ᵀ (R / stab(Σ_window 1)); every input in an output's receptive field
    gets an equal share (zero padding receives nothing)."""

    name = "flat"

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        w = _require_weight(self, layer)
        w1 = layer.modified("flat", lambda: torch.ones_like(w))
        ones = torch.ones_like(a)
        s = R / stabilize(layer.forward(ones, w1, None), self.stabilizer)
        return layer.transpose(s, w1, a)


class Pass(Rule):
    """Relevance crosses unchanged: R_in = R (elementwise steps)."""

    name = "pass"

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        if a.shape != R.shape:
            raise ValueError(f"Pass() cannot cross step '{layer.step.name}': it changes the shape")
        return R

    def activation(self, fn: object, x: Tensor, y: Tensor, R: Tensor) -> Tensor:
        return R


class Gradient(Rule):
    """The plain gradient: linear steps give Wᵀ R, activations multiply by f'(x), additions copy R
    to each term. Used by the ``gradient`` and ``gradient_x_input`` composites."""

    name = "gradient"

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        return layer.transpose(R, layer.weight, a)

    def add(self, parts: Sequence[Tensor], z: Tensor, R: Tensor) -> list[Tensor]:
        return [R for _ in parts]

    def activation(self, fn: object, x: Tensor, y: Tensor, R: Tensor) -> Tensor:
        assert callable(fn)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            out = fn(xr)
            (g,) = torch.autograd.grad(out, xr, torch.ones_like(out))
        return R * g


__all__ = [
    "Rule", "Epsilon", "Zero", "Norm", "ZPlus", "AlphaBeta", "Gamma", "ZBox", "WSquare", "Flat", "Pass",
    "Gradient", "stabilize", "safe_divide",
]  # fmt: skip
