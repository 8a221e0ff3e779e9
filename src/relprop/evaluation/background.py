"""Background share of relevance: Σ_bg |R| / Σ |R| per sample, given a foreground mask; NaN (undefined) for a
sample without relevance.

ISNet (:mod:`relprop.isnet`) trains to make it small; :func:`relprop.isnet.evaluation.evaluate` reports it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["background_share"]


def background_share(relevance: Tensor, mask: Tensor) -> Tensor:
    """Per sample Σ_bg |R| / Σ |R| (channels summed over, float64), with M = 1 on the foreground.

    **NaN where Σ |R| = 0** (a collapsed model, constant logits): the share is undefined there, not 0 (which
    would read as a perfect score); average with ``nanmean`` and count the NaNs.

    ``relevance`` is (B, C, H, W); ``mask`` is (B, 1, H, W) or (B, H, W) of the same spatial size, bools or
    0/1 values (:func:`relprop.isnet.loss.check_mask`: a uint8 {0, 255} mask is an error)."""
    from ..masks import check_mask

    if not isinstance(relevance, Tensor) or relevance.dim() != 4:
        got = f"shape {tuple(relevance.shape)}" if isinstance(relevance, Tensor) else type(relevance).__name__
        raise InputError(f"relevance must have shape (B, C, H, W), got {got}")
    if not relevance.is_floating_point():
        raise InputError(f"relevance has dtype {relevance.dtype}; a floating-point tensor is needed")
    if (
        isinstance(mask, Tensor)
        and mask.dim() in (3, 4)
        and (mask.shape[0] != relevance.shape[0] or mask.shape[-2:] != relevance.shape[-2:])
    ):
        raise InputError(
            f"mask shape {tuple(mask.shape)} does not fit relevance shape {tuple(relevance.shape)}: give one "
            f"mask ({relevance.shape[0]}, 1, {relevance.shape[2]}, {relevance.shape[3]}) per heatmap"
        )
    m = check_mask(mask, batch=relevance.shape[0], size=relevance.shape[-2:]).to(relevance.device)
    a = relevance.detach().abs().sum(1, keepdim=True).double()
    total = a.flatten(1).sum(1)
    bg = (a * (1.0 - m.double())).flatten(1).sum(1)
    return torch.where(total > 0, bg / total.clamp_min(1e-300), torch.full_like(total, float("nan")))
