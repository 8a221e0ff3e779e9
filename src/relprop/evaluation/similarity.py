"""Similarity of two batches of heatmaps: Pearson or Spearman correlation of channel-summed maps.

Correlations of a constant map (e.g. all-zero relevance) are undefined and come out as NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["flat_heatmap", "heatmap_correlation"]


def flat_heatmap(a: Tensor) -> Tensor:
    """(B, N): relevance summed over channels (dim 1, when there are spatial dims) and flattened."""
    if a.dim() >= 3:
        a = a.sum(dim=1)
    return a.reshape(a.shape[0], -1)


def _average_ranks(v: Tensor) -> Tensor:
    """Ranks along dim 1 (0-based), ties get the mean of their positions (as scipy's rankdata)."""
    b, n = v.shape
    sorted_v, idx = torch.sort(v, dim=1, stable=True)
    new = torch.ones_like(sorted_v, dtype=torch.bool)
    new[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    group = torch.cumsum(new.long(), dim=1) - 1 + torch.arange(b, device=v.device).unsqueeze(1) * n
    pos = torch.arange(n, dtype=v.dtype, device=v.device).expand(b, n)
    total = torch.zeros(b * n, dtype=v.dtype, device=v.device).index_add_(0, group.reshape(-1), pos.reshape(-1))
    count = torch.zeros(b * n, dtype=v.dtype, device=v.device).index_add_(
        0, group.reshape(-1), torch.ones_like(pos).reshape(-1)
    )
    mean_pos = (total / count.clamp_min(1))[group]
    return torch.empty_like(mean_pos).scatter_(1, idx, mean_pos)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    return ((a * b).sum(dim=1) / denom).clamp(-1.0, 1.0)  # rounding can exceed 1; 0/0 -> NaN (constant maps)


def heatmap_correlation(a: Tensor, b: Tensor, method: str = "pearson") -> Tensor:
    """Correlation (B,) between two batches of heatmaps, on channel-summed, flattened maps (float64).

    Args:
        a, b: relevance of the same shape (B, C, ...) or (B, F).
        method: ``"pearson"`` or ``"spearman"`` (Pearson of average ranks, ties as in scipy).

    A constant map has no correlation: NaN.
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise InputError("heatmap_correlation needs two tensors")
    if a.shape != b.shape:
        raise InputError(f"heatmaps differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2:
        raise InputError(f"heatmaps must be batches (B, ...), got shape {tuple(a.shape)}")
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method={method!r}: use 'pearson' or 'spearman'")
    fa = flat_heatmap(a.detach()).to(torch.float64)
    fb = flat_heatmap(b.detach()).to(device=fa.device, dtype=torch.float64)
    if method == "spearman":
        fa, fb = _average_ranks(fa), _average_ranks(fb)
    return _pearson(fa, fb)
