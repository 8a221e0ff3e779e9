"""Background share of relevance: Σ_bg |R| / Σ |R| per sample, given a foreground mask.

ISNet (:mod:`relprop.isnet`) trains to make it small; :func:`relprop.isnet.evaluation.evaluate` reports it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["background_share"]


def background_share(relevance: Tensor, mask: Tensor) -> Tensor:
    """Per sample Σ_bg |R| / Σ |R| (channels summed over), with M = 1 on the foreground; 0 where R = 0.

    ``relevance`` is (B, C, H, W); ``mask`` is (B, 1, H, W) or (B, H, W) of the same spatial size."""
    if relevance.dim() != 4:
        raise InputError(f"relevance must have shape (B, C, H, W), got {tuple(relevance.shape)}")
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.shape[0] != relevance.shape[0] or mask.shape[-2:] != relevance.shape[-2:]:
        raise InputError(f"mask shape {tuple(mask.shape)} does not fit relevance shape {tuple(relevance.shape)}")
    a = relevance.detach().abs().sum(1, keepdim=True).double()
    total = a.flatten(1).sum(1)
    bg = (a * (1.0 - mask.double())).flatten(1).sum(1)
    return torch.where(total > 0, bg / total.clamp_min(1e-300), torch.zeros_like(total))
