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
    deep_supervision_loss,
    foreground_loss,
    gwrp,
    heatmap_loss,
    isnet_loss,
    prepare_mask,
    relevance_totals,
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
    """Literal loops over the spec's formulas (float64; the 'hybrid' or 'l2' foreground term)."""
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
            if cfg.foreground == "l2":  # (max(r, C2/C1) - C2/C1)^2 with r = F / C1
                highs.append((max(F / cfg.C1, cfg.C2 / cfg.C1) - cfg.C2 / cfg.C1) ** 2)
            elif F <= cfg.C1 + cfg.C2:
                highs.append((max(0.0, F - cfg.C2) / cfg.C1) ** 2)
            else:
                highs.append((F - cfg.C1 - cfg.C2) + 1)
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


# --- the authors' forms: 'l2' foreground, the saturation guard, LRP deep supervision --------------------------------


def _l2_foreground_reference(H: torch.Tensor, M: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    """The 'L2' foreground term as the spec writes it, in float64 with plain tensor ops (per image, (B,))."""
    F_ = (H.abs() * M[:, None, None]).sum((2, 3, 4))  # (B, K): Σ|H|·M per map
    r = F_ / c1
    one = torch.ones_like(r)
    low = (torch.minimum(r, one) - 1) ** 2
    high = (torch.maximum(r, one * (c2 / c1)) - c2 / c1) ** 2
    return low.mean(1) + high.mean(1)


@pytest.mark.parametrize("scale", [0.05, 1.0, 40.0])  # F below C1, inside [C1, C2], above C2
def test_l2_foreground_values_and_gradients_match_the_formula(scale: float) -> None:
    g = torch.Generator().manual_seed(int(scale * 100))
    H = (torch.randn(4, 3, 2, 5, 5, generator=g, dtype=D) * scale).requires_grad_(True)
    M = (torch.rand(4, 5, 5, generator=g) > 0.4).double()
    cfg = HeatmapLossConfig(C1=2.0, C2=9.0, foreground="l2")
    ours = foreground_loss(H, M, cfg)
    ref = _l2_foreground_reference(H, M, 2.0, 9.0)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=0)
    (g_ours,) = torch.autograd.grad(ours.sum(), H)
    (g_ref,) = torch.autograd.grad(ref.sum(), H)
    assert torch.allclose(g_ours, g_ref, rtol=1e-12, atol=1e-15)
    assert bool((ref > 0).any()) or scale == 1.0  # the range of F each case is meant to probe is reached


def test_l2_and_hybrid_differ_only_beyond_c1_plus_c2() -> None:
    H = torch.zeros(3, 1, 1, 2, 2, dtype=D)
    H[:, 0, 0, 0, 0] = torch.tensor([0.5, 8.0, 30.0], dtype=D)  # F: below C1, in (C2, C1+C2], beyond C1+C2
    M = torch.ones(3, 2, 2)
    l2 = foreground_loss(H, M, HeatmapLossConfig(C1=2.0, C2=7.0, foreground="l2"))
    hybrid = foreground_loss(H, M, HeatmapLossConfig(C1=2.0, C2=7.0, foreground="hybrid"))
    assert l2[:2].tolist() == pytest.approx(hybrid[:2].tolist())
    assert float(l2[2]) == pytest.approx(((30.0 - 7.0) / 2.0) ** 2)
    assert float(hybrid[2]) == pytest.approx(30.0 - 2.0 - 7.0 + 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_guard_caps_the_background_term_with_zero_gradient(dtype: torch.dtype) -> None:
    # foreground holds almost no relevance: the normalised background is enormous
    H = torch.zeros(2, 1, 1, 4, 4, dtype=dtype)
    H[:, 0, 0, 0, 0] = 1e-9  # foreground pixel
    H[:, 0, 0, 3, 3] = torch.tensor([5.0, 50.0], dtype=dtype)  # background pixel
    H.requires_grad_(True)
    M = torch.zeros(2, 4, 4)
    M[:, 0, 0] = 1
    cfg = HeatmapLossConfig(d=0.0, guard=True)
    lb = background_loss(H, M, cfg)
    cap = -math.log(1 - float(torch.tensor(1 - 1e-7, dtype=dtype)))  # −log(1 − fl(1 − 1e-7))
    assert lb.tolist() == pytest.approx([cap, cap], rel=1e-5)
    assert cap == pytest.approx(15.94 if dtype == torch.float32 else 16.118, abs=0.01)
    (grad,) = torch.autograd.grad(lb.sum(), H)
    assert bool((grad == 0).all())
    unguarded = background_loss(H, M, HeatmapLossConfig(d=0.0))
    assert bool((unguarded > cap).all())  # log(1 + x/E) keeps growing
    (grad_u,) = torch.autograd.grad(unguarded.sum(), H)
    assert bool((grad_u != 0).any())


def test_guard_equals_log1p_below_the_cap() -> None:
    g = torch.Generator().manual_seed(3)
    H = torch.randn(3, 2, 2, 4, 4, generator=g, dtype=D)
    M = (torch.rand(3, 4, 4, generator=g) > 0.5).long()
    a = heatmap_loss(H, M, HeatmapLossConfig(d=0.8, E=0.7))
    b = heatmap_loss(H, M, HeatmapLossConfig(d=0.8, E=0.7, guard=True))
    assert float(a) == pytest.approx(float(b), rel=1e-10)


def test_new_loss_options_are_checked() -> None:
    with pytest.raises(ValueError, match="foreground='L1'.*hybrid, l2"):
        HeatmapLossConfig(foreground="L1")
    with pytest.raises(ValueError, match="guard"):
        HeatmapLossConfig(guard=1)  # type: ignore[arg-type]


def _layer_loss_reference(H: torch.Tensor, M: torch.Tensor, cfg: HeatmapLossConfig) -> float:
    """Batch mean of A·L_bg + B·L_fg, from the spec's formulas in float64 (M: (B, h, w) already resized)."""
    return _reference(H.numpy(), M.numpy(), cfg)


def _any_pixel_resize(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A cell is foreground if any pixel of its adaptive window [floor(i·H/h), ceil((i+1)·H/h)) is."""
    B, H, W = mask.shape
    out = torch.zeros(B, h, w, dtype=D)
    for i in range(h):
        for j in range(w):
            r0, r1 = (i * H) // h, -((-(i + 1) * H) // h)
            c0, c1 = (j * W) // w, -((-(j + 1) * W) // w)
            out[:, i, j] = (mask[:, r0:r1, c0:c1].flatten(1) > 0).any(1).double()
    return out


def test_deep_supervision_is_a_descending_gwrp_over_the_layer_losses() -> None:
    g = torch.Generator().manual_seed(7)
    mask = torch.zeros(2, 12, 12)
    mask[:, 3:9, 2:10] = 1
    mask[1, 0, 0] = 1
    maps = {
        "input": torch.randn(2, 1, 1, 12, 12, generator=g, dtype=D),
        "block1": torch.randn(2, 1, 4, 6, 6, generator=g, dtype=D) * 3,
        "block2": torch.randn(2, 1, 8, 5, 5, generator=g, dtype=D) * 0.2,  # 12 -> 5: not a multiple
    }
    configs = {
        "input": HeatmapLossConfig(d=0.9, C1=1.0, C2=25.0),
        "block1": HeatmapLossConfig(d=0.9, C1=4.0, C2=30.0, foreground="l2"),
        "block2": HeatmapLossConfig(d=0.9, C1=0.5, C2=3.0),
    }
    per_layer = []
    for name, H in maps.items():
        h, w = H.shape[-2:]
        per_layer.append(_layer_loss_reference(H, _any_pixel_resize(mask, h, w), configs[name]))
    values = sorted(per_layer, reverse=True)
    for d_layers in (0.8, 0.3, 1.0):
        weights = [d_layers**j for j in range(len(values))]
        expected = sum(v * wt for v, wt in zip(values, weights)) / sum(weights)
        got = deep_supervision_loss(maps, mask, configs, d_layers=d_layers)
        assert float(got) == pytest.approx(expected, rel=1e-12)
    assert len(set(per_layer)) == 3 and per_layer != values  # the order matters: the test sees the sorting
    # isnet_loss with hidden= is the same aggregation, with the input map under the loss config
    logits, labels = torch.tensor([[0.2, 1.0], [1.5, -0.3]], dtype=D), torch.tensor([1, 0])
    total, ce, lh = isnet_loss(
        logits, labels, maps["input"], mask, P=0.6, config=configs["input"],
        hidden={k: maps[k] for k in ("block1", "block2")}, hidden_config=configs, d_layers=0.8,
    )  # fmt: skip
    assert float(lh) == pytest.approx(float(deep_supervision_loss(maps, mask, configs, 0.8)), rel=1e-12)
    assert float(total) == pytest.approx(0.4 * float(ce) + 0.6 * float(lh), rel=1e-12)


def test_deep_supervision_with_one_layer_is_the_heatmap_loss_and_errors() -> None:
    g = torch.Generator().manual_seed(8)
    H = torch.randn(2, 1, 2, 4, 4, generator=g, dtype=D)
    mask = torch.zeros(2, 4, 4)
    mask[:, 1:3, 1:3] = 1
    assert float(deep_supervision_loss({"x": H}, mask)) == pytest.approx(float(heatmap_loss(H, mask)), rel=1e-12)
    with pytest.raises(InputError, match="no HeatmapLossConfig for layer 'x'"):
        deep_supervision_loss({"x": H}, mask, {"y": HeatmapLossConfig()})
    with pytest.raises(ValueError, match="d_layers=1.5"):
        deep_supervision_loss({"x": H}, mask, d_layers=1.5)


def test_relevance_totals_whole_map_and_foreground() -> None:
    H = torch.zeros(2, 2, 1, 2, 2, dtype=D)
    H[0, 0, 0] = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    H[0, 1, 0] = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    H[1, :, 0, 1, 1] = -5.0
    mask = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 1]]])
    assert relevance_totals(H).tolist() == [(6.0 + 4.0) / 2, 5.0]
    assert relevance_totals(H, mask).tolist() == [(1.0 + 4.0) / 2, 5.0]
    assert relevance_totals(H, variant="dual").tolist() == [6.0, 5.0]  # the ε maps (first half of K)
