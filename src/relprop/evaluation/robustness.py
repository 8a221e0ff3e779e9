"""Robustness: how much a heatmap changes under small input noise (:func:`stability`).

Mean Pearson correlation between the heatmap of x and of ``x + noise·std(x)·N(0, 1)`` (std per sample) over
``n`` draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ._common import check_batch
from .similarity import heatmap_correlation

__all__ = ["stability"]


def stability(
    explain_fn: Callable[[Tensor, Any], Tensor],
    x: Tensor,
    target: Any,
    *,
    noise: float = 1e-3,
    n: int = 8,
    seed: int = 0,
) -> Tensor:
    """Heatmap stability under small input noise: mean Pearson correlation (B,) between the heatmap of x
    and the heatmaps of ``x + noise · std(x) · ε``, ε ~ N(0, 1), over ``n`` draws (std per sample).

    Args:
        explain_fn: ``explain_fn(x, target) -> relevance`` shaped like x (e.g. an :class:`Explainer`).
        x: input batch.
        target: passed to ``explain_fn`` unchanged (use class indices rather than ``"predicted"`` so that
            every draw explains the same class).
        noise: noise level relative to each sample's standard deviation (0 gives 1 for a deterministic
            explain_fn).
        n: number of noise draws.
        seed: seed of the noise (a private generator; the global RNG is untouched).
    """
    x = check_batch(x)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    reference = explain_fn(x, target)
    if not isinstance(reference, Tensor) or reference.shape[0] != x.shape[0]:
        raise InputError("explain_fn(x, target) must return a tensor with one heatmap per sample")
    std = x.detach().flatten(1).std(dim=1).view(-1, *([1] * (x.dim() - 1)))
    gen = torch.Generator(device=x.device).manual_seed(seed)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(n):
        eps = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        r = explain_fn(x + noise * std * eps, target)
        total += heatmap_correlation(reference, r, method="pearson")
    return total / n
