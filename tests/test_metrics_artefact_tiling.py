"""The artefact-effect and mask-tiling metrics against their formulas (float64, written out here) and on
constructed cases whose answer is known: a linear model shows the whole effect, a hidden shortcut none;
relevance on the evidence has tiling 0, a uniform wash or stripes tiling 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from relprop.errors import InputError
from relprop.evaluation import artefact_effect, evidence_from_input, mask_tiling


def _linear(h: int = 6, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(h * h, classes, bias=False)).double().eval()
    return model


def _artefact(b: int, h: int) -> torch.Tensor:
    a = torch.zeros(b, 1, h, h, dtype=torch.bool)
    a[:, :, :2, :2] = True
    return a


def test_linear_model_shows_the_whole_effect() -> None:
    """f = w·x, LRP-0 relevance w ⊙ x: Σ_A R = Δ exactly, so shown = 1 and correlation = 1."""
    b, h = 8, 6
    model = _linear(h)
    x = torch.rand(b, 1, h, h, dtype=torch.float64)
    a = _artefact(b, h)
    x[a] = torch.rand(int(a.sum()), dtype=torch.float64) * 3 + 1
    x_without = x.masked_fill(a, 0.0)
    r = artefact_effect(model, x, x_without, a, target=0, composite="zero", min_effect=-1e9)
    w = model[1].weight[0].detach().reshape(1, 1, h, h)
    expected = (w * x * a).flatten(1).sum(1)
    torch.testing.assert_close(r.effect, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(r.relevance, expected, rtol=1e-10, atol=1e-10)
    assert r.shown == pytest.approx(1.0, abs=1e-9)
    assert r.correlation == pytest.approx(1.0, abs=1e-9)


def test_hidden_shortcut_reads_zero_and_formula_matches_reference() -> None:
    """Given heatmaps with nothing on the artefact, shown is 0 while the effect is large; with random
    heatmaps every number equals the float64 formula written here (rescaling to Σ R = f_c(x))."""
    b, h = 10, 6
    model = _linear(h, seed=1)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(b, 1, h, h, dtype=torch.float64, generator=gen)
    a = _artefact(b, h)
    x[a] = 5.0
    x_without = x.masked_fill(a, 0.0)
    clean = torch.rand(b, 1, h, h, dtype=torch.float64, generator=gen).masked_fill(a, 0.0)
    hidden = artefact_effect(model, x, x_without, a, clean, target="predicted", min_effect=-1e9)
    assert hidden.shown == 0.0
    assert hidden.effect.abs().sum() > 0

    heat = torch.randn(b, 1, h, h, dtype=torch.float64, generator=gen) + 0.5
    res = artefact_effect(model, x, x_without, a, heat, target="predicted", min_effect=0.1)
    with torch.no_grad():
        logits, logits_wo = model(x).numpy(), model(x_without).numpy()
    c = logits.argmax(1)
    logit = logits[np.arange(b), c]
    effect = logit - logits_wo[np.arange(b), c]
    H, A = heat.numpy()[:, 0], a.numpy()[:, 0]
    rho = np.array([H[i][A[i]].sum() * logit[i] / H[i].sum() for i in range(b)])
    sel = effect > 0.1
    np.testing.assert_allclose(res.effect.numpy(), effect, rtol=1e-12)
    np.testing.assert_allclose(res.relevance.numpy(), rho, rtol=1e-10)
    assert res.shown == pytest.approx(rho[sel].sum() / effect[sel].sum(), rel=1e-10)
    assert res.correlation == pytest.approx(np.corrcoef(rho, effect)[0, 1], rel=1e-10)
    assert res.summary()["affected"] == pytest.approx(sel.mean())


def test_artefact_effect_without_affected_samples_is_nan_and_model_untouched() -> None:
    model = _linear()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    with pytest.warns(UserWarning, match="training mode"):
        r = artefact_effect(model, x, x.clone(), _artefact(4, 6), target=1)  # no artefact: Δ = 0
    assert np.isnan(r.shown)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda x, a, r: (x, x[:2], a, r), "x_without has shape"),
        (lambda x, a, r: (x, x, a.to(torch.uint8) * 255, r), "artefact"),
        (lambda x, a, r: (x, x, a, r[:, :, :3]), "relevance must be heatmaps"),
        (lambda x, a, r: (x.flatten(1), x.flatten(1), a, r), "images"),
    ],
)
def test_artefact_effect_bad_input(change, match) -> None:  # type: ignore[no-untyped-def]
    model = _linear()
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    args = change(x, _artefact(4, 6), torch.rand(4, 1, 6, 6, dtype=torch.float64))
    with pytest.raises(InputError, match=match):
        artefact_effect(model, *args)


def _mask_and_evidence(b: int = 3, h: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.zeros(b, 1, h, h, dtype=torch.bool)
    m[:, :, 1:7, 1:7] = True
    e = torch.zeros_like(m)
    e[:, :, 2:4, 2:6] = True
    return m, e


def test_tiling_known_cases() -> None:
    m, e = _mask_and_evidence()
    s = 8 / 36
    on_evidence = mask_tiling(e.double() * 2.0, m, e)
    assert torch.allclose(on_evidence.tiling, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(on_evidence.evidence_share, torch.ones(3, dtype=torch.float64))
    wash = mask_tiling(m.double() + 5.0 * ~m, m, e)  # uniform inside the mask; background ignored
    assert torch.allclose(wash.tiling, torch.ones(3, dtype=torch.float64))
    assert torch.allclose(wash.spread, torch.ones(3, dtype=torch.float64))
    assert torch.allclose(wash.area_share, torch.full((3,), s, dtype=torch.float64))
    stripes = torch.zeros(3, 1, 8, 8, dtype=torch.float64)
    stripes[..., ::2] = 1.0  # columns: as much on the evidence's columns as elsewhere
    st = mask_tiling(stripes, m, e)
    assert torch.allclose(st.tiling, torch.ones(3, dtype=torch.float64))
    assert (st.spread < 1).all()
    off = mask_tiling((m & ~e).double(), m, e)
    assert torch.allclose(off.tiling, torch.full((3,), 1 / (1 - s), dtype=torch.float64))


def test_tiling_matches_reference_and_undefined_is_nan() -> None:
    gen = torch.Generator().manual_seed(0)
    b, h = 5, 9
    r = torch.randn(b, 2, h, h, generator=gen)
    m = torch.rand(b, 1, h, h, generator=gen) > 0.3
    e = torch.rand(b, 1, h, h, generator=gen) > 0.6
    got = mask_tiling(r, m, e)
    a = r.double().abs().sum(1).numpy()
    for i in range(b):
        M, E = m[i, 0].numpy(), e[i, 0].numpy() & m[i, 0].numpy()
        inside = a[i][M].sum()
        ev = a[i][E].sum() / inside
        area = E.sum() / M.sum()
        p = a[i][M] / inside
        assert got.evidence_share[i] == pytest.approx(ev, rel=1e-10)
        assert got.area_share[i] == pytest.approx(area, rel=1e-12)
        assert got.tiling[i] == pytest.approx((1 - ev) / (1 - area), rel=1e-10)
        assert got.spread[i] == pytest.approx(-(p * np.log(p)).sum() / np.log(M.sum()), rel=1e-10)
    m2, e2 = _mask_and_evidence(2)
    r2 = torch.ones(2, 1, 8, 8)
    r2[0] = 0.0  # no relevance at all
    full = mask_tiling(r2, m2, m2)  # evidence fills the mask: tiling undefined
    assert torch.isnan(full.tiling).all()
    zero = mask_tiling(r2, m2, e2)
    assert torch.isnan(zero.tiling[0]) and not torch.isnan(zero.tiling[1])
    assert zero.summary()["tiling_undefined"] == 1.0


def test_tiling_bad_input_and_evidence_from_input() -> None:
    m, e = _mask_and_evidence()
    with pytest.raises(InputError, match="relevance must be"):
        mask_tiling(torch.ones(3, 8, 8), m, e)
    with pytest.raises(InputError, match="evidence"):
        mask_tiling(torch.ones(3, 1, 8, 8), m, e[:2])
    x = torch.zeros(3, 1, 8, 8)
    x[:, :, 0, 0] = 1.0  # bright but outside the mask
    x[:, :, 3, 3] = 0.9
    ev = evidence_from_input(x, m)
    assert ev.dtype == torch.bool and int(ev.sum()) == 3 and bool(ev[:, 0, 3, 3].all())


def test_digits_artefact_masks_mark_the_squares(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The biased test images differ from the unbiased ones (the same digits) exactly on the artefact masks."""
    from relprop.data import BiasedDigitsConfig, artefact_masks, biased_digits

    cfg = BiasedDigitsConfig(n_train=20, n_val=10, n_test=30)
    splits = biased_digits(cfg, cache_dir=tmp_path)
    biased, unbiased = splits["test_biased"], splits["test_unbiased"]
    a = artefact_masks(biased, cfg)
    assert a.shape == (30, 1, 40, 40) and int(a.sum()) == 30 * 16
    diff = biased.images != unbiased.images
    assert torch.equal(diff, a)
    assert not artefact_masks(unbiased, cfg).any()
    with pytest.raises(InputError, match="canvas"):
        artefact_masks(biased, BiasedDigitsConfig(canvas=48))


class _Reader(nn.Module):
    """Logit k = mean of the pixels in region k (artefact squares, or the digit box for every class)."""

    def __init__(self, regions: torch.Tensor) -> None:
        super().__init__()
        k = regions.shape[0]
        w = regions.reshape(k, -1).float()
        self.fc = nn.Linear(w.shape[1], k, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(w / w.sum(1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_shortcut_measures_tell_a_shortcut_from_a_digit_reader(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A model reading only the artefact squares: the logit depends on them and the heatmap shows it
    (shown ≈ 1, linear model); a model reading the digit box: no effect, shown undefined, and its in-mask
    relevance follows the strokes (tiling < 1) since relevance = w ⊙ x is zero on black pixels."""
    from relprop.data import BiasedDigitsConfig, artefact_positions, biased_digits
    from relprop.isnet.evaluation import shortcut_measures

    cfg = BiasedDigitsConfig(n_train=20, n_val=10, n_test=20)
    s = biased_digits(cfg, cache_dir=tmp_path)
    squares = torch.zeros(10, 1, 40, 40)
    for k, (r, c) in enumerate(artefact_positions()):
        squares[k, 0, r : r + 4, c : c + 4] = 1
    shortcut = _Reader(squares)
    box = s["test_biased"].masks[:1].expand(10, 1, 40, 40)
    reader = _Reader(box + 0.0)
    from relprop.data import artefact_masks

    a = artefact_masks(s["test_biased"], cfg)
    got = shortcut_measures(shortcut, s["test_biased"], s["test_unbiased"], a, progress=False)
    assert got["artefact_affected"] == 1.0
    assert got["artefact_shown"] == pytest.approx(1.0, abs=1e-3)
    clean = shortcut_measures(reader, s["test_biased"], s["test_unbiased"], a, progress=False)
    assert np.isnan(clean["artefact_shown"]) and clean["artefact_effect"] == pytest.approx(0.0, abs=1e-6)
    assert clean["tiling"] < 0.2 and clean["evidence_share"] > 0.8
    with pytest.raises(InputError, match="same images"):
        shortcut_measures(reader, s["test_biased"], s["val"], a, progress=False)


def test_relprop_evaluate_prints_and_writes_the_shortcut_measures(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from relprop.cli import main

    run = tmp_path / "run"
    train = ["--epochs", "1", "--n-train", "60", "--width", "4", "--batch-size", "32", "--quiet", "--threads", "1"]
    assert main(["train", "--out", str(run), "--method", "plain", *train]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "artefact shown" in out and "mask tiling (deceiving)" in out
    doc = json.loads((run / "evaluation.json").read_text())
    sc = doc["plain"]["shortcut"]
    for split in ("test_biased", "test_deceiving"):
        assert set(sc[split]) >= {"artefact_shown", "artefact_effect", "tiling", "spread", "evidence_share"}
        assert sc[split]["spread"] is None or 0.0 <= sc[split]["spread"] <= 1.0
        assert sc[split]["evidence_share"] is None or 0.0 <= sc[split]["evidence_share"] <= 1.0
