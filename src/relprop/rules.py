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

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .graph import BATCHNORM_MODULES, LinearMap
from .graph.batchnorm import bn_affine, uses_batch_statistics
from .graph.linear_map import fold_affine


def stabilize(x: Tensor, epsilon: float) -> Tensor:
    """x + ε·sign(x), with sign(0) = +1 (sign(−0.0) = −1: either way never 0)."""
    return x + torch.copysign(x.new_full((), epsilon).expand_as(x), x)  # (a third of the cost of torch.where)


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """num / den, with 0 where den == 0 (differentiable: no NaN in either branch; without a graph, a
    quotient that overflows is 0 too)."""
    if not torch.is_grad_enabled():  # x/0 and 0/0 become 0 (the double where keeps gradients NaN-free)
        return torch.nan_to_num_(num / den, nan=0.0, posinf=0.0, neginf=0.0)
    zero = den == 0
    return torch.where(zero, 0.0, num / torch.where(zero, 1.0, den))


def divide_stabilized(R: Tensor, den: Tensor, epsilon: float, sign: int = 0, temporary: bool = False) -> Tensor:
    """R / stab(den), stab(x) = x + ε·sign(x) with sign(0) = +1.

    ``sign=+2`` promises den >= 0 everywhere, ``sign=+1`` that R is zero wherever den < 0, ``sign=-1``
    that R is zero wherever den >= 0; the sign test is then skipped (R / (den + ε), R / (max(den, 0) + ε),
    resp. R / (min(den, 0) − ε) is equal and cheaper). ``temporary=True`` lets the function overwrite
    ``den``. Without a recorded graph the arithmetic is done in place.
    """
    if torch.is_grad_enabled():
        if sign > 1:
            return R / (den + epsilon)
        if sign > 0:
            return R / (den.clamp(min=0) + epsilon)
        if sign < 0:
            return R / (den.clamp(max=0) - epsilon)
        return R / stabilize(den, epsilon)
    if sign > 1:
        d = den.add_(epsilon) if temporary else den + epsilon
    elif sign > 0:
        d = (den.clamp_min_(0) if temporary else den.clamp_min(0)).add_(epsilon)
    elif sign < 0:
        d = (den.clamp_max_(0) if temporary else den.clamp_max(0)).sub_(epsilon)
    else:
        d = torch.copysign(den.new_full((), epsilon).expand_as(den), den).add_(den)
    return torch.div(R, d, out=d) if d.shape == R.shape else R / d


def _times(t: Tensor, a: Tensor) -> Tensor:
    """t ⊙ a, in place on the fresh tensor t when no graph is recorded."""
    return t * a if torch.is_grad_enabled() else t.mul_(a)


class Rule:
    """Base class of the rules. A rule implements the hooks of the step kinds it applies to and *declares*
    what it needs and guarantees in the class attributes below; the engine reads only those, never the
    rule's class or name.

    Hooks (one per step kind): ``linear`` (Linear/Conv/BatchNorm and average pooling), ``add``, ``activation``,
    ``passthrough`` (elementwise y = c ⊙ x), ``maxpool``, ``normalise`` (LayerNorm, GroupNorm, ...), ``product``
    (a product of two tensors), ``softmax``, ``input`` (the explained input itself).
    """

    #: short name shown in summaries and error messages
    name: str = "rule"
    #: the rule propagates a gradient (signs follow the chain rule: x − y sends −R to y) rather than shares
    gradient: bool = False
    #: step kinds where R_in = a ⊙ (…): relevance vanishes wherever the step's input is zero
    multiplies_input: frozenset[str] = frozenset()
    #: step kinds where relevance crosses elementwise unchanged (R_in = R, or routed to a max-pooling winner)
    passes_relevance: frozenset[str] = frozenset({"maxpool"})
    #: step kinds where Σ R_in = Σ R (up to the stabiliser and the bias's share)
    conserving: frozenset[str] = frozenset({"maxpool"})
    #: the rule reads the sign of the layer input (known statically after ReLUs, else checked at run time)
    uses_input_sign: bool = False
    #: the rule derives other weights from the layer's (W⁺, W², ...), so a folded BatchNorm must be part of
    #: the weights; False: the rule uses the map only through z = W a + b and Wᵀ s, and the BatchNorm scale
    #: may stay apart (cheaper where the fold is recomputed, in training)
    modifies_weights: bool = False
    #: the output relevance this rule starts from when it receives the model's output: the explained logit
    #: (``"logit"``: Σ R = logit for conserving rules) or 1 (``"unit"``: gradients, R-LRP)
    seed: str = "logit"
    #: the forward pass folds eval-mode BatchNorm into the preceding layer, so that z = W a + b exactly for
    #: the weights the rule uses; False: run the model's own layers (gradients equal autograd's exactly)
    folded_forward: bool = True
    #: relevance grows or shrinks with depth (R-LRP): the engine rescales it per step (see
    #: :class:`~relprop.explainer.core.Explanation.log_scale`)
    rescaled: bool = False
    #: at additions, every branch carries R down to its fork, where the engine rescales it to its share
    rescales_branches: bool = False

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        raise NotImplementedError(f"rule {self!r} does not apply to linear or pooling steps")

    def add(self, parts: Sequence[Tensor], z: Tensor, R: Tensor, negatives_silent: bool = False) -> list[Tensor]:
        raise NotImplementedError(f"rule {self!r} does not apply to additions")

    def activation(self, fn: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, R: Tensor) -> Tensor:
        raise NotImplementedError(f"rule {self!r} does not apply to activations")

    def normalise(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        """Relevance at the input of a normalisation, given ``layer``: its affine map with the forward pass's
        statistics (no weights: ``layer.weight`` is None). By default the rule's ``linear`` hook."""
        return self.linear(layer, a, z, R)

    def product(
        self, xs: Sequence[Tensor], z: Tensor, R: Tensor, grad: Callable[[Tensor, int], Tensor], gate: int | None
    ) -> list[Tensor | None]:
        """Relevance of the two factors of a bilinear product z = f(a, b) (``a * b``, ``a @ b``, einsum), given
        ``grad(s, k)`` = ∂⟨s, f⟩/∂x_k and the index of the gate factor (None: neither)."""
        raise NotImplementedError(f"rule {self!r} does not apply to products of two tensors")

    def softmax(self, x: Tensor, y: Tensor, R: Tensor, dim: int) -> Tensor:
        """Relevance at the input x of y = softmax(x, dim)."""
        raise NotImplementedError(f"rule {self!r} does not apply to softmax")

    def passthrough(self, x: Tensor, R: Tensor, vjp: Callable[[Tensor], Tensor]) -> Tensor:
        """Relevance at the input of an elementwise y = c ⊙ x (dropout, casts, scaling): R itself where the
        shapes agree, else R follows the map's gradient ``vjp(R)`` (broadcasting)."""
        return R if R.shape == x.shape else vjp(R)

    def maxpool(self, x: Tensor, routed: Tensor) -> Tensor:
        """Relevance at a max-pooling input, given ``routed``: each window's relevance moved to its winner."""
        return routed

    def input(self, x: Tensor, R: Tensor) -> Tensor:
        """Relevance at the explained input x, given the relevance R that arrives there."""
        raise NotImplementedError(f"rule {self!r} does not apply to the input")

    def __repr__(self) -> str:  # the constructor's arguments
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in names if hasattr(self, k))
        return f"{type(self).__name__}({fields})"


_LINEAR = frozenset({"linear", "avgpool"})


def _require_weight(rule: Rule, layer: LinearMap) -> Tensor:
    if layer.weight is None:
        raise NotImplementedError(
            f"rule {rule!r} needs a weighted layer, but step '{layer.step.name}' is a pooling step; "
            "use Norm() or Epsilon() there"
        )
    return layer.weight


def _nonneg(layer: LinearMap, a: Tensor) -> bool:
    """Whether the layer input is non-negative: known from the graph, else checked."""
    known = layer.input_nonneg
    return bool((a >= 0).all()) if known is None else known


class Epsilon(Rule):
    """LRP-ε: R_in = a ⊙ Wᵀ(R / stab(z)), z = W a + b.

    ``epsilon=0`` gives LRP-0 with 0/0 := 0 (see :class:`Zero`). ``ignore_bias=True`` uses z − b in
    the denominator, which makes the rule conservative (Σ R_in = Σ R).
    """

    name = "epsilon"
    multiplies_input = _LINEAR | {"add", "normalise"}
    conserving = _LINEAR | {"add", "maxpool", "normalise"}

    def __init__(self, epsilon: float = 1e-6, ignore_bias: bool = False) -> None:
        if epsilon < 0:
            raise ValueError(f"Epsilon(epsilon={epsilon}): epsilon must be >= 0")
        self.epsilon = float(epsilon)
        self.ignore_bias = ignore_bias

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        # z >= 0 everywhere when the forward pass kept relu(z) for it; else R vanishes at z < 0 if silent
        sign = 2 if layer.output_nonneg else int(layer.negative_outputs_silent)
        if self.ignore_bias and layer.bias is not None:
            z = layer.forward(a, layer.weight, None)
            sign = 0  # W a may be negative where W a + b > 0
        if self.epsilon == 0:
            s = safe_divide(R, z)
        else:
            s = divide_stabilized(R, z, self.epsilon, sign)
        return _times(layer.transpose(s, layer.weight, a), a)

    def add(self, parts: Sequence[Tensor], z: Tensor, R: Tensor, negatives_silent: bool = False) -> list[Tensor]:
        s = safe_divide(R, z) if self.epsilon == 0 else divide_stabilized(R, z, self.epsilon, int(negatives_silent))
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


class Flex(Rule):
    """LRP-Flex, the ISNet authors' one-backward LRP-ε (Bassi et al., Faster ISNet, 2024), written as relevance.

    LRP-Flex is the gradient g of the explained quantity in a backward pass where every ReLU multiplies the
    incoming gradient by a / (a + ε) (a its output); the relevance of a tensor t is t ⊙ g. Step by step, with z the
    step's output and R the relevance there:

    - s = R / (z + ε) where z feeds ReLUs (only z > 0 carries relevance there), s = R / z elsewhere (0/0 := 0);
    - R_in = a ⊙ Jᵀ s, J the step's Jacobian: Wᵀ s for Linear/Conv/pooling and eval-mode BatchNorm (folded or
      not); for a BatchNorm with batch statistics (training mode) the true Jacobian, *through* the batch mean and
      variance, so the samples of a batch are coupled as in the authors' code;
    - additions: R_k = x_k ⊙ s likewise.

    ReLUs pass relevance (the composite's default). On Linear/Conv (+ eval BatchNorm) + ReLU stacks this is
    LRP-ε with stabiliser ε on positive pre-activations; a step not followed by a ReLU gets LRP-0, so a
    convolution → concatenation → BatchNorm → ReLU chain (DenseNet) is one LRP-ε layer with its ε at the ReLU.
    Limits: a step whose output feeds a ReLU *and* another consumer gets LRP-0; ReLU6 is treated like a ReLU.
    """

    name = "flex"
    multiplies_input = _LINEAR | {"add"}
    conserving = _LINEAR | {"add", "maxpool"}  # in eval mode, up to ε and the bias's share
    modifies_weights = True  # a batch-statistics BatchNorm is re-run on the raw layer output (no scale kept apart)

    def __init__(self, epsilon: float = 0.01) -> None:
        if epsilon < 0:
            raise ValueError(f"Flex(epsilon={epsilon}): epsilon must be >= 0")
        self.epsilon = float(epsilon)

    def _ratio(self, R: Tensor, z: Tensor, relu: bool, nonneg: bool) -> Tensor:
        if relu and self.epsilon > 0:
            return divide_stabilized(R, z, self.epsilon, 2 if nonneg else 1)
        return safe_divide(R, z)

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        s = self._ratio(R, z, layer.output_nonneg or layer.negative_outputs_silent, layer.output_nonneg)
        m = layer.module
        bn = m if isinstance(m, BATCHNORM_MODULES) else layer.step.batchnorm
        if layer.step.kind != "linear" or not uses_batch_statistics(bn):
            return _times(layer.transpose(s, layer.weight, a), a)
        assert bn is not None and m is not None
        return a * _batch_norm_vjp(layer, bn, a, s)

    def add(self, parts: Sequence[Tensor], z: Tensor, R: Tensor, negatives_silent: bool = False) -> list[Tensor]:
        s = self._ratio(R, z, negatives_silent, False)
        return [p * s for p in parts]


def _batch_norm_vjp(layer: LinearMap, bn: torch.nn.Module, a: Tensor, s: Tensor) -> Tensor:
    """∂⟨s, BN(f(a))⟩/∂a for a BatchNorm with batch statistics after the step's own map f (identity for a
    stand-alone BatchNorm), differentiated through the statistics; differentiable when a graph is recorded."""
    m = layer.module
    keep = torch.is_grad_enabled()
    with torch.enable_grad():
        x = a if (keep and a.requires_grad) else a.detach().requires_grad_(True)
        if m is bn:
            pre = x
        else:
            assert m is not None
            w0, b0 = m.weight, getattr(m, "bias", None)
            assert isinstance(w0, Tensor)
            pre = layer.forward(x, w0, b0 if isinstance(b0, Tensor) else None)
        weight, bias = getattr(bn, "weight", None), getattr(bn, "bias", None)
        eps = float(getattr(bn, "eps", 1e-5))
        y = torch.nn.functional.batch_norm(pre, None, None, weight, bias, True, 0.0, eps)
        (g,) = torch.autograd.grad(y, x, s, create_graph=keep)
    return g if keep else g.detach()


class _PosNeg(Rule):
    """Shared machinery of rules that treat positive and negative weights separately."""

    multiplies_input = _LINEAR
    conserving = _LINEAR | {"maxpool"}
    uses_input_sign = True
    modifies_weights = True

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
        if _nonneg(layer, a):
            s = divide_stabilized(R, layer.forward(a, wp, bp), self.stabilizer, +2, temporary=True)
            return _times(layer.transpose(s, wp, a), a)
        point = _pointwise(layer, a)
        sz = self._identity_ratio(layer, a, z, R, wp, wn, point) if not layer.output_nonneg else None
        if sz is None:  # s from W⁺a⁺ + W⁻a⁻ + b⁺ (>= 0 everywhere) computed directly
            ap, an = a.clamp(min=0), a.clamp(max=0)
            both = _stacked(layer, ap, an, wp, wn) if point is None else None
            if both is not None:  # one forward and one transpose of the layer with [W⁺, W⁻] on [a⁺, a⁻]
                x2, w2, groups = both
                sz = divide_stabilized(R, layer.forward(x2, w2, bp), self.stabilizer, +2, True)
                gp, gn = _unstack(layer.transpose(sz, w2, x2), a, groups)
                return ap * gp + an * gn
            zp = layer.forward(ap, wp, bp) + layer.forward(an, wn, None)
            sz = divide_stabilized(R, zp, self.stabilizer, +2, True)
        # a⁺ ⊙ W⁺ᵀs + a⁻ ⊙ W⁻ᵀs = a ⊙ (W⁺ᵀs where a > 0, else W⁻ᵀs)
        if point is not None:  # [W⁺, W⁻]ᵀ s as one matrix product
            n, c, o = a.shape[0], a.shape[1], wp.shape[0]
            wt = layer.modified("posneg_t", lambda: torch.cat((wp, wn), 1).reshape(o, 2 * c).t().contiguous())
            g = torch.matmul(wt, sz.reshape(n, o, -1))
            gp, gn = g[:, :c].view_as(a), g[:, c:].view_as(a)
        else:
            gp, gn = layer.transpose(sz, wp, a), layer.transpose(sz, wn, a)
        return _times(torch.where(a > 0, gp, gn), a)

    def _identity_ratio(
        self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor, wp: Tensor, wn: Tensor, point: tuple[int, ...] | None
    ) -> Tensor | None:  # fmt: skip
        """s = R / stab(z⁺) from the forward's own z = W a + b: per product w⁺a⁺ + w⁻a⁻ = (|w||a| + wa) / 2, so
        z⁺ = W⁺a⁺ + W⁻a⁻ + b⁺ = (|W||a| + |b| + z) / 2: one product of the layer (|W| on |a|) instead of two.
        Exact up to rounding (which is relative to |W||a| + |b|, not to z⁺); >= 0 up to rounding, so the
        sign=+1 form clamps at 0. None where ``z`` is not W a + b with these weights (BatchNorm kept apart)."""
        if layer.out_scale is not None:
            return None
        grad = torch.is_grad_enabled()
        b = layer.bias
        wa, ba = layer.modified("abs", lambda: (wp - wn, None if b is None else b.abs()))
        if point is not None:  # 1x1 convolution: a batched matrix product that adds z in the same kernel
            n, c, o = a.shape[0], a.shape[1], wa.shape[0]
            den = torch.baddbmm(z.reshape(n, o, -1), wa.reshape(1, o, c).expand(n, o, c), a.abs().reshape(n, c, -1))
            den = den.view_as(z)
            if ba is not None:
                bv = ba.view(1, -1, *point)
                den = den + bv if grad else den.add_(bv)
        else:
            den = layer.forward(a.abs(), wa, ba)
            den = den + z if grad else den.add_(z)
        den = den * 0.5 if grad else den.mul_(0.5)
        return divide_stabilized(R, den, self.stabilizer, +1, True)


def _pointwise(layer: LinearMap, a: Tensor) -> tuple[int, ...] | None:
    """For a 1x1 convolution (stride 1, no padding, one group) whose products are plain matrix products over the
    channels, the trailing singleton shape that views a per-channel vector against the output; else None."""
    m = layer.module
    if not isinstance(m, torch.nn.modules.conv._ConvNd) or m.transposed or m.groups != 1 or a.dim() < 3:
        return None
    if layer.out_scale is not None:  # (the matrix products below use the weights alone)
        return None
    nd = a.dim() - 2
    ones = (1,) * nd
    pad = m.padding
    pad_ok = pad in ("same", "valid") or tuple(pad) == (0,) * nd
    if tuple(m.kernel_size) != ones or tuple(m.stride) != ones or not pad_ok:
        return None
    return ones


def _stacked(
    layer: LinearMap, ap: Tensor, an: Tensor, wp: Tensor, wn: Tensor
) -> tuple[Tensor, Tensor, int | None] | None:  # fmt: skip
    """[a⁺, a⁻] and [W⁺, W⁻] stacked along the input channels (per group), so that W⁺a⁺ + W⁻a⁻ is one product
    of the layer (one kernel instead of two, likewise for the transpose); with the number of groups (None for
    Linear). None where the layer is not a Linear or a (non-transposed) convolution."""
    m = layer.module
    if layer.out_scale is not None:
        return None
    if isinstance(m, torch.nn.Linear):
        return torch.cat((ap, an), -1), layer.modified("posneg_stacked", lambda: torch.cat((wp, wn), 1)), None
    if isinstance(m, torch.nn.modules.conv._ConvNd) and not m.transposed and m.groups == 1:
        # (grouped and depthwise convolutions with twice the channels per group leave torch's fast kernels)
        g = m.groups
        b, c = ap.shape[:2]
        rest = ap.shape[2:]
        x2 = torch.stack((ap.view(b, g, c // g, *rest), an.view(b, g, c // g, *rest)), 2).view(b, 2 * c, *rest)

        def weights() -> Tensor:
            o, ci = wp.shape[:2]
            per = (g, o // g, 1, ci, *wp.shape[2:])
            return torch.cat((wp.reshape(per), wn.reshape(per)), 2).reshape(o, 2 * ci, *wp.shape[2:])

        return x2, layer.modified("posneg_stacked", weights), g
    return None


def _unstack(g2: Tensor, like: Tensor, groups: int | None) -> tuple[Tensor, Tensor]:
    """The halves for a⁺ and a⁻ of a transposed product with the stacked weights (see :func:`_stacked`)."""
    if groups is None:
        n = like.shape[-1]
        return g2[..., :n], g2[..., n:]
    b, c = like.shape[:2]
    h = g2.view(b, groups, 2, c // groups, *like.shape[2:])
    return h[:, :, 0].reshape(like.shape), h[:, :, 1].reshape(like.shape)


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
        if _nonneg(layer, a):
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
    multiplies_input = _LINEAR
    conserving = _LINEAR | {"maxpool"}
    uses_input_sign = True
    modifies_weights = True

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
        if layer.negative_outputs_silent:  # R vanishes where z <= 0: only the positive-output half
            rp, rn = R, None
        else:
            negative = z < 0  # (a bool test: a quarter of the memory traffic of testing rn itself)
            rn = torch.where(negative, R, 0.0) if bool(negative.any()) else None
            # R vanishes where z == 0 when every consumer multiplies by its input: then R − rn = R·[z>0]
            rp = R - rn if (rn is not None and layer.output_proportional) else torch.where(z > 0, R, 0.0)
        if _nonneg(layer, a):
            # on z > 0, W_γ⁺a + b_γ⁺ >= z > 0; on z < 0, W_γ⁻a + b_γ⁻ <= (1 + γ) z < 0: signs known
            den_p = layer.forward(a, wgp, bgp)
            if rn is None:
                return _times(layer.transpose(divide_stabilized(rp, den_p, eps, +1, True), wgp, a), a)
            sp = divide_stabilized(rp, den_p, eps, +1)
            # W_γ⁻a + b_γ⁻ = (2 + γ) z − (W_γ⁺a + b_γ⁺), since z = W⁺a + b⁺ + W⁻a + b⁻: one forward saved
            den_n = den_p.neg_().add_(z, alpha=2 + g) if not torch.is_grad_enabled() else (2 + g) * z - den_p
            sn = divide_stabilized(rn, den_n, eps, -1, True)
            point = _pointwise(layer, a)
            if point is not None:  # 1x1 convolution: W_γ⁺ᵀ s⁺ + W_γ⁻ᵀ s⁻ as two matrix products, one accumulating
                n, c, o = a.shape[0], a.shape[1], wgp.shape[0]
                wpt, wnt = layer.modified(
                    f"gamma{g}_t", lambda: (wgp.reshape(o, c).t().contiguous(), wgn.reshape(o, c).t().contiguous())
                )
                gp = torch.matmul(wpt, sp.reshape(n, o, -1))
                return _times(torch.baddbmm(gp, wnt.expand(n, c, o), sn.reshape(n, o, -1)).view_as(a), a)
            return _times(layer.transpose(sp, wgp, a) + layer.transpose(sn, wgn, a), a)
        ap, an = a.clamp(min=0), a.clamp(max=0)
        sp = divide_stabilized(rp, layer.forward(ap, wgp, bgp) + layer.forward(an, wgn, None), eps)
        out = ap * layer.transpose(sp, wgp, a) + an * layer.transpose(sp, wgn, a)
        if rn is not None:
            sn = divide_stabilized(rn, layer.forward(ap, wgn, bgn) + layer.forward(an, wgp, None), eps)
            out = out + ap * layer.transpose(sn, wgn, a) + an * layer.transpose(sn, wgp, a)
        return out


class ZBox(Rule):
    """LRP-z^B (box) for inputs bounded in [low, high]:
    R_in = a ⊙ Wᵀs − l ⊙ W⁺ᵀs − h ⊙ W⁻ᵀs, s = R / stab(z − (W⁺l + b⁺) − (W⁻h + b⁻)).

    ``low`` and ``high`` are floats or tensors broadcastable to the input (e.g. shape (1, C, 1, 1)
    for per-channel bounds of normalised images).

    ``bias="bounded"`` is the ISNet authors' form (their LRP-Flex and LRP Block code): the bias is treated like a
    weight on an input bounded in [l, h], s = R / stab(z − W⁺l − W⁻h − l·b⁺ − h·b⁻); with l = 0, h = 1 the positive
    bias stays in the denominator. The default ``"removed"`` subtracts the whole bias (zennit's z^B). The bounded
    form needs scalar bounds.

    ``batch_variance="unbiased"``: a BatchNorm folded into this layer that normalises with batch statistics
    (training mode) is folded with the unbiased batch variance Σ(x − μ)²/(n − 1) (detached), and z is recomputed
    with those weights, as the authors' LRP-Flex does at the first layer; ``"biased"`` (default) uses the layer's
    own statistics.

    ``bias_gradient=False``: no gradient reaches the layer's bias, nor a folded BatchNorm's shift β, through this
    rule (the BatchNorm's scale γ keeps its gradient), as the authors' code detaches them; z is recomputed with the
    detached bias. Values are unchanged; only double backpropagation sees it.
    """

    name = "zbox"
    conserving = _LINEAR | {"maxpool"}
    modifies_weights = True

    def __init__(
        self, low: float | Tensor = 0.0, high: float | Tensor = 1.0, stabilizer: float = 1e-6, bias: str = "removed",
        batch_variance: str = "biased", bias_gradient: bool = True,
    ) -> None:  # fmt: skip
        lo, hi = torch.as_tensor(low, dtype=torch.float64), torch.as_tensor(high, dtype=torch.float64)
        if bool((lo > hi).any()):
            raise ValueError(f"ZBox(low={low}, high={high}): low must not exceed high")
        if bias not in ("removed", "bounded"):
            raise ValueError(f"ZBox(bias={bias!r}): bias must be 'removed' or 'bounded'")
        if bias == "bounded" and (lo.numel() != 1 or hi.numel() != 1):
            raise ValueError(
                f"ZBox(bias='bounded') needs scalar low and high (got shapes {tuple(lo.shape)} and {tuple(hi.shape)}): "
                "the bias's input has no channels; use bias='removed' with per-channel bounds"
            )
        if batch_variance not in ("biased", "unbiased"):
            raise ValueError(f"ZBox(batch_variance={batch_variance!r}): use 'biased' or 'unbiased'")
        self.low, self.high = low, high
        self.stabilizer = float(stabilizer)
        self.bias = bias
        self.batch_variance = batch_variance
        self.bias_gradient = bias_gradient

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        w = _require_weight(self, layer)
        b = layer.bias
        bn = layer.step.batchnorm
        folded = bn is not None and layer.module is not bn
        batch = uses_batch_statistics(bn)
        refold = folded and ((self.batch_variance == "unbiased" and batch) or not self.bias_gradient)
        if refold:  # the authors' fold (unbiased batch variance, detached shift): z recomputed with those weights
            assert bn is not None and layer.module is not None
            w0, b0 = layer.module.weight, getattr(layer.module, "bias", None)
            assert isinstance(w0, Tensor)
            b0 = b0 if isinstance(b0, Tensor) else None
            pre = layer.forward(a, w0, b0) if batch else None
            scale, shift = bn_affine(bn, pre, unbiased=self.batch_variance == "unbiased")
            beta = getattr(bn, "bias", None)
            if not self.bias_gradient:
                b0 = None if b0 is None else b0.detach()
                shift = shift if not isinstance(beta, Tensor) else shift - beta + beta.detach()
            w, b = fold_affine(layer.module, w0, b0, scale, shift)
            z = layer.forward(a, w, b)
        elif not self.bias_gradient and b is not None and b.requires_grad:
            b = b.detach()
            z = layer.forward(a, w, b)
            refold = True  # (the bounds below use this b: not cached)
        one = (1,) + tuple(a.shape[1:])
        low = torch.as_tensor(self.low, dtype=a.dtype, device=a.device)
        high = torch.as_tensor(self.high, dtype=a.dtype, device=a.device)
        per_sample = any(t.dim() == a.dim() and t.shape[0] > 1 for t in (low, high))
        shape = tuple(a.shape) if per_sample else one  # bounds that differ per sample are not cached
        low, high = low.expand(shape), high.expand(shape)

        def posneg() -> tuple[Tensor, Tensor]:
            return w.clamp(min=0), w.clamp(max=0)

        wp, wn = posneg() if refold else layer.modified("posw", posneg)
        # bias scale factors: 1 (bias removed) or l / h (the bias's input bounded like the pixels)
        lb, hb = (1.0, 1.0) if self.bias == "removed" else (float(self.low), float(self.high))

        def bounds_term() -> Tensor:  # W⁺l + W⁻h + b⁺·lb + b⁻·hb
            bp = None if b is None else b.clamp(min=0) * lb
            bn_ = None if b is None else b.clamp(max=0) * hb
            return layer.forward(low, wp, bp) + layer.forward(high, wn, bn_)

        if per_sample or refold:
            bounds = bounds_term()
        else:
            bounds = layer.modified(f"zbox{one}{self.low!r}{self.high!r}{self.bias}", bounds_term)
        s = divide_stabilized(R, z - bounds, self.stabilizer)
        # a⊙Wᵀs − l⊙W⁺ᵀs − h⊙W⁻ᵀs with W⁻ = W − W⁺: two transposed products instead of three
        return (a - high) * layer.transpose(s, w, a) + (high - low) * layer.transpose(s, wp, a)


class WSquare(Rule):
    """LRP-w²: R_in = (W²)ᵀ (R / stab(W² 1 + b²)); relevance independent of the input values."""

    name = "wsquare"
    conserving = _LINEAR | {"maxpool"}
    modifies_weights = True

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        w = _require_weight(self, layer)
        b = layer.bias
        w2, b2 = layer.modified("wsquare", lambda: (w * w, None if b is None else b * b))
        one = (1,) + tuple(a.shape[1:])
        den = layer.modified(f"wsquare{one}", lambda: layer.forward(a.new_ones(one), w2, b2))
        return layer.transpose(divide_stabilized(R, den, self.stabilizer), w2, a)


class Flat(Rule):
    """LRP-flat: R_in = 1ᵀ (R / stab(Σ_window 1)); every input in an output's receptive field
    gets an equal share (zero padding receives nothing)."""

    name = "flat"
    conserving = _LINEAR | {"maxpool"}
    modifies_weights = True

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        w = _require_weight(self, layer)
        one = (1,) + tuple(a.shape[1:])
        m = layer.module
        # all-ones weights map every input channel alike: sum the output channels first, then
        # transpose a single-channel map (exact, and far cheaper than a full transposed product)
        single = (isinstance(m, torch.nn.Linear) and a.dim() == 2) or (
            isinstance(m, torch.nn.modules.conv._ConvNd) and not m.transposed and m.groups == 1
        )
        if single:
            w1 = layer.modified("flat1", lambda: w.new_ones((1, 1) + tuple(w.shape[2:])))
            den = layer.modified(f"flat{one}", lambda: layer.forward(a.new_ones((1, 1) + one[2:]), w1, None))
            s = divide_stabilized(R, den * a.shape[1], self.stabilizer).sum(1, keepdim=True)
            return layer.transpose(s, w1, a[:, :1]).expand_as(a).contiguous()
        w1 = layer.modified("flat", lambda: torch.ones_like(w))
        den = layer.modified(f"flat{one}", lambda: layer.forward(a.new_ones(one), w1, None))
        return layer.transpose(divide_stabilized(R, den, self.stabilizer), w1, a)


def _finite_times(x: Tensor, t: Tensor) -> Tensor:
    """x ⊙ t, with 0 where x is not finite (masked attention scores are −inf)."""
    return torch.where(torch.isfinite(x), x, 0.0) * t


class Product(Rule):
    """Products of two tensors z = f(a, b), bilinear (gating ``x * g``, squeeze-excitation, ``matmul``, attention).

    With s = R / stab(z) and the Taylor terms a ⊙ ∂⟨s, f⟩/∂a = b ⊙ ∂⟨s, f⟩/∂b (each sums to Σ z ⊙ s, f being
    linear in each factor):

    - ``mode="signal"`` (default): the signal takes all, the gate none: R_signal = x ⊙ ∂⟨s, f⟩/∂x, R_gate = 0
      (for ``x * g``: R_x = R). The gate is a factor in [0, 1] (after a sigmoid or softmax) or a factor that
      does not depend on the input; a product with no gate (q·kᵀ) is split uniformly. At attention × v this is
      CP-LRP: no relevance flows through the attention weights.
    - ``mode="uniform"``: AttnLRP's uniform rule for every product: R_k = ½ x_k ⊙ ∂⟨s, f⟩/∂x_k.

    Both conserve Σ R_in = Σ R (up to the stabiliser).
    """

    name = "product"
    multiplies_input = frozenset({"product"})
    conserving = frozenset({"product", "maxpool"})

    def __init__(self, mode: str = "signal", stabilizer: float = 1e-6) -> None:
        if mode not in ("signal", "uniform"):
            raise ValueError(f"Product(mode={mode!r}): mode must be 'signal' or 'uniform'")
        self.mode = mode
        self.stabilizer = float(stabilizer)

    def product(
        self, xs: Sequence[Tensor], z: Tensor, R: Tensor, grad: Callable[[Tensor, int], Tensor], gate: int | None
    ) -> list[Tensor | None]:
        s = safe_divide(R, z) if self.stabilizer == 0 else divide_stabilized(R, z, self.stabilizer)
        if self.mode == "signal" and gate is not None:
            signal = 1 - gate
            out: list[Tensor | None] = [None, None]
            out[signal] = xs[signal] * grad(s, signal)
            return out
        return [0.5 * x * grad(s, k) for k, x in enumerate(xs)]


class Softmax(Rule):
    """Softmax y = softmax(x) (AttnLRP, Achtibat et al. 2024): the Taylor term at x,
    R_in = x ⊙ (R − y ⊙ Σ R) (sums over the softmax dimension). Not conserving: Σ R_in = Σ x ⊙ R − (Σ x ⊙ y) Σ R.
    Masked positions (x = −inf, y = 0) get no relevance."""

    name = "softmax"
    multiplies_input = frozenset({"softmax"})

    def softmax(self, x: Tensor, y: Tensor, R: Tensor, dim: int) -> Tensor:
        return _finite_times(x, R - y * R.sum(dim, keepdim=True))


class Pass(Rule):
    """Relevance crosses unchanged: R_in = R (elementwise steps)."""

    name = "pass"
    passes_relevance = frozenset({"linear", "activation", "pass", "maxpool", "normalise", "softmax"})
    conserving = passes_relevance

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        if a.shape != R.shape:
            raise ValueError(f"Pass() cannot cross step '{layer.step.name}': it changes the shape")
        return R

    def softmax(self, x: Tensor, y: Tensor, R: Tensor, dim: int) -> Tensor:
        return R

    def activation(self, fn: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, R: Tensor) -> Tensor:
        return R


class RLRP(Rule):
    """Relative LRP (Nyiri & Gibaru, arXiv:2501.14322), as reconstructed in relprop (the paper body was not
    available to us; the structural choices below are ours and can be switched):

    - Linear / Conv (BatchNorm folded): R_in = a ⊙ Wᵀ R: no denominator, the bias takes nothing. Per
      neuron, Σ_j R_{j←k} = (z_k − b_k)·R_k: classical LRP-0's share times the pre-activation, which is
      the "conservation up to a multiplicative factor".
    - Activations pass relevance through (the activation value enters through ``a`` at the next layer).
    - Max pooling: ``pool="winner"`` (default) gives the window's relevance to its winner;
      ``pool="contribution"`` multiplies it by the winner's value.
    - Average pooling: ``"winner"`` spreads R/n over the window (the transposed pooling);
      ``"contribution"`` gives a_i/n · R.
    - Additions y = u + v (residual connections), ``skip="proportional"`` (default): R_u = u ⊙ R / y with
      0/0 := 0 and no ε: the only division of the rule. ``skip="rescale_branches"``: both branches carry
      R down to the block's fork, where each branch's relevance is rescaled so that its total equals its
      share Σ u ⊙ R / y of the addition.

    There is no tunable parameter. Relevance grows or shrinks by about one activation per layer, so the
    ``rlrp`` composite rescales it at every step (``Composite(rescale=True)``); the normalised heatmap is
    unchanged. On a chain of Linear/Conv + ReLU the result equals the closed form
    x ⊙ (W₁ᵀ diag(a₁) W₂ᵀ diag(a₂) … e_c).
    """

    name = "rlrp"
    seed = "unit"
    rescaled = True

    def __init__(self, pool: str = "winner", skip: str = "proportional") -> None:
        if pool not in ("winner", "contribution"):
            raise ValueError(f"RLRP(pool={pool!r}): pool must be 'winner' or 'contribution'")
        if skip not in ("proportional", "rescale_branches"):
            raise ValueError(f"RLRP(skip={skip!r}): skip must be 'proportional' or 'rescale_branches'")
        self.pool = pool
        self.skip = skip
        # the declarations follow the structural choices
        contribution = frozenset({"avgpool", "maxpool"}) if pool == "contribution" else frozenset()
        proportional = frozenset({"add"}) if skip == "proportional" else frozenset()
        self.multiplies_input = frozenset({"linear", "normalise", "product", "softmax"}) | contribution | proportional
        self.passes_relevance = frozenset({"activation", "pass"}) | (frozenset({"maxpool"}) - contribution)
        self.conserving = proportional
        self.rescales_branches = skip == "rescale_branches"

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        if layer.step.kind == "avgpool" and self.pool == "winner":  # average pooling: spread R / n
            return layer.transpose(R, None, a)
        return _times(layer.transpose(R, layer.weight, a), a)

    def product(
        self, xs: Sequence[Tensor], z: Tensor, R: Tensor, grad: Callable[[Tensor, int], Tensor], gate: int | None
    ) -> list[Tensor | None]:
        """The gate acts as the weight: R_signal = x ⊙ ∂⟨R, f⟩/∂x (for ``x * g``: g ⊙ x ⊙ R); with no gate
        each factor gets half, R_k = ½ x_k ⊙ ∂⟨R, f⟩/∂x_k (no division)."""
        if gate is not None:
            return [None if k == gate else x * grad(R, k) for k, x in enumerate(xs)]
        return [0.5 * x * grad(R, k) for k, x in enumerate(xs)]

    def softmax(self, x: Tensor, y: Tensor, R: Tensor, dim: int) -> Tensor:
        """x ⊙ Jᵀ R = x ⊙ y ⊙ (R − Σ y R) (no division); masked positions (x = −inf) get 0."""
        return _finite_times(x, y * (R - (y * R).sum(dim, keepdim=True)))

    def add(self, parts: Sequence[Tensor], z: Tensor, R: Tensor, negatives_silent: bool = False) -> list[Tensor]:
        if self.skip == "rescale_branches":  # both branches carry R; the engine rescales them at the fork
            return [R for _ in parts]
        s = safe_divide(R, z)
        return [p * s for p in parts]

    def activation(self, fn: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, R: Tensor) -> Tensor:
        return R

    def maxpool(self, x: Tensor, routed: Tensor) -> Tensor:
        return routed if self.pool == "winner" else x * routed


class Gradient(Rule):
    """The plain gradient: linear steps give Wᵀ R, activations multiply by f'(x), additions copy R
    to each term. Used by the ``gradient`` and ``gradient_x_input`` composites."""

    name = "gradient"
    gradient = True
    passes_relevance = frozenset()
    conserving = frozenset()
    seed = "unit"
    folded_forward = False

    def linear(self, layer: LinearMap, a: Tensor, z: Tensor, R: Tensor) -> Tensor:
        return layer.transpose(R, layer.weight, a)

    def add(self, parts: Sequence[Tensor], z: Tensor, R: Tensor, negatives_silent: bool = False) -> list[Tensor]:
        return [R for _ in parts]

    def activation(self, fn: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, R: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or R.requires_grad):
            # keep f'(x) differentiable (double backpropagation through smooth activations)
            xr = x if x.requires_grad else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(fn(xr), xr, R, create_graph=True)
            return g
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(fn(xr), xr, R)
        return g

    def passthrough(self, x: Tensor, R: Tensor, vjp: Callable[[Tensor], Tensor]) -> Tensor:
        return vjp(R)

    def product(
        self, xs: Sequence[Tensor], z: Tensor, R: Tensor, grad: Callable[[Tensor, int], Tensor], gate: int | None
    ) -> list[Tensor | None]:
        return [grad(R, k) for k in range(len(xs))]

    def softmax(self, x: Tensor, y: Tensor, R: Tensor, dim: int) -> Tensor:
        return y * (R - (y * R).sum(dim, keepdim=True))


class MultiplyInput(Rule):
    """At the explained input: R_in = x ⊙ R (Gradient × Input when R is the gradient)."""

    name = "x_input"

    def input(self, x: Tensor, R: Tensor) -> Tensor:
        return R * x


__all__ = [
    "Rule", "Epsilon", "Zero", "Norm", "Flex", "ZPlus", "AlphaBeta", "Gamma", "ZBox", "WSquare", "Flat", "Pass",
    "Product", "Softmax",
    "Gradient", "MultiplyInput", "RLRP", "stabilize", "safe_divide",
]  # fmt: skip
