"""The ISNet heatmap loss against hand computations and a float64 reference written from the spec's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import relprop
from relprop.errors import InputError
from relprop.isnet import (
    HeatmapLossConfig,
    background_loss,
    foreground_loss,
    gwrp,
    heatmap_loss,
    isnet_loss,
    prepare_mask,
    tune_c1_c2,
)

D = torch.float64


def test_gwrp_limits_and_a_hand_value() -> None:
    x = torch.tensor([[[1.0, 4.0], [3.0, 2.0]]], dtype=D)
    assert float(gwrp(x, 0.0)) == 4.0
    assert float(gwrp(x, 1.0)) == pytest.approx(2.5)
    # sorted 4, 3, 2, 1 with weights 1, 1/2, 1/4, 1/8
    assert float(gwrp(x, 0.5)) == pytest.approx((4 + 1.5 + 0.5 + 0.125) / (1 + 0.5 + 0.25 + 0.125))


def test_hand_computed_terms() -> None:
    # one map, one channel, 2x2; foreground = left column
    H = torch.tensor([[[[2.0, 1.0], [-4.0, 0.0]]]], dtype=D)  # (B=1, C=1, 2, 2)
    M = torch.tensor([[[1, 0], [1, 0]]])
    cfg = HeatmapLossConfig(d=0.0, E=1.0, C1=1.0, C2=5.0)
    # mean |H| on the foreground = (2 + 4) / 2 = 3; background normalised: 1/3 and 0; max = 1/3
    assert float(background_loss(H, M, cfg)) == pytest.approx(math.log(1 + 1 / 3))
    # F = 6 > C1 + C2 = 6? no: F == 6 <= 6 -> quadratic branch: ((6 - 5) / 1)^2 = 1; low term 0
    assert float(foreground_loss(H, M, cfg)) == pytest.approx(1.0)
    cfg2 = HeatmapLossConfig(d=0.0, C1=1.0, C2=4.0)  # F = 6 > 5: linear branch (6 - 1 - 4) + 1 = 2
    assert float(foreground_loss(H, M, cfg2)) == pytest.approx(2.0)
    cfg3 = HeatmapLossConfig(d=0.0, C1=10.0, C2=40.0)  # F = 6 < C1: ((10 - 6) / 10)^2
    assert float(foreground_loss(H, M, cfg3)) == pytest.approx(0.16)
    logits, labels = torch.tensor([[1.0, 2.0]], dtype=D), torch.tensor([1])
    total, ce, lh = isnet_loss(logits, labels, H, M, P=0.7, config=cfg)
    assert float(lh) == pytest.approx(math.log(1 + 1 / 3) + 1.0)
    assert float(total) == pytest.approx(0.3 * float(ce) + 0.7 * float(lh))


def _reference(H: np.ndarray, M: np.ndarray, cfg: HeatmapLossConfig) -> float:
    """Literal loops over the spec's formulas (float64)."""
    B, K, C, h, w = H.shape
    per_image = []
    for b in range(B):
        bg_terms, lows, highs = [], [], []
        for k in range(K):
            a = np.abs(H[b, k])
            m = M[b]
            fg_sum = sum(a[c, i, j] * m[i, j] for c in range(C) for i in range(h) for j in range(w))
            m_sum = C * m.sum()
            norm = a / (fg_sum / (m_sum + 1e-10) + 1e-10)
            for c in range(C):
                vals = sorted((norm[c] * (1 - m)).ravel().tolist(), reverse=True)
                weights = [cfg.d**i for i in range(len(vals))]
                g = sum(v * wt for v, wt in zip(vals, weights)) / sum(weights)
                bg_terms.append(math.log(1 + g / cfg.E))
            F = fg_sum
            lows.append((max(0.0, cfg.C1 - F) / cfg.C1) ** 2)
            highs.append((max(0.0, F - cfg.C2) / cfg.C1) ** 2 if F <= cfg.C1 + cfg.C2 else (F - cfg.C1 - cfg.C2) + 1)
        per_image.append(cfg.A * np.mean(bg_terms) + cfg.B * (np.mean(lows) + np.mean(highs)))
    return float(np.mean(per_image))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_literal_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(3, 2, 2, 4, 5, generator=g, dtype=D) * 3
    M = (torch.rand(3, 4, 5, generator=g) > 0.5).long()
    cfg = HeatmapLossConfig(d=0.7, E=0.5, A=1.3, B=0.8, C1=2.0, C2=6.0)
    assert float(heatmap_loss(H, M, cfg)) == pytest.approx(_reference(H.numpy(), M.double().numpy(), cfg), rel=1e-12)


def test_mask_is_resized_by_any_foreground_pixel() -> None:
    mask = torch.zeros(1, 4, 4)
    mask[0, 0, 1] = 1  # one pixel in the top-left 2x2 cell
    m = prepare_mask(mask, (2, 2), 1)
    assert m.shape == (1, 1, 1, 2, 2)
    assert m[0, 0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_gradients_reach_the_model_through_the_heatmaps() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x, labels = torch.rand(2, 1, 6, 6), torch.tensor([0, 2])
    mask = torch.zeros(2, 6, 6)
    mask[:, 2:4, 2:4] = 1
    e = relprop.Explainer(model, relprop.composites.epsilon(0.01)).explain(x, labels, create_graph=True)
    loss, _, _ = isnet_loss(e.logits, labels, e.relevance, mask)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool((p.grad != 0).any()), name


def test_bad_masks_and_heatmaps_are_errors() -> None:
    H = torch.rand(2, 1, 4, 4)
    with pytest.raises(InputError, match="not binary.*0.5"):
        heatmap_loss(H, torch.full((2, 4, 4), 0.5))
    with pytest.raises(InputError, match="not an integer multiple"):
        heatmap_loss(H, torch.ones(2, 6, 6))
    with pytest.raises(InputError, match="3 samples but the heatmaps have 2"):
        heatmap_loss(H, torch.ones(3, 4, 4))
    bad = H.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        heatmap_loss(bad, torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="decay"):
        HeatmapLossConfig(d=1.5)


def test_tune_c1_c2() -> None:
    totals = torch.tensor([10.0, 12.0, 8.0, 10.0])
    mu, sigma = 10.0, float(totals.std())
    c1, c2 = tune_c1_c2(totals)
    assert c1 == pytest.approx(max(mu / 5, mu - 3 * sigma))
    assert c2 == pytest.approx(min(25 * c1, mu + 3 * sigma))
