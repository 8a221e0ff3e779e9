"""The methods the R-LRP study compares (composites of :mod:`relprop.composites`), and the diagnostic
sign-free-split variant of R-LRP."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...composites import (
    WEIGHTED_TYPES,
    Composite,
    epsilon,
    epsilon_gamma_box,
    epsilon_plus,
    epsilon_plus_flat,
    gradient,
    gradient_x_input,
    rlrp,
    zero,
)
from ...rules import RLRP, Gamma, Norm


@dataclass(frozen=True)
class Method:
    """A method of the study: its key in results.json, its names in tables and figure columns, its definition
    (Markdown) and how to build its composite from the input bounds ``(low, high)``."""

    key: str
    label: str  # in tables
    short: str  # in figure columns
    definition: str
    build: Callable[[Any, Any], Composite]  # (low, high) input bounds -> composite


class SignFreeSplitRLRP(RLRP):
    """Diagnostic only (not R-LRP): additions split R by |u| / (|u| + |v|) instead of u / (u + v), so no
    division by a sum that can be ≈ 0. Used to test whether R-LRP's instability on ResNets comes from its
    one division. Overrides only :meth:`relprop.rules.Rule.add` (and the name)."""

    name = "rlrp_sign_free_split"

    def add(self, parts: Sequence[Tensor], z: Tensor, R: Tensor, negatives_silent: bool = False) -> list[Tensor]:
        total = parts[0].abs()
        for p in parts[1:]:
            total = total + p.abs()
        s = torch.where(total > 0, R / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(R))
        return [p.abs() * s for p in parts]


def sign_free_split_rlrp() -> Composite:
    """The R-LRP composite with :class:`SignFreeSplitRLRP` in place of every R-LRP rule."""
    c = rlrp()
    rule = SignFreeSplitRLRP()
    c.layer_map = [(matcher, rule) for matcher, _ in c.layer_map]
    c.add = c.pool = c.activation = c.batchnorm = c.maxpool = rule
    c.name = "rlrp_sign_free_split"
    return c


def gamma_all(g: float) -> Composite:
    """LRP-γ on every Linear/Conv layer, additions and pools by normalisation."""
    return Composite([(WEIGHTED_TYPES, Gamma(g))], add=Norm(1e-6), pool=Norm(1e-6), name=f"gamma_{g:g}")


MAIN_METHODS: tuple[Method, ...] = (
    Method(
        "rlrp",
        "R-LRP",
        "R-LRP",
        "`rlrp`: a ⊙ Wᵀ R on every layer, proportional split at additions, rescaled per step; no hyperparameter",
        lambda lo, hi: rlrp(),
    ),
    Method("lrp0", "LRP-0", "LRP-0", "`zero`: LRP-0 on every layer and addition", lambda lo, hi: zero()),
    Method(
        "eps_0.001", "LRP-ε 0.001", "ε=0.001", "`epsilon(0.001)`: LRP-ε on every layer", lambda lo, hi: epsilon(1e-3)
    ),
    Method("eps_0.1", "LRP-ε 0.1", "ε=0.1", "`epsilon(0.1)`", lambda lo, hi: epsilon(0.1)),
    Method("eps_1", "LRP-ε 1", "ε=1", "`epsilon(1)`", lambda lo, hi: epsilon(1.0)),
    Method("gamma_0.25", "LRP-γ 0.25", "γ=0.25", "`Gamma(0.25)` on every Linear/Conv", lambda lo, hi: gamma_all(0.25)),
    Method(
        "zplus",
        "z⁺ (epsilon_plus)",
        "z⁺",
        "`epsilon_plus`: z⁺ on convolutions, ε = 1e-6 on dense layers",
        lambda lo, hi: epsilon_plus(),
    ),
    Method(
        "egb",
        "epsilon_gamma_box",
        "ε-γ-box",
        "`epsilon_gamma_box`: z^B (pixel bounds) first, γ = 0.25 on convolutions, ε = 1e-6 on dense layers",
        lambda lo, hi: epsilon_gamma_box(low=lo, high=hi),
    ),
    Method(
        "epf",
        "epsilon_plus_flat",
        "ε-z⁺-flat",
        "`epsilon_plus_flat`: flat first layer, z⁺ on convolutions, ε = 1e-6 on dense layers",
        lambda lo, hi: epsilon_plus_flat(),
    ),
    Method("gradient", "Gradient", "Gradient", "`gradient`: ∂ logit / ∂ x", lambda lo, hi: gradient()),
    Method("gxi", "Gradient×Input", "Grad×Input", "`gradient_x_input`", lambda lo, hi: gradient_x_input()),
)
#: methods that appear only in the hyperparameter-sensitivity table
EXTRA_METHODS: tuple[Method, ...] = (
    Method("eps_1e-06", "LRP-ε 1e-6", "ε=1e-6", "`epsilon(1e-6)`", lambda lo, hi: epsilon(1e-6)),
    Method("gamma_0.05", "LRP-γ 0.05", "γ=0.05", "`Gamma(0.05)`", lambda lo, hi: gamma_all(0.05)),
    Method("gamma_1", "LRP-γ 1", "γ=1", "`Gamma(1)`", lambda lo, hi: gamma_all(1.0)),
)
ALL_METHODS = MAIN_METHODS + EXTRA_METHODS
METHOD_BY_KEY = {m.key: m for m in ALL_METHODS}
EPS_SERIES = ("eps_1e-06", "eps_0.001", "eps_0.1", "eps_1")
GAMMA_SERIES = ("gamma_0.05", "gamma_0.25", "gamma_1")

__all__ = [
    "ALL_METHODS", "EPS_SERIES", "EXTRA_METHODS", "GAMMA_SERIES", "MAIN_METHODS", "METHOD_BY_KEY", "Method",
    "SignFreeSplitRLRP", "gamma_all", "sign_free_split_rlrp",
]  # fmt: skip
