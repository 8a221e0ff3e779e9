"""Which relevance maps the ISNet variants penalise, produced through relprop's engine.

Every variant returns ``(logits, maps)`` from **one** forward pass of the model, with maps of shape
(B, K, C, h, w) that are differentiable with respect to the model's parameters (``create_graph=True``),
ready for :func:`relprop.isnet.heatmap_loss`:

=================  =====  ==========================================================================
variant            K      maps
=================  =====  ==========================================================================
``original``       C      one LRP map per logit: R seeded with z_c on class c (cost grows with C)
``dual``           2      all logits at once (R = z), once with the ISNet ε rules, once with z⁺
``selective``      1      the softmax log-odds η_c = log(p_c + δ) − log(1 − p_c + δ) of one class c;
                          R = z ⊙ ∂η_c/∂z at the logits, so the LRP-0 classifier layer gives a ⊙ Wᵀ ∂η_c/∂z
``stochastic``     1      per sample the top logit with probability 1/2, otherwise a uniformly drawn
                          other class
``grad_input``     1      ablation: x ⊙ ∂p_top/∂x (Gradient × Input of the top softmax), no LRP rules
=================  =====  ==========================================================================

LRP rules (preset ``isnet``): z^B with the data range [low, high] at the first layer, LRP-ε (ε = 0.01,
stabiliser ε·sign(z)) in hidden layers, LRP-0 at the classifier layer. BatchNorm in training mode uses the
batch statistics, detached in the relevance pass, so one sample's map depends on the other samples only
through the (detached) normalisation constants, as in the authors' code.

:func:`rrr_penalty` is the Right-for-the-Right-Reasons baseline (Ross et al., 2017):
Σ ((1 − M) ⊙ ∂ Σ_c log p_c / ∂x)², per image, averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..composites import Composite, isnet_zplus
from ..composites import isnet as isnet_composite
from ..errors import InputError
from ..explainer import Explainer
from .loss import ConfigError, check_labels, check_mask

VARIANTS = ("original", "dual", "selective", "stochastic", "grad_input")
Variant = Literal["original", "dual", "selective", "stochastic", "grad_input"]
SelectiveClass = Literal["lowest", "label", "predicted"]


def maps_per_image(variant: str, num_classes: int) -> int:
    """K, the number of maps per image a variant produces."""
    _check_variant(variant)
    return {"original": num_classes, "dual": 2}.get(variant, 1)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown ISNet variant {variant!r}; choose one of {', '.join(VARIANTS)}")


class ISNetMaps:
    """Produces the logits and the penalised relevance maps of an ISNet variant for a batch.

    Args:
        model: any model relprop can trace, returning logits (B, C). It is not modified; the maps use
            the mode the model is in (``model.train()`` during training: batch statistics, dropout).
        variant: ``original``, ``dual``, ``selective``, ``stochastic`` or ``grad_input``.
        low, high: input range for the z^B rule at the first layer (the data range).
        epsilon: ε of the LRP-ε rule in hidden layers.
        selective_class: for ``selective``, which class's log-odds to explain: ``"lowest"`` logit (the
            authors' training choice), the ``"label"``, or the ``"predicted"`` class.
        selective_delta: δ in η = log(p + δ) − log(1 − p + δ).
        leaf_modules: passed to :class:`~relprop.Explainer`.

    Call it as ``logits, maps = isnet_maps(x, labels)``; ``maps`` has shape (B, K, C, h, w).
    """

    def __init__(
        self,
        model: nn.Module,
        variant: Variant | str = "selective",
        *,
        low: float = 0.0,
        high: float = 1.0,
        epsilon: float = 0.01,
        selective_class: SelectiveClass | str = "lowest",
        selective_delta: float = 1e-7,
        leaf_modules: Mapping[type, str] | None = None,
    ) -> None:
        _check_variant(variant)
        if selective_class not in ("lowest", "label", "predicted"):
            raise ConfigError(f"selective_class={selective_class!r}: use 'lowest', 'label' or 'predicted'")
        if not high > low:
            raise ConfigError(f"ISNetMaps(low={low}, high={high}): need high > low (the input data range)")
        self.model = model
        self.variant = variant
        self.selective_class = selective_class
        self.selective_delta = float(selective_delta)
        self._explainer: Explainer | None = None
        self._zplus: Composite | None = None
        if variant != "grad_input":
            self._explainer = Explainer(model, isnet_composite(epsilon, low, high), leaf_modules=leaf_modules)
            if variant == "dual":
                self._zplus = isnet_zplus(low, high)

    def __call__(
        self,
        x: Tensor,
        labels: Tensor | None = None,
        *,
        create_graph: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(logits, maps)`` for the batch ``x``; ``labels`` are needed for ``selective_class="label"``.

        ``generator`` draws the stochastic variant's classes (default: torch's global generator)."""
        if self.variant == "grad_input":
            return _grad_input_maps(self.model, x, create_graph)
        ex = self._explainer
        assert ex is not None
        others = [self._zplus] if self._zplus is not None else []
        forward = ex.forward(x, composites=others, create_graph=create_graph, update_stats=True)
        maps = [
            forward.explain(seed, composite=composite).relevance
            for composite, seed in self._seeds(forward.logits, labels, generator)
        ]
        return forward.logits, torch.stack(maps, 1)

    def _seeds(
        self, logits: Tensor, labels: Tensor | None, generator: torch.Generator | None
    ) -> list[tuple[Composite | None, Tensor]]:
        """(composite, output relevance) per map; None is the explainer's ISNet composite."""
        b, c = logits.shape
        if self.variant == "original":
            eye = torch.eye(c, dtype=logits.dtype, device=logits.device)
            return [(None, logits * eye[k]) for k in range(c)]
        if self.variant == "dual":
            return [(None, logits), (self._zplus, logits)]
        if self.variant == "stochastic":
            idx = stochastic_classes(logits.detach(), generator)
            return [(None, logits * F.one_hot(idx, c).to(logits.dtype))]
        # selective
        idx = self._selective_index(logits, labels)
        return [(None, logits * log_odds_gradient(logits, idx, self.selective_delta))]

    def _selective_index(self, logits: Tensor, labels: Tensor | None) -> Tensor:
        if self.selective_class == "lowest":
            return logits.detach().argmin(1)
        if self.selective_class == "predicted":
            return logits.detach().argmax(1)
        if labels is None:
            raise InputError("ISNetMaps(selective_class='label') needs the labels: call isnet_maps(x, labels)")
        labels = labels.reshape(-1).to(device=logits.device, dtype=torch.long)
        if labels.numel() != logits.shape[0]:
            raise InputError(f"got {labels.numel()} labels for a batch of {logits.shape[0]}")
        check_labels(labels, logits.shape[1])
        return labels


def stochastic_classes(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Per sample: the arg-max class with probability 1/2, otherwise a uniformly drawn other class."""
    b, c = logits.shape
    top = logits.argmax(1)
    if c == 1:
        return top
    u = torch.rand(b, generator=generator, device="cpu").to(logits.device)
    other = torch.randint(0, c - 1, (b,), generator=generator, device="cpu").to(logits.device)
    other = other + (other >= top).long()  # uniform over the classes != top
    return torch.where(u < 0.5, top, other)


def log_odds_gradient(logits: Tensor, idx: Tensor, delta: float = 1e-7) -> Tensor:
    """∂η/∂z for η = log(p_c + δ) − log(1 − p_c + δ), p = softmax(z), c = ``idx`` per sample:
    (1/(p_c + δ) + 1/(1 − p_c + δ)) · p_c · (e_c − p). Differentiable (used inside the ISNet loss)."""
    low_precision = logits.dtype in (torch.float16, torch.bfloat16)
    p = torch.softmax(logits.float() if low_precision else logits, 1).to(logits.dtype)
    onehot = F.one_hot(idx, logits.shape[1]).to(logits.dtype)
    pc = (p * onehot).sum(1, keepdim=True)
    deta_dp = 1.0 / (pc + delta) + 1.0 / (1.0 - pc + delta)
    return deta_dp * pc * (onehot - p)


def _grad_input_maps(model: nn.Module, x: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise InputError(f"{type(model).__name__} must return logits of shape (B, C)")
        p = torch.softmax(logits, 1)
        top = p.gather(1, logits.detach().argmax(1, keepdim=True)).sum()
        (g,) = torch.autograd.grad(top, xg, create_graph=create_graph)
    if not create_graph:
        return logits.detach(), (g * x).detach().unsqueeze(1)
    return logits, (g * xg).unsqueeze(1)


def rrr_penalty(model: nn.Module, x: Tensor, mask: Tensor, *, create_graph: bool = True) -> tuple[Tensor, Tensor]:
    """Right for the Right Reasons: ``(logits, penalty)`` with penalty =
    mean over the batch of Σ ((1 − M) ⊙ ∂ Σ_c log p_c / ∂x)² (M = 1 on the foreground).

    ``mask``: (B, 1, H, W) or (B, H, W) of the input's size, bools or 0/1 values (checked by
    :func:`~relprop.isnet.loss.check_mask`: a uint8 {0, 255} mask is an error)."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"rrr_penalty needs images x of shape (B, C, H, W), got {got}")
    mask = check_mask(mask, batch=x.shape[0], size=x.shape[-2:])
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        logp = F.log_softmax(logits, 1)
        (g,) = torch.autograd.grad(logp.sum(), xg, create_graph=create_graph)
    background = 1.0 - mask.to(g.dtype)
    penalty = ((background * g) ** 2).flatten(1).sum(1).mean()
    return logits, penalty


__all__ = [
    "ISNetMaps", "VARIANTS", "log_odds_gradient", "maps_per_image", "rrr_penalty", "stochastic_classes",
]  # fmt: skip
