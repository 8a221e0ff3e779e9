"""The ISNet heatmap loss (spec: ../shared/specs/isnet.md; formulas as in the authors' public code).

For heatmaps H of shape (B, K, C, h, w) (K maps per image) and a binary foreground mask M:

1. M is resized to (h, w) if it is an integer multiple of it: a cell is foreground if any pixel is.
2. Hn = |H| / (Σ|H|·M / (ΣM + 1e-10) + 1e-10), sums over (C, h, w) per map: relevance in units of
   the mean absolute foreground relevance.
3. Hb = Hn ⊙ (1 − M): background only.
4. GWRP (global weighted rank pooling) per map and channel: values sorted in descending order,
   the i-th weighted by dⁱ, divided by Σᵢ dⁱ. d = 0 is max pooling, d = 1 the mean.
5. L_bg = log(1 + GWRP / E), averaged over channels and maps.
   With ``guard=True`` (the authors' numerical guard) it is computed as −log(1 − min(s, 1 − 1e-7)) with
   s = GWRP / (GWRP + E), the same value until it saturates at −log(1 − fl(1 − 1e-7)) (≈ 15.94 in float32,
   16.12 in float64), where its gradient is zero.
6. With F = Σ|H|·M per map (raw foreground total) and r = F / C1:
   ``foreground="hybrid"`` (the Faster ISNet's Lightning default): L_lo = (max(0, C1 − F) / C1)²,
   L_hi = (max(0, F − C2) / C1)² if F ≤ C1 + C2 else (F − C1 − C2) + 1 (branch chosen on F detached);
   ``foreground="l2"`` (the original ISNet, default of the authors' MNIST scripts):
   L_lo = (min(r, 1) − 1)², L_hi = (max(r, C2/C1) − C2/C1)² (= (max(0, F − C2) / C1)² everywhere).
   L_fg = mean_k L_lo + mean_k L_hi.
7. L_H = A·L_bg + B·L_fg per image, averaged over the batch; total L = (1 − P)·CE + P·L_H.

LRP deep supervision (:func:`deep_supervision_loss`, the authors' ``HiddenLayerPenalization`` /
``penalizeAll``): the batch-mean L_H of the input heatmap and of the relevance at the outputs of chosen hidden
layers (each with its own C1/C2 and the mask resized to the layer), aggregated over the layers by a 1-D GWRP:
the n layer losses sorted in descending order, Σⱼ d_layersʲ·L₍ⱼ₎ / Σⱼ d_layersʲ (the authors' ``dLoss``, 0.8
in their scripts).

Unlike the authors' code, a non-binary mask (:func:`check_mask`, the validator of every mask consumer), a mask
that cannot be resized to the heatmap, or NaN/Inf relevance is an error instead of being silently replaced, and a
sample without foreground (whose background term divides by a zero foreground) is a warning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, UsageError
from ..masks import check_mask, warn_empty_foreground

_TINY = 1e-10
_GUARD = 1e-7  #: the authors' clamp: x/(x + E) <= 1 − 1e-7
FOREGROUND_TERMS = ("hybrid", "l2")


class ConfigError(UsageError):
    """A training hyperparameter (:class:`~relprop.isnet.TrainConfig`, :class:`HeatmapLossConfig`) is invalid; the
    message names the field. (A :class:`~relprop.errors.UsageError`, so also a ``ValueError``.)

    ``field`` (e.g. ``"lr"``, ``"loss.C1"``), ``value`` and ``reason`` (the message without the field's name)
    let a caller restate it in its own words (``relprop train`` names the command-line flag)."""

    def __init__(self, message: str, *, field: str | None = None, value: Any = None, reason: str | None = None):
        super().__init__(message)
        self.field, self.value, self.reason = field, value, reason

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self),), {"field": self.field, "value": self.value, "reason": self.reason}


def _bad_loss(name: str, value: Any, reason: str) -> ConfigError:
    message = f"HeatmapLossConfig({name}={value!r}): {reason}"
    return ConfigError(message, field=f"loss.{name}", value=value, reason=reason)


@dataclass(frozen=True)
class HeatmapLossConfig:
    """Hyperparameters of the heatmap loss (defaults from the ISNet papers)."""

    d: float = 0.9  #: GWRP decay; 0.996 for 224-pixel images
    E: float = 1.0  #: background scale in log(1 + GWRP / E)
    A: float = 1.0  #: weight of the background term
    B: float = 1.0  #: weight of the foreground term
    C1: float = 1.0  #: lower bound of the foreground relevance total
    C2: float = 25.0  #: upper bound of the foreground relevance total
    foreground: str = "hybrid"  #: foreground term: "hybrid" (Faster ISNet) or "l2" (original ISNet)
    guard: bool = False  #: the authors' clamp of GWRP/(GWRP + E) at 1 − 1e-7 (L_bg saturates, zero gradient)

    def __post_init__(self) -> None:
        if self.foreground not in FOREGROUND_TERMS:
            raise _bad_loss("foreground", self.foreground, f"choose one of {', '.join(FOREGROUND_TERMS)}")
        if not isinstance(self.guard, bool):
            raise _bad_loss("guard", self.guard, "must be True or False")
        for name in ("d", "E", "A", "B", "C1", "C2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _bad_loss(name, value, "must be a finite number")
        if not 0.0 <= self.d <= 1.0:
            raise _bad_loss("d", self.d, "the GWRP decay must lie in [0, 1]")
        if self.E <= 0:
            raise _bad_loss("E", self.E, "must be > 0")
        if self.C1 <= 0:
            raise _bad_loss("C1", self.C1, "must be > 0")
        if self.C2 < self.C1:
            raise _bad_loss("C2", self.C2, f"must be >= C1 ({self.C1})")


def _as_maps(heatmaps: Tensor) -> Tensor:
    if heatmaps.dim() == 4:  # (B, C, h, w): one map per image
        heatmaps = heatmaps.unsqueeze(1)
    if heatmaps.dim() != 5:
        raise InputError(f"heatmaps must have shape (B, K, C, h, w) or (B, C, h, w), got {tuple(heatmaps.shape)}")
    if not bool(torch.isfinite(heatmaps).all()):
        raise InputError("heatmaps contain NaN or Inf values; the heatmap loss is undefined for them")
    return heatmaps


def prepare_mask(mask: Tensor, size: Sequence[int], batch: int, *, adaptive: bool = False) -> Tensor:
    """The foreground mask as a float tensor of shape (B, 1, 1, h, w), checked (:func:`check_mask`) and resized.

    ``mask`` has shape (B, H, W), (B, 1, H, W) or (B, 1, 1, H, W) with values 0 and 1 only; H and W must be
    integer multiples of ``size`` (a resized cell is foreground if any of its pixels is). ``adaptive=True``
    (hidden layers, whose sizes need not divide the input's) accepts any size: a cell is foreground if any
    pixel of its adaptive-pooling window is (the authors' adaptive average pooling, then ≠ 0).
    """
    m = check_mask(mask, batch=batch, of="the heatmaps")
    h, w = int(size[0]), int(size[1])
    H, W = m.shape[-2:]
    if (H, W) != (h, w):
        if adaptive:
            return F.adaptive_max_pool2d(m, (h, w)).unsqueeze(2)
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
    if config.guard:  # the authors' form: −log(1 − s), s = x/(x + E) clamped below 1
        s = torch.clamp(pooled / (pooled + config.E), max=1 - _GUARD)
        return (-torch.log(1 - s)).mean((1, 2))
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
    if config.foreground == "l2":
        r = total / c1
        low = (torch.clamp(r, max=1.0) - 1.0) ** 2
        high = (torch.clamp(r, min=c2 / c1) - c2 / c1) ** 2
        return low.mean(1) + high.mean(1)
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


def _layer_loss(H: Tensor, M: Tensor, config: HeatmapLossConfig) -> Tensor:
    return (config.A * _background_loss(H, M, config) + config.B * _foreground_loss(H, M, config)).mean()


def _gwrp_1d(values: Tensor, d: float) -> Tensor:
    """GWRP of a vector: values sorted in descending order, Σⱼ dʲ·v₍ⱼ₎ / Σⱼ dʲ."""
    return gwrp(values.reshape(1, -1), d).reshape(())


def _check_d_layers(d_layers: float) -> None:
    ok = not isinstance(d_layers, bool) and isinstance(d_layers, (int, float)) and 0.0 <= d_layers <= 1.0
    if not ok:
        raise ConfigError(f"d_layers={d_layers!r}: the GWRP decay over layers must be a number in [0, 1]")


def deep_supervision_loss(
    maps: Mapping[str, Tensor],
    mask: Tensor,
    config: HeatmapLossConfig | Mapping[str, HeatmapLossConfig] = HeatmapLossConfig(),
    d_layers: float = 0.8,
) -> Tensor:
    """LRP deep supervision: GWRP over layers (descending, decay ``d_layers``) of each layer's L_H.

    ``maps``: ``{layer name: relevance}``, each (B, K, C_l, h_l, w_l) or (B, C_l, h_l, w_l); the authors include
    the input heatmap as one of the layers (they call it ``"input"``). ``mask`` (B, 1, H, W) is resized to each
    layer (:func:`prepare_mask` with ``adaptive=True``). ``config``: one :class:`HeatmapLossConfig` for all
    layers, or one per layer name (each layer has its own C1/C2 range; :func:`tune_c1_c2` per layer). With one
    layer this is that layer's :func:`heatmap_loss`.
    """
    _check_d_layers(d_layers)
    if not isinstance(maps, Mapping) or not maps:
        raise InputError("deep_supervision_loss needs a non-empty mapping {layer name: relevance}")
    losses: list[Tensor] = []
    for name, relevance in maps.items():
        if isinstance(config, HeatmapLossConfig):
            cfg = config
        elif name in config:
            cfg = config[name]
        else:
            raise InputError(
                f"deep_supervision_loss: no HeatmapLossConfig for layer {name!r}; configs given for "
                f"{', '.join(map(repr, config))}"
            )
        H = _as_maps(relevance)
        M = prepare_mask(mask, H.shape[-2:], H.shape[0], adaptive=True)
        if not losses:
            warn_empty_foreground(M)
        losses.append(_layer_loss(H, M, cfg))
    return _gwrp_1d(torch.stack(losses), d_layers)


def isnet_loss(
    logits: Tensor,
    labels: Tensor,
    heatmaps: Tensor,
    mask: Tensor,
    P: float = 0.7,
    config: HeatmapLossConfig = HeatmapLossConfig(),
    *,
    hidden: Mapping[str, Tensor] | None = None,
    hidden_config: Mapping[str, HeatmapLossConfig] | None = None,
    d_layers: float = 0.8,
) -> tuple[Tensor, Tensor, Tensor]:
    """(L, CE, L_H) with L = (1 − P)·CE + P·L_H.

    With ``hidden`` (``{layer: relevance}``, LRP deep supervision) L_H is :func:`deep_supervision_loss` over
    the input heatmap (loss ``config``) and the hidden layers (``hidden_config[layer]``, else ``config``)."""
    if not 0.0 <= P <= 1.0:
        raise InputError(f"isnet_loss(P={P}): P must lie in [0, 1]")
    H, M = _maps_and_mask(heatmaps, mask)
    if logits.dim() == 2:
        check_labels(labels, logits.shape[1])
    ce = F.cross_entropy(logits, labels)
    warn_empty_foreground(M)
    lh = _layer_loss(H, M, config)
    if hidden:
        _check_d_layers(d_layers)
        losses = [lh]
        for name, relevance in hidden.items():
            Hl = _as_maps(relevance)
            Ml = prepare_mask(mask, Hl.shape[-2:], Hl.shape[0], adaptive=True)
            losses.append(_layer_loss(Hl, Ml, (hidden_config or {}).get(name, config)))
        lh = _gwrp_1d(torch.stack(losses), d_layers)
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


def relevance_totals(heatmaps: Tensor, mask: Tensor | None = None, variant: str | None = None) -> Tensor:
    """The total |relevance| per sample (B,) that C1/C2 tuning averages, float64.

    Σ|H| over (C, h, w) of each map, the whole map (the authors' tuning; ``mask=None``) or the foreground only
    (Σ|H|·M, with ``mask``), then the mean over the K maps of a sample; for ``variant="dual"`` over the LRP-ε
    maps only (the first half of K, as the authors tune on the ε maps)."""
    H = _as_maps(heatmaps).detach().abs()
    if mask is not None:
        H = H * prepare_mask(mask, H.shape[-2:], H.shape[0], adaptive=True)
    totals = H.double().sum((2, 3, 4))  # (B, K)
    if variant == "dual":
        totals = totals[:, : max(totals.shape[1] // 2, 1)]
    return totals.mean(1)


def tune_c1_c2(totals: Tensor) -> tuple[float, float]:
    """C1 and C2 from the total |relevance| per sample of a plain classifier's last epoch
    (:func:`relevance_totals`: the authors use the whole map's): C1 = max(μ/5, μ − 3σ),
    C2 = min(25·C1, μ + 3σ), σ the sample standard deviation."""
    t = totals.detach().double().flatten()
    if t.numel() < 2 or not bool(torch.isfinite(t).all()):
        raise InputError("tune_c1_c2 needs at least two finite relevance totals")
    mu, sigma = float(t.mean()), float(t.std())
    c1 = max(mu / 5, mu - 3 * sigma)
    c2 = min(25 * c1, mu + 3 * sigma)
    if not (c1 > 0 and math.isfinite(c2)):
        raise InputError(f"tune_c1_c2: the totals give C1={c1}, C2={c2}; they must be positive")
    return c1, max(c2, c1)
