"""Relative LRP: the properties ../shared/specs/rlrp.md says must hold whatever the paper's exact variant."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop
from relprop.rules import RLRP

D = torch.float64


def raw_rlrp(**kw: str) -> relprop.Composite:
    """R-LRP, explained without per-step rescaling (``rescale=False``): the raw relevance (fine for shallow nets
    in float64)."""
    return relprop.composites.rlrp(**kw)


def chain_cnn(bias: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(8 * 2 * 2, 16, bias=bias), nn.ReLU(), nn.Linear(16, 5, bias=bias),
    ).to(D).eval()  # fmt: skip


def test_no_tunable_hyperparameter() -> None:
    for fn in (RLRP.__init__, relprop.composites.rlrp):
        params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
        assert {p.name for p in params} == {"pool", "skip"}
        assert all(isinstance(p.default, str) for p in params)  # structural choices, not numbers
    with pytest.raises(ValueError, match="pool must be"):
        RLRP(pool="mean")


class _DivisionSpy:
    """Counts Python-level tensor divisions while active."""

    NAMES = ("__truediv__", "__rtruediv__", "__itruediv__", "div", "div_", "true_divide")

    def __init__(self) -> None:
        self.calls = 0
        self._saved: dict[tuple[object, str], object] = {}

    def __enter__(self) -> _DivisionSpy:
        for owner in (torch.Tensor, torch):
            for name in self.NAMES:
                if hasattr(owner, name):
                    orig = getattr(owner, name)
                    self._saved[(owner, name)] = orig

                    def spy(*a: object, _orig: object = orig, **k: object) -> object:
                        self.calls += 1
                        return _orig(*a, **k)  # type: ignore[operator]

                    setattr(owner, name, spy)
        return self

    def __exit__(self, *exc: object) -> None:
        for (owner, name), orig in self._saved.items():
            setattr(owner, name, orig)


def test_linear_conv_and_pooling_never_divide_by_data() -> None:
    model, x = chain_cnn(bias=True), torch.rand(2, 3, 8, 8, dtype=D)
    explainer = relprop.Explainer(model, raw_rlrp(), rescale=False)
    with _DivisionSpy() as spy:
        r = explainer(x, 1)
    assert spy.calls == 0 and torch.isfinite(r).all()
    # the spy does see divisions: a classical rule divides at every layer
    eps = relprop.Explainer(model, "epsilon")
    with _DivisionSpy() as spy:
        eps(x, 1)
    assert spy.calls >= 4


def test_scaling_the_input_scales_raw_relevance_by_a_power_and_keeps_the_heatmap() -> None:
    model, x = chain_cnn(), torch.rand(2, 3, 8, 8, dtype=D) + 0.1
    raw = relprop.Explainer(model, raw_rlrp(), rescale=False)
    scaled = relprop.Explainer(model, "rlrp")
    r1, r2 = raw(x, 3), raw(2.0 * x, 3)
    nz = r1.abs() > 1e-12 * r1.abs().max()
    ratio = (r2[nz] / r1[nz]).log2()
    # 4 weighted layers, each multiplying by an activation of degree 1 in s (bias-free, ReLU homogeneous)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 4.0))
    torch.testing.assert_close(scaled(x, 3), scaled(2.0 * x, 3))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_per_neuron_identity(kind: str) -> None:
    torch.manual_seed(1)
    layer = nn.Linear(7, 5) if kind == "linear" else nn.Conv2d(3, 4, 3, stride=2, padding=1)
    model = nn.Sequential(layer, nn.Flatten()).to(D)
    x = torch.randn(2, *((7,) if kind == "linear" else (3, 6, 6)), dtype=D)
    z = model(x).detach()
    bias = layer.bias.detach()
    b = bias.repeat_interleave(z.shape[1] // bias.numel()) if kind == "conv" else bias
    explainer = relprop.Explainer(model, raw_rlrp(), rescale=False)
    for k in torch.randperm(z.shape[1])[:6].tolist():
        seed = torch.zeros_like(z)
        seed[:, k] = torch.tensor([0.7, -1.3], dtype=D)
        r = explainer(x, seed)
        # Σ_j R_{j←k} = (z_k − b_k) · R_k
        torch.testing.assert_close(r.flatten(1).sum(1), (z[:, k] - b[k]) * seed[:, k])


def closed_form(model: nn.Sequential, x: torch.Tensor, c: int) -> torch.Tensor:
    """x ⊙ (W₁ᵀ diag(a₁) W₂ᵀ diag(a₂) … e_c): the input gradient with each ReLU derivative replaced by
    the ReLU's output (max pooling and reshaping keep their gradient)."""
    acts, h = [], x.requires_grad_(False)
    for m in model:
        acts.append(h)
        h = m(h)
    g = torch.zeros_like(h)
    g[:, c] = 1.0
    for m, a in zip(reversed(list(model)), reversed(acts)):
        if isinstance(m, nn.ReLU):
            g = g * torch.relu(a)
        else:
            ar = a.detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(m(ar), ar, g)
    return x * g


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_layer_by_layer_equals_closed_form(net: str) -> None:
    torch.manual_seed(2)
    if net == "mlp":
        model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 4)).to(D)
        x = torch.randn(3, 6, dtype=D)
    else:
        model = nn.Sequential(
            nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(5, 4, 3), nn.ReLU(),
            nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
        ).to(D)  # fmt: skip
        x = torch.randn(3, 2, 8, 8, dtype=D)
    ours = relprop.Explainer(model, "rlrp").explain(x, 1)
    ref = closed_form(model, x.clone(), 1)
    raw = ours.relevance * ours.log_scale.exp().view(-1, *([1] * (x.dim() - 1)))
    torch.testing.assert_close(raw, ref)


@pytest.mark.parametrize("arch", ["vgg16", "vgg19", "resnet50", "densenet121"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_nan_or_inf_on_deep_random_networks(arch: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval().to(dtype)
    x = torch.rand(1, 3, 32, 32).to(dtype)
    e = relprop.Explainer(model, "rlrp").explain(x, 3)
    assert e.relevance.dtype == dtype
    assert torch.isfinite(e.relevance).all() and e.relevance.abs().max() > 0
    assert torch.isfinite(e.log_scale).all()


def test_stays_finite_where_lrp0_explodes() -> None:
    # a hidden neuron whose pre-activation is ~1e-30: LRP-0 divides by it
    lin1, lin2 = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.5]]))
        lin2.weight.copy_(torch.tensor([[1e35, 1.0]]))
    model = nn.Sequential(lin1, nn.Identity(), lin2).float()
    x = torch.tensor([[1.0, 1.0 - 1e-7]])
    lrp0 = relprop.explain(model, x, 0, "zero")
    r = relprop.explain(model, x, 0, "rlrp")
    assert not torch.isfinite(lrp0).all() or lrp0.abs().max() > 1e20
    assert torch.isfinite(r).all() and r.abs().max() == 1.0


def test_pool_contribution_option() -> None:
    model, x = chain_cnn(), torch.rand(1, 3, 8, 8, dtype=D)
    winner = relprop.explain(model, x, 0, raw_rlrp(), rescale=False)
    contrib = relprop.explain(model, x, 0, raw_rlrp(pool="contribution"), rescale=False)
    assert not torch.allclose(winner, contrib)
    assert torch.isfinite(contrib).all()


class TinyResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l0, self.l1, self.l2, self.l3 = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l0(x)
        u = self.l2(torch.relu(self.l1(h)))
        return self.l3(torch.relu(u + h))


@pytest.mark.parametrize("skip", ["proportional", "rescale_branches"])
def test_skip_options_against_hand_computation(skip: str) -> None:
    torch.manual_seed(4)
    m, x = TinyResidual().to(D), torch.randn(3, 4, dtype=D)
    with torch.no_grad():
        h = m.l0(x)
        a1 = torch.relu(m.l1(h))
        u = m.l2(a1)
        y = u + h
        ry = torch.relu(y) * m.l3.weight[2]  # R-LRP at l3 with a one-hot seed on class 2
        if skip == "proportional":
            ru, rh_direct = u * ry / y, h * ry / y
            rh = h * ((a1 * (ru @ m.l2.weight)) @ m.l1.weight) + rh_direct
        else:
            share_u, share_h = (u * ry / y).sum(1, keepdim=True), (h * ry / y).sum(1, keepdim=True)
            branch_u = h * ((a1 * (ry @ m.l2.weight)) @ m.l1.weight)  # R carried down the branch unchanged
            rh = branch_u * share_u / branch_u.sum(1, keepdim=True) + ry * share_h / ry.sum(1, keepdim=True)
        ref = x * (rh @ m.l0.weight)
    ours = relprop.explain(m, x, 2, raw_rlrp(skip=skip), rescale=False)
    torch.testing.assert_close(ours, ref)


def test_rescale_branches_refuses_blocks_it_cannot_split() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.l(x)
            return h + h

    with pytest.raises(relprop.UnsupportedLayerError, match="rescale_branches.*itself"):
        relprop.Explainer(Twice(), relprop.composites.rlrp(skip="rescale_branches"))


def test_rescale_branches_stays_finite_where_a_branch_cancels() -> None:
    """Regression: on ResNet50 at 64² in float32 a branch's signed relevance sums to nearly zero, and its
    rescaling factor share/total overflowed float32 (all-NaN maps). The factor's magnitude now goes into the
    tracked log-scale. (The map itself is ill-conditioned there: float32 and float64 maps of this input can
    disagree, because the branch total is a cancellation; the default skip="proportional" has no such split.)"""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.rand(1, 3, 64, 64)
    e = relprop.Explainer(model, relprop.composites.rlrp(skip="rescale_branches")).explain(x, 3)
    assert torch.isfinite(e.relevance).all() and e.relevance.abs().max() == 1.0
    assert e.log_scale is not None and torch.isfinite(e.log_scale).all()
