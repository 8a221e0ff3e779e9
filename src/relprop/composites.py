"""Composites: which rule each step of the relevance graph uses, and named presets.

A :class:`Composite` picks a rule for a step by, in this order: its module path (``name_map``,
glob patterns), the first weighted layer (``first``), the module type (``layer_map``), and then the
defaults per step kind (``add``, ``pool``, ``activation``, ``batchnorm``).

Presets (``relprop.composites.PRESETS``; pass the name as ``composite=`` or call the function for
other parameters) match zennit's composites of the same names:

=============================  =================  ==========  ===========  ==================
preset                         first layer        Conv        Linear       add / avg-pool
=============================  =================  ==========  ===========  ==================
``epsilon_plus_flat``          Flat               z⁺          ε            Norm
``epsilon_gamma_box``          z^B [low, high]    γ = 0.25    ε            Norm
``epsilon_plus``               --                 z⁺          ε            Norm
``epsilon_alpha2_beta1``       --                 α2β1        ε            Norm
``epsilon_alpha2_beta1_flat``  Flat               α2β1        ε            Norm
``epsilon``                    --                 ε           ε            Norm
``zero``                       --                 LRP-0       LRP-0        LRP-0
``rlrp``                       Relative LRP everywhere (a ⊙ Wᵀ R), rescaled per step
``gradient``                   plain gradient (seed 1 on the target logit)
``gradient_x_input``           gradient times input
``isnet``                      z^B [0, 1]         ε = 0.01    ε = 0.01 (LRP-0 on the last layer)
``isnet_zplus``                z^B [0, 1]         z⁺          z⁺
``isnet_authors``              z^B [0, 1], b⁺     Flex        Flex         Flex (LRP-Flex)
``attnlrp``                    --                 ε           ε            Norm; products uniform
``cp_lrp``                     --                 ε           ε            Norm; gates take none
=============================  =================  ==========  ===========  ==================

Every preset but ``attnlrp`` treats a product of two tensors (``x * gate``, attention × v) with the signal
taking all and the gate none (q·kᵀ, with no gate, split uniformly), softmax with AttnLRP's rule, and LayerNorm /
GroupNorm / RMSNorm / functional and stand-alone batch norm as an affine map with fixed statistics under LRP-ε
(LRP-0 in ``zero``; R-LRP's own rule in ``rlrp``; the true gradient in ``gradient``).

A single :class:`~relprop.rules.Rule` can be given wherever a composite is expected: it is used for
every Linear/Conv layer (Norm for additions and pooling, Pass for activations).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence

import torch.nn as nn
from torch import Tensor

from .errors import UnsupportedLayerError
from .graph import BATCHNORM_MODULES, LINEAR_MODULES, Step
from .rules import (
    RLRP,
    AlphaBeta,
    Epsilon,
    Flat,
    Flex,
    Gamma,
    Gradient,
    MultiplyInput,
    Norm,
    Pass,
    Product,
    Rule,
    Softmax,
    ZBox,
    Zero,
    ZPlus,
)

CONV_TYPES: tuple[type[nn.Module], ...] = tuple(t for t in LINEAR_MODULES if t is not nn.Linear)
DENSE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,)
WEIGHTED_TYPES: tuple[type[nn.Module], ...] = LINEAR_MODULES

Matcher = type | tuple[type, ...] | Callable[[Step], bool]


class Composite:
    """Maps steps of the relevance graph to rules.

    Args:
        layer_map: ``(matcher, rule)`` pairs tried in order for Linear/Conv/BatchNorm steps; a matcher
            is a module class, a tuple of classes, or a predicate on the :class:`~relprop.graph.Step`.
        first: rule for the first weighted layer (in execution order) of a type in ``first_types``.
        last: rule for the last weighted layer (the classifier); ``first`` wins in a one-layer model.
        name_map: module path (glob patterns allowed, e.g. ``"features.*"``) to rule; wins over all.
        add, pool, activation, batchnorm: rules for additions, average pooling, activations and
            stand-alone (unfoldable) BatchNorm modules (default LRP-ε: y = s ⊙ x + t is a linear layer whose
            shift takes its share; passing R through unchanged can explode with trained statistics).
        maxpool: rule for max pooling (None: relevance goes to the winner of each window).
        norm: rule for normalisation steps (LayerNorm, GroupNorm, RMSNorm, functional batch norm), which the
            engine gives as an affine map with the forward pass's statistics (default: LRP-ε).
        product: rule for products of two tensors (gating, squeeze-excitation, matmul, attention; default:
            :class:`~relprop.rules.Product`, the signal takes all).
        softmax: rule for softmax steps (default: :class:`~relprop.rules.Softmax`, AttnLRP's rule).
        input: rule for the explained input itself (e.g. :class:`~relprop.rules.MultiplyInput` for
            Gradient × Input); None: the relevance arriving there.

    What the engine does beyond choosing rules (the output relevance a pass starts from, folding BatchNorm in
    the forward pass, per-step rescaling) follows from the rules' declarations (see :class:`~relprop.rules.Rule`).
        name: shown in reports.
    """

    def __init__(
        self,
        layer_map: Sequence[tuple[Matcher, Rule]] = (),
        *,
        first: Rule | None = None,
        first_types: tuple[type, ...] = WEIGHTED_TYPES,
        last: Rule | None = None,
        name_map: Mapping[str, Rule] | None = None,
        add: Rule | None = None,
        pool: Rule | None = None,
        activation: Rule | None = None,
        batchnorm: Rule | None = None,
        maxpool: Rule | None = None,
        norm: Rule | None = None,
        product: Rule | None = None,
        softmax: Rule | None = None,
        input: Rule | None = None,
        name: str = "custom",
    ) -> None:
        self.layer_map = list(layer_map)
        self.first = first
        self.first_types = first_types
        self.last = last
        self.name_map = dict(name_map or {})
        self.add = add if add is not None else Norm()
        self.pool = pool if pool is not None else Norm()
        self.activation = activation if activation is not None else Pass()
        self.batchnorm = batchnorm if batchnorm is not None else Epsilon()
        self.maxpool = maxpool
        self.norm = norm if norm is not None else Epsilon()
        self.product = product if product is not None else Product()
        self.softmax = softmax if softmax is not None else Softmax()
        self.input = input
        self.name = name

    def rule_for(self, step: Step) -> Rule | None:
        """The rule for ``step``; None for steps that need no rule (routing, constants)."""
        return self.match(step)[0]

    def match(self, step: Step) -> tuple[Rule | None, str]:
        """The rule for ``step`` and why it was chosen (shown by :meth:`relprop.Explainer.summary`)."""
        for pattern, rule in self.name_map.items():
            if fnmatch.fnmatchcase(step.name, pattern):
                return rule, f"name_map[{pattern!r}]"
        defaults: dict[str, Rule | None] = {
            "add": self.add, "avgpool": self.pool, "activation": self.activation, "pass": self.activation,
            "maxpool": self.maxpool, "input": self.input, "normalise": self.norm, "product": self.product,
            "softmax": self.softmax,
        }  # fmt: skip
        if step.kind in defaults:
            default = defaults[step.kind]
            return default, f"{step.kind} default" if default is not None else ""
        if step.kind != "linear":
            return None, ""
        module = step.module
        if self.first is not None and step.first and isinstance(module, self.first_types):
            return self.first, "first layer"
        if self.last is not None and step.last:
            return self.last, "last layer"
        for i, (matcher, rule) in enumerate(self.layer_map):
            if isinstance(matcher, (type, tuple)):
                if isinstance(module, matcher):
                    return rule, f"layer_map[{i}]: {type(module).__name__}"
            elif matcher(step):
                return rule, f"layer_map[{i}]: {getattr(matcher, '__name__', 'predicate')}"
        if isinstance(module, BATCHNORM_MODULES):
            return self.batchnorm, "stand-alone BatchNorm default"
        raise UnsupportedLayerError(
            f"composite '{self.name}' has no rule for module '{step.name}' ({type(module).__name__}); "
            f"add `({type(module).__name__}, SomeRule())` to its layer_map or '{step.name}' to its name_map"
        )

    def __repr__(self) -> str:
        return f"Composite({self.name!r})"


def _layer_composite(
    conv: Rule, dense: Rule, first: Rule | None, name: str, *, first_types: tuple[type, ...] = WEIGHTED_TYPES,
    stabilizer: float = 1e-6, epsilon: float = 1e-6,
) -> Composite:  # fmt: skip
    """The classical presets: ``conv`` on convolutions, ``dense`` on Linear layers (functional ``F.linear`` /
    ``F.conv*`` calls included), ``first`` on the first layer; additions and pooling split in proportion (Norm with
    ``stabilizer``), normalisation layers and stand-alone BatchNorm with LRP-ε (``epsilon``), products with the
    signal taking all, softmax with AttnLRP's rule, activations passed."""
    return Composite(
        [(CONV_TYPES, conv), (DENSE_TYPES, dense)], first=first, first_types=first_types, add=Norm(stabilizer),
        pool=Norm(stabilizer), batchnorm=Epsilon(epsilon), norm=Epsilon(epsilon), product=Product("signal", stabilizer),
        name=name,
    )  # fmt: skip


def epsilon_plus_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """Flat on the first layer, z⁺ on convolutions, ε on dense layers."""
    return _layer_composite(
        ZPlus(stabilizer), Epsilon(epsilon), Flat(stabilizer), "epsilon_plus_flat", stabilizer=stabilizer,
        epsilon=epsilon,
    )


def epsilon_gamma_box(
    low: float | Tensor = 0.0, high: float | Tensor = 1.0, epsilon: float = 1e-6, gamma: float = 0.25,
    stabilizer: float = 1e-6,
) -> Composite:  # fmt: skip
    """z^B with input bounds [low, high] on the first convolution, γ on convolutions, ε on dense layers."""
    return _layer_composite(
        Gamma(gamma, stabilizer), Epsilon(epsilon), ZBox(low, high, stabilizer), "epsilon_gamma_box",
        first_types=CONV_TYPES, stabilizer=stabilizer, epsilon=epsilon,
    )  # fmt: skip


def epsilon_plus(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """z⁺ on convolutions, ε on dense layers."""
    return _layer_composite(
        ZPlus(stabilizer), Epsilon(epsilon), None, "epsilon_plus", stabilizer=stabilizer, epsilon=epsilon
    )


def epsilon_alpha2_beta1(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """α=2, β=1 on convolutions, ε on dense layers."""
    return _layer_composite(
        AlphaBeta(2, 1, stabilizer), Epsilon(epsilon), None, "epsilon_alpha2_beta1", stabilizer=stabilizer,
        epsilon=epsilon,
    )


def epsilon_alpha2_beta1_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """Flat on the first layer, α=2, β=1 on convolutions, ε on dense layers."""
    return _layer_composite(
        AlphaBeta(2, 1, stabilizer), Epsilon(epsilon), Flat(stabilizer), "epsilon_alpha2_beta1_flat",
        stabilizer=stabilizer, epsilon=epsilon,
    )


def epsilon(epsilon: float = 1e-6) -> Composite:
    """ε on every weighted layer."""
    return _layer_composite(Epsilon(epsilon), Epsilon(epsilon), None, "epsilon", epsilon=epsilon)


def zero() -> Composite:
    """LRP-0 everywhere (additions and pooling split proportionally without a stabiliser)."""
    c = _layer_composite(Zero(), Zero(), None, "zero")
    c.add = c.pool = c.batchnorm = c.norm = Zero()
    c.product = Product("signal", 0.0)
    return c


def rlrp(pool: str = "winner", skip: str = "proportional") -> Composite:
    """Relative LRP on every step (see :class:`~relprop.rules.RLRP`), rescaled per step; no
    hyperparameters (``pool`` and ``skip`` are structural choices)."""
    rule = RLRP(pool, skip)
    return Composite(
        [(WEIGHTED_TYPES + BATCHNORM_MODULES, rule)], add=rule, pool=rule, activation=rule, batchnorm=rule,
        maxpool=rule, norm=rule, product=rule, softmax=rule, name="rlrp",
    )  # fmt: skip


def gradient() -> Composite:
    """The plain gradient of the target logit with respect to the input."""
    g = Gradient()
    return Composite(
        [(WEIGHTED_TYPES + BATCHNORM_MODULES, g)], add=g, pool=g, activation=g, batchnorm=g, norm=g, product=g,
        softmax=g, name="gradient",
    )  # fmt: skip


def gradient_x_input() -> Composite:
    """Gradient × Input."""
    c = gradient()
    c.input = MultiplyInput()
    c.name = "gradient_x_input"
    return c


def isnet(epsilon: float = 0.01, low: float | Tensor = 0.0, high: float | Tensor = 1.0) -> Composite:
    """The ISNet training rules: z^B with bounds [low, high] on the first layer, LRP-0 on the last
    (classifier) layer, LRP-ε (stabiliser ε·sign(z)) on every other Linear/Conv layer and on BatchNorm that
    cannot be folded (DenseNet's, after a concatenation: y = s ⊙ x + t is a linear layer whose shift takes
    its share; passing R through it unchanged would divide by near-zero inputs further down)."""
    return Composite(
        [(WEIGHTED_TYPES + BATCHNORM_MODULES, Epsilon(epsilon))], first=ZBox(low, high), last=Zero(), add=Norm(1e-6),
        pool=Norm(1e-6), name="isnet",
    )  # fmt: skip


def isnet_zplus(low: float | Tensor = 0.0, high: float | Tensor = 1.0) -> Composite:
    """The second map of the dual ISNet: z^B [low, high] on the first layer, z⁺ on every other layer
    (stand-alone BatchNorm included)."""
    return Composite(
        [(WEIGHTED_TYPES + BATCHNORM_MODULES, ZPlus())], first=ZBox(low, high), add=Norm(1e-6), pool=Norm(1e-6),
        name="isnet_zplus",
    )


def isnet_authors(epsilon: float = 0.01, low: float = 0.0, high: float = 1.0) -> Composite:
    """The ISNet authors' LRP-Flex (Faster ISNet code), step for step: LRP-ε with ε at the ReLUs and LRP-0
    elsewhere (:class:`~relprop.rules.Flex`), a BatchNorm with batch statistics differentiated through them; on the
    first layer their z^B: s = R / stab(z − W⁺l − W⁻h − l·b⁺ − h·b⁻) (the positive bias stays in the denominator
    for l = 0, h = 1), stabiliser ε, a folded training-mode BatchNorm with the unbiased batch variance
    (:class:`~relprop.rules.ZBox` with ``bias="bounded"``, ``batch_variance="unbiased"``), its bias and BatchNorm
    shift detached there as in their code (``bias_gradient=False``). Scalar bounds only."""
    flex = Flex(epsilon)
    first = ZBox(low, high, epsilon, bias="bounded", batch_variance="unbiased", bias_gradient=False)
    return Composite(
        [(WEIGHTED_TYPES + BATCHNORM_MODULES, flex)], first=first, add=flex, pool=flex, name="isnet_authors"
    )


def attnlrp(epsilon: float = 1e-6) -> Composite:
    """AttnLRP (Achtibat et al. 2024) for transformers and modern CNNs: LRP-ε on every Linear/Conv layer, the
    uniform rule on products (q·kᵀ, attention × v, gates), AttnLRP's softmax rule, LayerNorm with its standard
    deviation held fixed (LRP-ε on the remaining affine map), activations (GELU, SiLU, ...) passed."""
    eps = Epsilon(epsilon)
    return Composite(
        [(WEIGHTED_TYPES, eps)], add=Norm(epsilon), pool=Norm(epsilon), batchnorm=eps, norm=eps,
        product=Product("uniform", epsilon), softmax=Softmax(), name="attnlrp",
    )  # fmt: skip


def cp_lrp(epsilon: float = 1e-6) -> Composite:
    """CP-LRP (Ali et al. 2022): as :func:`attnlrp`, but no relevance flows through the attention weights (nor
    through any gate): at attention × v and ``x * gate`` the signal takes all."""
    c = attnlrp(epsilon)
    c.product = Product("signal", epsilon)
    c.name = "cp_lrp"
    return c


PRESETS: dict[str, Callable[[], Composite]] = {
    "epsilon_plus_flat": epsilon_plus_flat,
    "epsilon_gamma_box": epsilon_gamma_box,
    "epsilon_plus": epsilon_plus,
    "epsilon_alpha2_beta1": epsilon_alpha2_beta1,
    "epsilon_alpha2_beta1_flat": epsilon_alpha2_beta1_flat,
    "epsilon": epsilon,
    "zero": zero,
    "gradient": gradient,
    "gradient_x_input": gradient_x_input,
    "rlrp": rlrp,
    "isnet": isnet,
    "isnet_zplus": isnet_zplus,
    "isnet_authors": isnet_authors,
    "attnlrp": attnlrp,
    "cp_lrp": cp_lrp,
}


def resolve(composite: str | Composite | Rule) -> Composite:
    """A Composite from a preset name, a Composite, or a single Rule."""
    if isinstance(composite, Composite):
        return composite
    if isinstance(composite, Rule):
        return Composite([(WEIGHTED_TYPES, composite)], name=composite.name)
    if isinstance(composite, str):
        key = composite.strip().lower().replace("-", "_")
        if key in PRESETS:
            return PRESETS[key]()
        raise ValueError(f"unknown composite {composite!r}; presets are: {', '.join(sorted(PRESETS))}")
    raise TypeError(f"composite must be a preset name, a Composite or a Rule, not {type(composite).__name__}")


__all__ = ["Composite", "PRESETS", "resolve", *PRESETS]
