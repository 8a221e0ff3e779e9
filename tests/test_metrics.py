"""relprop.evaluation.metrics: perturbation curves against analytic values and a naive reference, sanity checks,
stability, conservation, the Quantus explain_func, and a cross-check against Quantus 0.6.0."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import relprop
from relprop.evaluation import metrics as M
from relprop.explainer import Explanation

D = torch.float64


def linear_model(w: torch.Tensor) -> nn.Module:
    """logit_c = Σ_i w[c, i] x_i (no bias): the exact contribution of input i is x_i w[t, i]."""
    lin = nn.Linear(w[0].numel(), w.shape[0], bias=False).to(w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w.flatten(1))
    return nn.Sequential(nn.Flatten(), lin).eval()


def small_cnn(dtype: torch.dtype = D, channels: int = 3, size: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * (size // 2) ** 2, 16), nn.ReLU(), nn.Linear(16, 5),
    ).to(dtype).eval()  # fmt: skip


def expected_curve(total: torch.Tensor, region_r: torch.Tensor, order: str, steps: int) -> torch.Tensor:
    """For a linear model with baseline 0: score after removing the first n_k regions = total − Σ their R."""
    n = region_r.shape[1]
    srt = torch.sort(region_r, dim=1, descending=order == "morf").values
    removed = torch.cat([torch.zeros_like(srt[:, :1]), srt.cumsum(1)], dim=1)
    n_k = [math.ceil(k * n / steps) for k in range(steps + 1)]
    return total.unsqueeze(1) - removed[:, n_k]


# -- pixel flipping: analytic -----------------------------------------------------------------------------
def test_hand_computed_curve_aopc_and_area() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=D).view(1, 1, 2, 2)
    w = torch.tensor([[1.0, -1.0, 2.0, 0.5]], dtype=D)
    model = linear_model(w)
    relevance = x * w.view(1, 1, 2, 2)  # [1, -2, 6, 2], logit 7
    morf = M.pixel_flipping(model, x, relevance, 0, order="morf", steps=4)
    lerf = M.pixel_flipping(model, x, relevance, 0, order="lerf", steps=4)
    assert morf.order == "morf" and lerf.order == "lerf"
    assert torch.equal(morf.fractions, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=D))
    assert torch.allclose(morf.scores, torch.tensor([[7.0, 1.0, -1.0, -2.0, 0.0]], dtype=D))
    assert torch.allclose(lerf.scores, torch.tensor([[7.0, 9.0, 8.0, 6.0, 0.0]], dtype=D))
    assert torch.allclose(M.aopc(morf), torch.tensor([6.0], dtype=D))  # mean(0, 6, 8, 9, 7)
    assert torch.allclose(M.aopc(lerf), torch.tensor([1.0], dtype=D))  # mean(0, -2, -1, 1, 7)
    # 0.25 * ((7+1)/2 + (1-1)/2 + (-1-2)/2 + (-2+0)/2)
    assert torch.allclose(M.area_under_curve(morf), torch.tensor([0.375], dtype=D))


@pytest.mark.parametrize("steps", [16, 7, 1])
def test_exact_relevance_gives_the_analytic_curve(steps: int) -> None:
    torch.manual_seed(1)
    x = torch.randn(5, 3, 4, 4, dtype=D)
    w = torch.randn(4, 3 * 16, dtype=D)
    model, target = linear_model(w), torch.tensor([0, 1, 2, 3, 1])
    relevance = x * w[target].view_as(x)
    total = relevance.flatten(1).sum(1)
    pixel_r = relevance.sum(1).flatten(1)  # a pixel spans all channels
    for order in ("morf", "lerf"):
        curve = M.pixel_flipping(model, x, relevance, target, order=order, steps=steps, batch_size=7)
        want = expected_curve(total, pixel_r, order, steps)
        assert curve.scores.shape == (5, steps + 1)
        assert torch.allclose(curve.scores, want, atol=1e-12)
        n_k = torch.tensor([math.ceil(k * 16 / steps) for k in range(steps + 1)], dtype=D)
        assert torch.equal(curve.fractions, n_k / 16)
        assert torch.allclose(M.aopc(curve), (want[:, :1] - want).mean(1))
        assert torch.allclose(M.area_under_curve(curve), torch.trapezoid(want, n_k / 16, dim=1))
    morf = M.pixel_flipping(model, x, relevance, target, order="morf", steps=steps)
    lerf = M.pixel_flipping(model, x, relevance, target, order="lerf", steps=steps)
    if steps > 1:
        assert (M.aopc(morf) > M.aopc(lerf)).all()
    # a channel-summed heatmap gives the same curve
    summed = M.pixel_flipping(model, x, relevance.sum(1, keepdim=True), target, steps=steps)
    assert torch.allclose(summed.scores, morf.scores)


def test_random_relevance_has_lower_morf_aopc() -> None:
    torch.manual_seed(2)
    x = torch.randn(16, 1, 6, 6, dtype=D)
    w = torch.randn(3, 36, dtype=D)
    model = linear_model(w)
    true_r = x * w[2].view(1, 1, 6, 6)
    random_r = torch.randn_like(x)
    a_true = M.aopc(M.pixel_flipping(model, x, true_r, 2, steps=12))
    a_rand = M.aopc(M.pixel_flipping(model, x, random_r, 2, steps=12))
    # with exact contributions the MoRF order maximises every partial sum removed, so AOPC is maximal
    assert (a_true >= a_rand - 1e-12).all()
    assert a_true.mean() > a_rand.mean() + 0.5


def test_region_aggregation_with_patch_2() -> None:
    torch.manual_seed(3)
    x = torch.randn(4, 2, 6, 4, dtype=D)
    w = torch.randn(3, 2 * 24, dtype=D)
    model = linear_model(w)
    relevance = x * w[0].view(1, 2, 6, 4)
    total = relevance.flatten(1).sum(1)
    # region sums over 2×2 blocks and both channels, regions in row-major order
    region_r = relevance.sum(1).view(4, 3, 2, 2, 2).sum((2, 4)).flatten(1)
    for order in ("morf", "lerf"):
        curve = M.pixel_flipping(model, x, relevance, 0, order=order, steps=6, patch=2)
        assert torch.allclose(curve.scores, expected_curve(total, region_r, order, 6), atol=1e-12)
        # only the region sums matter: moving relevance inside a region leaves the curve unchanged
        shuffled = relevance.clone()
        shuffled[:, 0, 0, 0] += 5.0
        shuffled[:, 1, 1, 1] -= 5.0
        same = M.pixel_flipping(model, x, shuffled, 0, order=order, steps=6, patch=2)
        assert torch.allclose(same.scores, curve.scores, atol=1e-12)
    # one region per step: each step changes exactly one 2×2×C block
    single = M.pixel_flipping(model, x, relevance, 0, steps=6, patch=2)
    assert torch.equal(single.fractions, torch.arange(7, dtype=D) / 6)


# -- pixel flipping: against a naive loop, on a CNN ------------------------------------------------------
def naive_pixel_flipping(model, x, relevance, target, order, steps, patch, baseline, score):  # noqa: ANN001, ANN201
    b, c, h, w = x.shape
    curves = []
    for i in range(b):
        regions = [(r, q) for r in range(0, h, patch) for q in range(0, w, patch)]
        sums = [float(relevance[i, :, r : r + patch, q : q + patch].sum()) for r, q in regions]
        idx = sorted(range(len(regions)), key=lambda j: -sums[j] if order == "morf" else sums[j])
        if baseline == "mean":
            base = x[i].mean(dim=(1, 2), keepdim=True).expand_as(x[i])
        elif isinstance(baseline, torch.Tensor):
            base = baseline[i]
        else:
            base = torch.full_like(x[i], baseline)
        row = []
        for k in range(steps + 1):
            xi = x[i].clone()
            for j in idx[: math.ceil(k * len(regions) / steps)]:
                r, q = regions[j]
                xi[:, r : r + patch, q : q + patch] = base[:, r : r + patch, q : q + patch]
            out = model(xi.unsqueeze(0))[0]
            if score == "probability":
                out = out.softmax(0)
            row.append(float(out[target[i]]))
        curves.append(row)
    return torch.tensor(curves, dtype=D)


@pytest.mark.parametrize(
    "patch, steps, baseline, score, order",
    [(1, 64, 0.0, "logit", "morf"), (1, 10, "mean", "probability", "lerf"), (2, 16, "tensor", "logit", "morf"),
     (4, 3, 0.5, "probability", "lerf")],
)  # fmt: skip
def test_vectorised_equals_naive_loop(patch: int, steps: int, baseline: object, score: str, order: str) -> None:
    model = small_cnn()
    torch.manual_seed(4)
    x = torch.rand(3, 3, 8, 8, dtype=D)
    relevance = torch.randn_like(x)
    target = torch.tensor([0, 3, 4])
    if baseline == "tensor":
        baseline = torch.rand_like(x)
    with torch.no_grad():
        want = naive_pixel_flipping(model, x, relevance, target, order, steps, patch, baseline, score)
    curve = M.pixel_flipping(
        model, x, relevance, target, order=order, steps=steps, patch=patch, baseline=baseline, score=score,
        batch_size=5,
    )  # fmt: skip
    assert torch.allclose(curve.scores, want, atol=1e-12, rtol=1e-10)


def test_predicted_target_and_int_target() -> None:
    model = small_cnn()
    torch.manual_seed(5)
    x = torch.rand(4, 3, 8, 8, dtype=D)
    r = torch.randn_like(x)
    predicted = model(x).argmax(1)
    a = M.pixel_flipping(model, x, r, "predicted", steps=4, batch_size=3)
    b = M.pixel_flipping(model, x, r, predicted, steps=4)
    assert torch.allclose(a.scores, b.scores, atol=1e-12, rtol=0)  # other batch sizes: other rounding
    c = M.pixel_flipping(model, x, r, 2, steps=4)
    d = M.pixel_flipping(model, x, r, torch.full((4,), 2), steps=4)
    assert torch.equal(c.scores, d.scores)
    assert torch.allclose(c.scores[:, 0], model(x)[:, 2])


def test_pixel_flipping_leaves_inputs_and_model_alone() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 8, 8, dtype=D)
    r = torch.randn_like(x)
    x0, r0 = x.clone(), r.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    M.pixel_flipping(model, x, r, 1, steps=8, patch=2, baseline="mean")
    assert torch.equal(x, x0) and torch.equal(r, r0)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not model.training


def test_pixel_flipping_on_feature_vectors() -> None:
    torch.manual_seed(6)
    x = torch.randn(3, 10, dtype=D)
    w = torch.randn(2, 10, dtype=D)
    lin = nn.Linear(10, 2, bias=False).to(D).eval()
    with torch.no_grad():
        lin.weight.copy_(w)
    relevance = x * w[1]
    curve = M.pixel_flipping(lin, x, relevance, 1, steps=10)
    assert torch.allclose(curve.scores, expected_curve(relevance.sum(1), relevance, "morf", 10), atol=1e-12)


def test_pixel_flipping_rejects_bad_arguments() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 8, 8, dtype=D)
    r = torch.randn_like(x)
    with pytest.raises(ValueError, match=r"relevance has shape \(2, 3, 4, 4\)"):
        M.pixel_flipping(model, x, r[..., :4, :4], 0)
    with pytest.raises(ValueError, match="patch=3 does not divide"):
        M.pixel_flipping(model, x, r, 0, patch=3)
    with pytest.raises(ValueError, match="order='random'"):
        M.pixel_flipping(model, x, r, 0, order="random")
    with pytest.raises(ValueError, match=r"steps must be an integer between 1 and the number of regions \(16\)"):
        M.pixel_flipping(model, x, r, 0, patch=2, steps=17)
    with pytest.raises(ValueError, match="steps must be"):
        M.pixel_flipping(model, x, r, 0, steps=0)
    with pytest.raises(ValueError, match="score='softmax'"):
        M.pixel_flipping(model, x, r, 0, score="softmax")
    with pytest.raises(ValueError, match="patch must be a positive integer"):
        M.pixel_flipping(model, x, r, 0, patch=0)
    with pytest.raises(IndexError, match="target class 5 is out of range"):
        M.pixel_flipping(model, x, r, 5)
    with pytest.raises(IndexError, match="target has 3 indices but the batch has 2"):
        M.pixel_flipping(model, x, r, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="the only string baseline is 'mean'"):
        M.pixel_flipping(model, x, r, 0, baseline="black")
    with pytest.raises(ValueError, match="cannot be broadcast"):
        M.pixel_flipping(model, x, r, 0, baseline=torch.zeros(2, 3, 4, 4, dtype=D))
    with pytest.raises(ValueError, match="NaN or Inf"):
        M.pixel_flipping(model, x, r.masked_fill(r > 1, float("nan")), 0)
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        M.pixel_flipping(model, x.numpy(), r, 0)
    with pytest.raises(ValueError, match="needs inputs with spatial dimensions"):
        M.pixel_flipping(nn.Linear(4, 2).to(D).eval(), torch.rand(2, 4, dtype=D), torch.rand(2, 4, dtype=D), 0, patch=2)
    with pytest.warns(UserWarning, match="training mode"):
        M.pixel_flipping(small_cnn().train(), x, r, 0, steps=2)


# -- correlations ----------------------------------------------------------------------------------------
def test_heatmap_correlation_matches_scipy_with_ties() -> None:
    from scipy import stats

    torch.manual_seed(7)
    a = torch.randn(4, 2, 5, 5, dtype=D).relu().round(decimals=1)  # many ties (zeros and rounded values)
    b = a + 0.3 * torch.randn_like(a)
    for method, ref in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        got = M.heatmap_correlation(a, b, method=method)
        fa, fb = a.sum(1).flatten(1).numpy(), b.sum(1).flatten(1).numpy()
        want = [ref(fa[i], fb[i])[0] for i in range(4)]
        assert np.allclose(got.numpy(), want, atol=1e-12)
        assert torch.allclose(M.heatmap_correlation(a, a, method=method), torch.ones(4, dtype=D))
    assert torch.allclose(M.heatmap_correlation(a, -a), -torch.ones(4, dtype=D))
    assert torch.isnan(M.heatmap_correlation(torch.zeros(1, 3, 4), torch.rand(1, 3, 4))).all()
    with pytest.raises(ValueError, match="differ in shape"):
        M.heatmap_correlation(a, b[:2])
    with pytest.raises(ValueError, match="method='kendall'"):
        M.heatmap_correlation(a, b, method="kendall")


# -- randomisation check ---------------------------------------------------------------------------------
def test_randomisation_check() -> None:
    model = small_cnn()
    torch.manual_seed(8)
    x = torch.rand(4, 3, 8, 8, dtype=D)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    result = M.randomisation_check(model, x, "predicted", "epsilon", seed=0)
    assert [name for name, _ in result] == ["8", "6", "3", "0"]  # weighted layers, output first
    assert all(s.shape == (4,) and s.dtype == D for _, s in result)
    sims = torch.stack([s for _, s in result])
    assert (sims <= 1 + 1e-12).all()
    assert sims[-1].mean() < 0.6  # everything randomised: the heatmap no longer resembles the original
    # the user's model and the global RNG are untouched
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    # deterministic for a seed, different for another seed
    again = M.randomisation_check(model, x, "predicted", "epsilon", seed=0)
    assert all(torch.equal(s, t) for (_, s), (_, t) in zip(result, again))
    other = M.randomisation_check(model, x, "predicted", "epsilon", seed=1)
    assert not torch.equal(sims, torch.stack([s for _, s in other]))


def test_randomisation_check_by_hand() -> None:
    # Linear(16 → 1) then Linear(1 → 1), no biases. LRP-ε relevance is x ⊙ w1 times a factor set by the last
    # layer, so randomising the last layer keeps the |R| ranking (similarity exactly 1); randomising the
    # first gives x ⊙ w1_new, whose similarity we compute by hand.
    torch.manual_seed(9)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1, bias=False), nn.Linear(1, 1, bias=False)).to(D).eval()
    x = torch.rand(3, 1, 4, 4, dtype=D)
    result = M.randomisation_check(model, x, 0, "epsilon", seed=0)
    assert [name for name, _ in result] == ["2", "1"]
    assert torch.allclose(result[0][1], torch.ones(3, dtype=D), atol=1e-12)
    last, fresh = nn.Linear(1, 1, bias=False).to(D), nn.Linear(16, 1, bias=False).to(D)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        last.reset_parameters()  # the same draws as the copy's last layer, then its first
        fresh.reset_parameters()
    old = (x * model[1].weight.view(1, 1, 4, 4)).abs()
    new = (x * fresh.weight.detach().view(1, 1, 4, 4)).abs()
    want = M.heatmap_correlation(old, new, "spearman")
    assert torch.allclose(result[1][1], want, atol=1e-12)
    assert (result[1][1] < 0.9).all()


# -- stability -------------------------------------------------------------------------------------------
def test_stability() -> None:
    torch.manual_seed(10)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    ).to(D).eval()  # fmt: skip
    x = torch.randn(6, 3, 4, 4, dtype=D)
    explainer = relprop.Explainer(model, "gradient")
    target = model(x).argmax(1)
    assert torch.allclose(M.stability(explainer, x, target, noise=0.0, n=2), torch.ones(6, dtype=D), atol=1e-12)
    levels = [M.stability(explainer, x, target, noise=s, n=8).mean() for s in (1e-3, 0.1, 1.0)]
    assert levels[0] > 0.999  # almost no ReLU flips its state
    assert levels[0] > levels[1] > levels[2]
    assert levels[2] < 0.8
    with pytest.raises(ValueError, match="noise must be >= 0"):
        M.stability(explainer, x, target, noise=-1.0)


# -- conservation ----------------------------------------------------------------------------------------
def test_conservation_error_by_hand() -> None:
    relevance = torch.tensor([[[1.0, 2.0]], [[3.0, -1.0]]], dtype=D)  # sums 3 and 2
    out = torch.tensor([[0.0, 4.0], [-2.0, 0.0]], dtype=D)  # sums 4 and -2
    e = Explanation(relevance, out, None, out)
    assert torch.allclose(M.conservation_error(e), torch.tensor([0.25, 2.0], dtype=D))
    scaled = Explanation(relevance, out, None, out, log_scale=torch.log(torch.tensor([2.0, 0.5], dtype=D)))
    # unscaled relevance sums 6 and 1: |6 − 4| / 4, |1 + 2| / 2
    assert torch.allclose(M.conservation_error(scaled), torch.tensor([0.5, 1.5], dtype=D))
    with pytest.raises(TypeError, match="needs an Explanation"):
        M.conservation_error(relevance)


def test_conservation_error_of_real_explanations() -> None:
    torch.manual_seed(11)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))
    model = model.to(D).eval()
    x = torch.rand(4, 3, 2, 2, dtype=D)
    e = relprop.Explainer(model, "zero").explain(x, 1)
    err = M.conservation_error(e)
    assert (err < 1e-12).all()  # bias-free LRP-0 conserves
    e = relprop.Explainer(model, "gradient").explain(x, 1)
    assert torch.allclose(M.conservation_error(e), e.conservation_error)


# -- Quantus explain_func ----------------------------------------------------------------------------------
def test_quantus_explain_func_matches_relprop_explain() -> None:
    model = small_cnn(torch.float32)
    torch.manual_seed(12)
    x = torch.rand(3, 3, 8, 8)
    y = np.array([0, 2, 4])
    fn = M.quantus_explain_func("epsilon_plus_flat")
    want = relprop.explain(model, x, torch.from_numpy(y), "epsilon_plus_flat").numpy()
    for inputs in (x.numpy(), x):
        a = fn(model, inputs, y, device="cpu")
        assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == x.shape
        assert np.array_equal(a, want)
    other = fn(model, x.numpy(), y.tolist(), composite="zero")
    assert np.array_equal(other, relprop.explain(model, x, torch.from_numpy(y), "zero").numpy())
    # a float64 model gets float64 inputs; the result is float32
    a64 = M.quantus_explain_func("epsilon")(small_cnn(D), x.numpy(), 1)
    assert a64.dtype == np.float32
    assert np.allclose(a64, relprop.explain(small_cnn(D), x.double(), 1, "epsilon").numpy(), atol=1e-6)
    with pytest.raises(TypeError, match="unexpected keyword"):
        fn(model, x, y, method="Saliency")


# -- cross-check against Quantus 0.6.0 --------------------------------------------------------------------
def quantus_setup() -> tuple[object, nn.Module, np.ndarray, np.ndarray, np.ndarray]:
    import quantus

    model = small_cnn(torch.float32, channels=1)
    torch.manual_seed(13)
    x = torch.rand(4, 1, 8, 8)
    y = np.array([0, 1, 2, 3])
    # relevance from relprop through the Quantus adapter (continuous values: no ties in the order)
    a = M.quantus_explain_func("epsilon")(model, x.numpy(), y)
    return quantus, model, x.numpy(), y, a


def test_cross_check_quantus_pixel_flipping() -> None:
    quantus, model, x, y, a = quantus_setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = quantus.PixelFlipping(features_in_step=4, perturb_baseline=0.0, disable_warnings=True)
        theirs = np.asarray(metric(model=model, x_batch=x, y_batch=y, a_batch=a, softmax=False, device="cpu"))
        # Quantus calling our explain_func itself gives the same curve as the precomputed relevance
        via_explain_func = np.asarray(
            metric(model=model, x_batch=x, y_batch=y, explain_func=M.quantus_explain_func("epsilon"), softmax=False)
        )
    ours = M.pixel_flipping(model, torch.from_numpy(x), torch.from_numpy(a), torch.from_numpy(y), steps=16)
    # Quantus's curve omits the unperturbed point: its 16 steps are ours 1..16
    assert theirs.shape == (4, 16)
    np.testing.assert_allclose(ours.scores[:, 1:].numpy(), theirs, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(via_explain_func, theirs)


@pytest.mark.parametrize("order, softmax", [("morf", False), ("lerf", True)])
def test_cross_check_quantus_region_perturbation(order: str, softmax: bool) -> None:
    quantus, model, x, y, a = quantus_setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = quantus.RegionPerturbation(
            patch_size=2, regions_evaluation=16, order=order, perturb_baseline=0.5, disable_warnings=True
        )
        theirs = np.asarray(metric(model=model, x_batch=x, y_batch=y, a_batch=a, softmax=softmax, device="cpu"))
    ours = M.pixel_flipping(
        model, torch.from_numpy(x), torch.from_numpy(a), torch.from_numpy(y), order=order, steps=16, patch=2,
        baseline=0.5, score="probability" if softmax else "logit",
    )  # fmt: skip
    # Quantus reports f(x) − f(x⁽ᵏ⁾) for k = 1..16, one 2×2 region per step
    drop = (ours.scores[:, :1] - ours.scores[:, 1:]).numpy()
    assert theirs.shape == (4, 16)
    assert np.abs(theirs).max() > 1e-3  # the regions matter: the comparison is not between zeros
    np.testing.assert_allclose(drop, theirs, rtol=0, atol=1e-6)
    # and Quantus's mean drop is our AOPC up to the k = 0 term: AOPC = Σ_k drop_k / (S + 1)
    np.testing.assert_allclose(M.aopc(ours).numpy(), theirs.sum(1) / 17, rtol=0, atol=1e-6)


# -- layout --------------------------------------------------------------------------------------------------
def test_metrics_namespace_reexports_the_concept_modules() -> None:
    import relprop.evaluation as E
    from relprop.evaluation import background, faithfulness, quantus, randomisation, robustness, similarity

    assert set(M.__all__) <= set(E.__all__)
    for name in M.__all__:
        assert getattr(M, name) is getattr(E, name), name
    assert M.pixel_flipping is faithfulness.pixel_flipping and M.aopc is faithfulness.aopc
    assert M.randomisation_check is randomisation.randomisation_check
    assert M.stability is robustness.stability and M.heatmap_correlation is similarity.heatmap_correlation
    assert M.background_share is background.background_share
    assert M.quantus_explain_func is quantus.quantus_explain_func
