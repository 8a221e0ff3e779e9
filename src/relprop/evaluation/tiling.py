"""Mask tiling: relevance spread over the foreground mask without following the evidence in it.

A heatmap loss that penalises relevance outside a mask can be satisfied by *tiling* the mask: spreading
relevance over it (stripes, a uniform wash) regardless of where the class evidence is. The background share
then looks perfect while the map explains nothing. Given the foreground mask M and the evidence E inside it
(digit strokes, a lesion: where the class information really is), per sample, with a = Σ_c |R| summed over
channels:

* **evidence share** e = Σ_{M∩E} a / Σ_M a, the share of the in-mask relevance that lies on the evidence;
* **area share** s = |M∩E| / |M|, what e would be if relevance ignored the evidence (a uniform wash);
* **tiling** = (1 − e) / (1 − s): 0 = all in-mask relevance on the evidence, 1 = spread as if the evidence
  did not matter, above 1 = relevance avoids the evidence;
* **spread**: the normalised entropy −Σ p log p / log |M| of p = a / Σ_M a over the mask's pixels:
  1 = a uniform wash, 0 = a single pixel (a measure of how flat the map is, independent of E).

Samples without in-mask relevance, an empty mask, or evidence that fills the whole mask (or none of it)
have an undefined tiling: NaN, never 0 (which would read as perfect); average with ``nanmean``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from ..masks import check_mask

__all__ = ["MaskTiling", "mask_tiling", "evidence_from_input"]


@dataclass
class MaskTiling:
    """Result of :func:`mask_tiling`: float64 tensors of shape (B,), NaN where undefined."""

    evidence_share: Tensor
    area_share: Tensor
    tiling: Tensor
    spread: Tensor

    def summary(self) -> dict[str, float]:
        """Means over the samples where each value is defined, and how many had an undefined tiling."""
        out = {}
        for name in ("evidence_share", "area_share", "tiling", "spread"):
            v = getattr(self, name)
            out[name] = float(v.nanmean()) if bool((~torch.isnan(v)).any()) else float("nan")
        out["tiling_undefined"] = float(torch.isnan(self.tiling).sum())
        out["n"] = float(self.tiling.numel())
        return out


def mask_tiling(relevance: Tensor, mask: Tensor, evidence: Tensor) -> MaskTiling:
    """Evidence share, area share, tiling and spread of heatmaps inside a foreground mask (module docstring).

    Args:
        relevance: heatmaps (B, C, H, W).
        mask: foreground (B, 1, H, W) or (B, H, W), bools or 0/1 (1 = foreground).
        evidence: where the class evidence is, same shapes and values; only its part inside the mask counts.
    """
    if not isinstance(relevance, Tensor) or relevance.dim() != 4 or not relevance.is_floating_point():
        got = (
            f"shape {tuple(relevance.shape)}, dtype {relevance.dtype}"
            if isinstance(relevance, Tensor)
            else (type(relevance).__name__)
        )
        raise InputError(f"relevance must be floating-point heatmaps (B, C, H, W), got {got}")
    b, size = relevance.shape[0], relevance.shape[-2:]
    m = check_mask(mask, batch=b, size=size).to(relevance.device).double().flatten(1)
    ev = check_mask(evidence, batch=b, size=size, what="evidence").to(relevance.device).double().flatten(1) * m
    a = relevance.detach().double().abs().sum(1).flatten(1) * m
    inside = a.sum(1)
    area = m.sum(1)
    e = torch.where(inside > 0, (a * ev).sum(1) / inside.clamp_min(1e-300), math.nan)
    s = torch.where(area > 0, ev.sum(1) / area.clamp_min(1.0), math.nan)
    tiling = torch.where((s > 0) & (s < 1), (1 - e) / (1 - s).clamp_min(1e-300), math.nan)
    p = a / inside.clamp_min(1e-300)[:, None]
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(1)
    spread = torch.where((inside > 0) & (area > 1), entropy / torch.log(area.clamp_min(2.0)), math.nan)
    return MaskTiling(evidence_share=e.cpu(), area_share=s.cpu(), tiling=tiling.cpu(), spread=spread.cpu())


def evidence_from_input(x: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """Evidence as the bright pixels of the input inside the mask: max over channels of x > ``threshold``
    (digits on a black canvas: the strokes). Returns a bool (B, 1, H, W)."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"x must be images (B, C, H, W), got {got}")
    if not math.isfinite(threshold):
        raise InputError(f"threshold={threshold!r} must be a finite number")
    m = check_mask(mask, batch=x.shape[0], size=x.shape[-2:]).to(x.device) > 0.5
    return (x.amax(1, keepdim=True) > threshold) & m
