"""The ISNet heatmap loss (spec: ../shared/specs/isnet.md; formulas as in the authors' public code).

For heatmaps H of shape (B, K, C, h, w) (K maps per image) and a binary foreground mask M:

1. M is resized to (h, w) if it is an integer multiple of it: a cell is foreground if any pixel is.
2. Hn = |H| / (Σ|H|·M / (ΣM + 1e-10) + 1e-10), sums over (C, h, w) per map: relevance in units of
   the mean absolute foreground relevance.
3. Hb = Hn ⊙ (1 − M): background only.
4. GWRP (global weighted rank pooling) per map and channel: values sorted in descending order,
   the i-th weighted by dⁱ, divided by Σᵢ dⁱ. d = 0 is max pooling, d = 1 the mean.
5. L_bg = log(1 + GWRP / E), averaged over channels and maps.
6. With F = Σ|H|·M per map (raw foreground total): L_lo = (max(0, C1 − F) / C1)²,
   L_hi = (max(0, F − C2) / C1)² if F ≤ C1 + C2 else (F − C1 − C2) + 1 ("hybrid", branch chosen on F
   detached); L_fg = mean_k L_lo + mean_k L_hi.
7. L_H = A·L_bg + B·L_fg per image, averaged over the batch; total L = (1 − P)·CE + P·L_H.

Unlike the authors' code, a non-binary mask (:func:`check_mask`, the validator of every mask consumer), a mask
that cannot be resized to the heatmap, or NaN/Inf relevance is an error instead of being silently replaced, and a
sample without foreground (whose background term divides by a zero foreground) is a warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, UsageError
from ..masks import check_mask, warn_empty_foreground

_TINY = 1e-10


class ConfigError(UsageError):
    """A training hyperparameter (:class:`~relprop.isnet.TrainConfig`, :class:`HeatmapLossConfig`) is invalid; the
    message names the field. (A :class:`~relprop.errors.UsageError`, so also a ``ValueError``.)"""


@dataclass(frozen=True)
class HeatmapLossConfig:
    """Hyperparameters of the heatmap loss (defaults from the ISNet papers)."""

    d: float = 0.9  #: GWRP decay; 0.996 for 224-pixel images
    E: float = 1.0  #: background scale in log(1 + GWRP / E)
    A: float = 1.0  #: weight of the background term
    B: float = 1.0  #: weight of the foreground term
    C1: float = 1.0  #: lower bound of the foreground relevance total
    C2: float = 25.0  #: upper bound of the foreground relevance total

    def __post_init__(self) -> None:
        for name in ("d", "E", "A", "B", "C1", "C2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"HeatmapLossConfig({name}={value!r}): must be a finite number")
        if not 0.0 <= self.d <= 1.0:
            raise ConfigError(f"HeatmapLossConfig(d={self.d}): the GWRP decay must lie in [0, 1]")
        if self.E <= 0 or self.C1 <= 0 or self.C2 < self.C1:
            raise ConfigError(f"HeatmapLossConfig(E={self.E}, C1={self.C1}, C2={self.C2}): need E > 0 and 0 < C1 <= C2")


def _as_maps(heatmaps: Tensor) -> Tensor:
    if heatmaps.dim() == 4:  # (B, C, h, w): one map per image
        heatmaps = heatmaps.unsqueeze(1)
    if heatmaps.dim() != 5:
        raise InputError(f"heatmaps must have shape (B, K, C, h, w) or (B, C, h, w), got {tuple(heatmaps.shape)}")
    if not bool(torch.isfinite(heatmaps).all()):
        raise InputError("heatmaps contain NaN or Inf values; the heatmap loss is undefined for them")
    return heatmaps


def prepare_mask(mask: Tensor, size: Sequence[int], batch: int) -> Tensor:
    """The foreground mask as a float tensor of shape (B, 1, 1, h, w), checked (:func:`check_mask`) and resized.

    ``mask`` has shape (B, H, W), (B, 1, H, W) or (B, 1, 1, H, W) with values 0 and 1 only; H and W must be
    integer multiples of ``size`` (a resized cell is foreground if any of its pixels is).
    """
    m = check_mask(mask, batch=batch, of="the heatmaps")
    h, w = int(size[0]), int(size[1])
    H, W = m.shape[-2:]
    if (H, W) != (h, w):
        if H % h or W % w:
            raise InputError(
                f"mask size {H}x{W} is not an integer multiple of the heatmap size {h}x{w}; resize the mask "
                "to the input size of the model"
            )
        m = F.max_pool2d(m, (H // h, W // w))
    return m.unsqueeze(2)


def gwrp(x: Tensor, d: float) -> Tensor:
    """Global weighted rank pooling over the last two dimensions: Σᵢ dⁱ·v₍ᵢ₎ / Σᵢ dⁱ with v sorted
    in descending order. d = 0 is the maximum, d = 1 the mean."""
    flat = x.flatten(-2)
    n = flat.shape[-1]
    values = flat.sort(dim=-1, descending=True).values
    if d == 0:
        weights = torch.zeros(n, dtype=x.dtype, device=x.device)
        weights[0] = 1.0
    else:
        weights = torch.pow(torch.tensor(d, dtype=x.dtype, device=x.device), torch.arange(n, device=x.device))
    return (values * weights).sum(-1) / weights.sum()


def _maps_and_mask(heatmaps: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    H = _as_maps(heatmaps)
    return H, prepare_mask(mask, H.shape[-2:], H.shape[0])


def background_loss(heatmaps: Tensor, mask: Tensor, config: HeatmapLossConfig = HeatmapLossConfig()) -> Tensor:
    """L_bg per image (B,): log(1 + GWRP(Hn ⊙ (1 − M)) / E), averaged over channels and maps. Warns
    (:class:`EmptyForegroundWarning`) about samples without foreground."""
    H, M = _maps_and_mask(heatmaps, mask)
    warn_empty_foreground(M)
    return _background_loss(H, M, config)


def _background_loss(H: Tensor, M: Tensor, config: HeatmapLossConfig) -> Tensor:
    a = H.abs()
    fg_mean = (a * M).sum((2, 3, 4)) / (M.sum((2, 3, 4)) * a.shape[2] + _TINY)
    hn = a / (fg_mean[..., None, None, None] + _TINY)
    pooled = gwrp(hn * (1 - M), config.d)  # (B, K, C)
    return torch.log1p(pooled / config.E).mean((1, 2))


def foreground_loss(heatmaps: Tensor, mask: Tensor, config: HeatmapLossConfig = HeatmapLossConfig()) -> Tensor:
    """L_fg per image (B,): keeps the foreground total F = Σ|H|·M of every map inside [C1, C2]. Warns
    (:class:`EmptyForegroundWarning`) about samples without foreground."""
    H, M = _maps_and_mask(heatmaps, mask)
    warn_empty_foreground(M)
    return _foreground_loss(H, M, config)


def _foreground_loss(H: Tensor, M: Tensor, config: HeatmapLossConfig) -> Tensor:
    total = (H.abs() * M).sum((2, 3, 4))  # (B, K)
    c1, c2 = config.C1, config.C2
    low = (torch.clamp(c1 - total, min=0) / c1) ** 2
    quadratic = (torch.clamp(total - c2, min=0) / c1) ** 2
    linear = total - c1 - c2 + 1
    high = torch.where(total.detach() <= c1 + c2, quadratic, linear)
    return low.mean(1) + high.mean(1)


def heatmap_loss(heatmaps: Tensor, mask: Tensor, config: HeatmapLossConfig = HeatmapLossConfig()) -> Tensor:
    """L_H = mean over the batch of A·L_bg + B·L_fg. Warns once per call (:class:`EmptyForegroundWarning`),
    naming how many samples have an all-background mask."""
    H, M = _maps_and_mask(heatmaps, mask)
    warn_empty_foreground(M)
    return (config.A * _background_loss(H, M, config) + config.B * _foreground_loss(H, M, config)).mean()


def isnet_loss(
    logits: Tensor,
    labels: Tensor,
    heatmaps: Tensor,
    mask: Tensor,
    P: float = 0.7,
    config: HeatmapLossConfig = HeatmapLossConfig(),
) -> tuple[Tensor, Tensor, Tensor]:
    """(L, CE, L_H) with L = (1 − P)·CE + P·L_H."""
    if not 0.0 <= P <= 1.0:
        raise InputError(f"isnet_loss(P={P}): P must lie in [0, 1]")
    H, M = _maps_and_mask(heatmaps, mask)
    if logits.dim() == 2:
        check_labels(labels, logits.shape[1])
    ce = F.cross_entropy(logits, labels)
    warn_empty_foreground(M)
    lh = (config.A * _background_loss(H, M, config) + config.B * _foreground_loss(H, M, config)).mean()
    return (1 - P) * ce + P * lh, ce, lh


def check_labels(labels: Tensor, num_classes: int, what: str = "labels") -> None:
    """An :class:`~relprop.errors.InputError` naming the first label outside 0..num_classes-1 and the fix."""
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        label = int(labels[bad][0])
        raise InputError(
            f"{what} hold the class {label}, but the model has {num_classes} outputs (classes 0..{num_classes - 1}): "
            f"give the model one output per class (num_classes >= {int(labels.max()) + 1}), or map the labels "
            f"to 0..{num_classes - 1}"
        )


def tune_c1_c2(foreground_totals: Tensor) -> tuple[float, float]:
    """C1 and C2 from the total |relevance| per map of a plain classifier's last epoch:
    C1 = max(μ/5, μ − 3σ), C2 = min(25·C1, μ + 3σ)."""
    t = foreground_totals.detach().double().flatten()
    if t.numel() < 2 or not bool(torch.isfinite(t).all()):
        raise InputError("tune_c1_c2 needs at least two finite relevance totals")
    mu, sigma = float(t.mean()), float(t.std())
    c1 = max(mu / 5, mu - 3 * sigma)
    c2 = min(25 * c1, mu + 3 * sigma)
    if not (c1 > 0 and math.isfinite(c2)):
        raise InputError(f"tune_c1_c2: the totals give C1={c1}, C2={c2}; they must be positive")
    return c1, max(c2, c1)
