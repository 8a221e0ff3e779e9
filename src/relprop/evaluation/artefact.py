"""How much of an artefact's effect on the logit a heatmap shows (a shortcut that hides from the heatmap).

A classifier can rely on an artefact (a marker, a tag, a bright square) while its heatmap puts little
relevance there: fine-tuning a biased model with a heatmap loss teaches exactly that. The counterfactual
measures the artefact's true effect; the heatmap's relevance on the artefact is what it admits to.

For sample i with explained class c, input x_i, the same input without the artefact x̃_i and the artefact's
pixels A_i:

* **effect** Δ_i = f_c(x_i) − f_c(x̃_i), the artefact's effect on the logit (counterfactual);
* **relevance on the artefact** ρ_i = Σ_{p ∈ A_i} R_i(p), summed over channels, with R_i rescaled so that
  Σ_p R_i(p) = f_c(x_i) (a no-op for rules that conserve the logit; gives other methods the logit's scale);
* **shown** = Σ_{i ∈ S} ρ_i / Σ_{i ∈ S} Δ_i over the samples S whose artefact raises the logit
  (Δ_i > ``min_effect``): 1 = the heatmap shows the whole effect, 0 = the effect is hidden (a heatmap that
  looks clean while the logit depends on the artefact), above 1 = the heatmap overstates it;
* **correlation**: Pearson correlation of ρ and Δ over the samples (does more effect show as more relevance).

The model is used in the mode it is in (call ``model.eval()`` first); it is never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ..composites import Composite
from ..errors import InputError
from ..explainer import Explainer
from ..masks import check_mask
from ..rules import Rule
from ._common import TargetLike, check_batch, check_range, logits_of, targets_of, warn_training

__all__ = ["ArtefactEffect", "artefact_effect"]


@dataclass
class ArtefactEffect:
    """Result of :func:`artefact_effect`; per-sample tensors are float64 of shape (B,).

    Attributes:
        effect: Δ = f_c(x) − f_c(x without the artefact).
        relevance: ρ = Σ over the artefact's pixels of R (rescaled to sum to f_c(x)); NaN where Σ R = 0.
        logit: f_c(x).
        targets: the explained class c per sample (LongTensor).
        min_effect: samples with Δ > min_effect enter :attr:`shown`.
    """

    effect: Tensor
    relevance: Tensor
    logit: Tensor
    targets: Tensor
    min_effect: float = 0.0

    @property
    def affected(self) -> Tensor:
        """Bool (B,): the artefact raises the logit (Δ > min_effect) and the relevance is defined."""
        return (self.effect > self.min_effect) & ~torch.isnan(self.relevance)

    @property
    def shown(self) -> float:
        """Σ ρ / Σ Δ over :attr:`affected` samples; NaN if no sample's logit depends on the artefact."""
        s = self.affected
        if not bool(s.any()):
            return float("nan")
        return float(self.relevance[s].sum() / self.effect[s].sum())

    @property
    def correlation(self) -> float:
        """Pearson correlation of ρ and Δ over the samples with defined relevance (NaN if undefined)."""
        ok = ~torch.isnan(self.relevance)
        return _pearson(self.relevance[ok], self.effect[ok])

    def summary(self) -> dict[str, float]:
        """JSON-ready numbers: shown, correlation, mean effect and relevance, share of affected samples."""
        n = self.effect.numel()
        ok = ~torch.isnan(self.relevance)
        return {
            "shown": self.shown,
            "correlation": self.correlation,
            "mean_effect": float(self.effect.mean()) if n else float("nan"),
            "mean_relevance": float(self.relevance[ok].mean()) if bool(ok.any()) else float("nan"),
            "affected": float(self.affected.double().mean()) if n else float("nan"),
            "n": float(n),
        }


def _pearson(a: Tensor, b: Tensor) -> float:
    if a.numel() < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else float("nan")


def artefact_effect(
    model: nn.Module,
    x: Tensor,
    x_without: Tensor,
    artefact: Tensor,
    relevance: Tensor | None = None,
    *,
    target: TargetLike = "predicted",
    composite: str | Composite | Rule = "epsilon_plus_flat",
    min_effect: float = 0.0,
) -> ArtefactEffect:
    """The artefact's effect on the logit next to the heatmap's relevance on it (see the module docstring).

    Args:
        model: the classifier (logits (B, C)); used in its current mode, not modified.
        x: inputs with the artefact (B, C, H, W).
        x_without: the same inputs without it (the counterfactual), same shape.
        artefact: the artefact's pixels, (B, 1, H, W) or (B, H, W), bools or 0/1.
        relevance: heatmaps of ``x`` for ``target`` (B, C, H, W); computed with ``composite`` if None.
        target: the explained class: an index, a LongTensor (B,), or ``"predicted"`` (on ``x``).
        composite: a preset name or :class:`~relprop.composites.Composite`, when ``relevance`` is None.
        min_effect: Δ above which a sample counts as affected by the artefact (logit units).
    """
    x = check_batch(x)
    x_without = check_batch(x_without, "x_without")
    if x_without.shape != x.shape:
        raise InputError(
            f"x_without has shape {tuple(x_without.shape)} but x has {tuple(x.shape)}: give the same images "
            "without the artefact, one per image of x"
        )
    if x.dim() != 4:
        raise InputError(f"x must be images (B, C, H, W), got shape {tuple(x.shape)}")
    if not math.isfinite(min_effect):
        raise InputError(f"min_effect={min_effect!r} must be a finite number")
    b = x.shape[0]
    a = check_mask(artefact, batch=b, size=x.shape[-2:], what="artefact").to(x.device).double()
    warn_training(model, "artefact_effect")
    with torch.no_grad():
        logits = logits_of(model, x)
        logits_without = logits_of(model, x_without)
    t = targets_of(target, b, logits.device, logits)
    check_range(t, logits.shape[1])
    if relevance is None:
        relevance = Explainer(model, composite).explain(x, t).relevance
    if not isinstance(relevance, Tensor) or relevance.shape[0] != b or relevance.shape[-2:] != x.shape[-2:]:
        got = tuple(relevance.shape) if isinstance(relevance, Tensor) else type(relevance).__name__
        raise InputError(f"relevance must be heatmaps of x, shape ({b}, C, {x.shape[2]}, {x.shape[3]}), got {got}")
    r = relevance.detach().double().sum(1, keepdim=True)
    logit = logits.detach().double().gather(1, t[:, None])[:, 0]
    effect = logit - logits_without.detach().double().gather(1, t[:, None])[:, 0]
    total = r.flatten(1).sum(1)
    on_artefact = (r * a).flatten(1).sum(1)
    defined = total.abs() > 1e-12 * logit.abs().clamp_min(1e-30)
    rho = torch.where(defined, on_artefact * logit / total.where(defined, torch.ones_like(total)), math.nan)
    return ArtefactEffect(effect=effect.cpu(), relevance=rho.cpu(), logit=logit.cpu(), targets=t.cpu(),
                          min_effect=float(min_effect))  # fmt: skip
