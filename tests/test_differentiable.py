"""Relevance is differentiable: with ``create_graph=True`` its derivatives with respect to the input
and to the parameters match finite differences (``torch.autograd.gradcheck``, float64), every
parameter receives a gradient, and without ``create_graph`` the result carries no graph.

Relevance is only piecewise smooth (ReLU, the sign split of inputs and weights, the z > 0 mask of γ,
the sign of the stabiliser), so each case checks that its point lies well away from those kinks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import relprop

DTYPE = torch.float64
MARGIN = 1e-3  # minimum distance of pre-activations, logits, inputs and weights from 0
TARGET = 1


class SmallCNN(nn.Module):
    def __init__(self, batchnorm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(2 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(x)))
        h = torch.relu(self.conv2(h))
        return self.fc(h.flatten(1))


def _pre_activations(model: SmallCNN, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        z1 = model.bn(model.conv1(x))
        z2 = model.conv2(torch.relu(z1))
        return [z1, z2, model.fc(torch.relu(z2).flatten(1))]


def _setup(seed: int, batchnorm: bool = False) -> tuple[SmallCNN, torch.Tensor]:
    torch.manual_seed(seed)
    model = SmallCNN(batchnorm)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                m.bias.normal_(0.0, 0.3)
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    model = model.to(DTYPE).eval()
    x = torch.randn(1, 2, 6, 6, dtype=DTYPE)
    return model, x


def _away_from_kinks(model: SmallCNN, x: torch.Tensor) -> bool:
    tensors = [x, *_pre_activations(model, x)]
    tensors += [p for name, p in model.named_parameters() if name.endswith("weight")]
    return all(bool((t.detach().abs() > MARGIN).all()) for t in tensors)


def _smooth_case(batchnorm: bool = False) -> tuple[SmallCNN, torch.Tensor]:
    """The first seed whose input, weights, pre-activations and logits are all at least MARGIN from 0."""
    for seed in range(100):
        model, x = _setup(seed, batchnorm)
        if _away_from_kinks(model, x):
            return model, x
    raise AssertionError("no seed keeps the case away from the kinks")


COMPOSITES = {
    "epsilon": lambda: "epsilon",
    "epsilon_large": lambda: relprop.Epsilon(0.25),
    "zplus": relprop.ZPlus,
    "gamma": lambda: relprop.Gamma(0.25),
    "alpha2_beta1": lambda: relprop.AlphaBeta(2, 1),
    "epsilon_plus_flat": lambda: "epsilon_plus_flat",
    "gradient_x_input": lambda: "gradient_x_input",
}


def _nonzero_jacobian(fn, inp: torch.Tensor) -> bool:
    out = fn(inp)
    assert out.requires_grad and out.grad_fn is not None
    v = torch.randn_like(out)
    (g,) = torch.autograd.grad((out * v).sum(), inp)
    return bool((g != 0).any())


@pytest.mark.parametrize("composite", list(COMPOSITES))
def test_gradcheck_wrt_input(composite):
    model, x = _smooth_case()
    comp = COMPOSITES[composite]()
    x = x.clone().requires_grad_(True)

    def fn(inp: torch.Tensor) -> torch.Tensor:
        return relprop.explain(model, inp, TARGET, comp, create_graph=True)

    assert _nonzero_jacobian(fn, x)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("param", ["conv1.weight", "conv2.weight", "fc.weight", "bn.weight"])
@pytest.mark.parametrize("composite", list(COMPOSITES))
def test_gradcheck_wrt_parameter(composite, param):
    """gradcheck perturbs the parameter tensor itself in place, so the model sees each perturbation."""
    model, x = _smooth_case(batchnorm=True)
    comp = COMPOSITES[composite]()
    weight = model.get_parameter(param)
    assert weight.requires_grad

    def fn(w: torch.Tensor) -> torch.Tensor:
        assert w is weight
        return relprop.explain(model, x, TARGET, comp, create_graph=True)

    assert _nonzero_jacobian(fn, weight)
    assert torch.autograd.gradcheck(fn, (weight,), eps=1e-6, atol=1e-6, rtol=1e-4)
    assert _away_from_kinks(model, x)  # gradcheck restored the parameter


LRP_PRESETS = [p for p in relprop.PRESETS if not p.startswith("gradient")]


@pytest.mark.parametrize("preset", list(relprop.PRESETS))
def test_backward_reaches_every_parameter(preset):
    model, x = _smooth_case(batchnorm=True)
    relevance = relprop.explain(model, x, TARGET, preset, create_graph=True)
    assert relevance.requires_grad
    relevance.sum().backward()
    for name, p in model.named_parameters():
        if (preset.startswith("gradient") and name.endswith("bias")) or (
            preset in ("zero", "rlrp", "isnet", "isnet_authors") and name == "fc.bias"
        ):
            # The input gradient of a ReLU net does not depend on its biases (away from the kinks); under
            # LRP-0 the last layer (all of `zero`, the classifier layer of `isnet` / `isnet_authors`) passes
            # R_i = a_i w_i (z / z) on, whatever its bias; R-LRP starts from a one-hot vector and its bias takes
            # nothing.
            assert p.grad is None or bool((p.grad.abs() < 1e-12).all()), name  # zero up to rounding
            continue
        assert p.grad is not None, f"{preset}: no gradient reached {name}"
        assert bool(torch.isfinite(p.grad).all())
        assert bool((p.grad != 0).any()), f"{preset}: zero gradient on {name}"


@pytest.mark.parametrize("preset", list(relprop.PRESETS))
def test_no_graph_without_create_graph(preset):
    model, x = _smooth_case(batchnorm=True)
    x = x.clone().requires_grad_(True)
    e = relprop.Explainer(model, preset).explain(x, TARGET)
    assert e.relevance.grad_fn is None and not e.relevance.requires_grad
    assert e.logits.grad_fn is None
    assert x.grad is None and all(p.grad is None for p in model.parameters())
    with_graph = relprop.Explainer(model, preset).explain(x, TARGET, create_graph=True)
    assert with_graph.relevance.grad_fn is not None
    torch.testing.assert_close(with_graph.relevance.detach(), e.relevance, rtol=1e-12, atol=1e-14)


def test_gradient_preset_double_backward_matches_autograd():
    """For the gradient preset, d/dθ of the relevance equals torch's own double backward."""
    model, x = _smooth_case(batchnorm=True)
    x = x.clone().requires_grad_(True)
    relevance = relprop.explain(model, x, TARGET, "gradient", create_graph=True)
    (expected,) = torch.autograd.grad(model(x)[0, TARGET], x, create_graph=True)
    torch.testing.assert_close(relevance, expected, rtol=1e-12, atol=1e-14)
    params = [p for name, p in model.named_parameters() if name.endswith("weight")]
    got = torch.autograd.grad((relevance**2).sum(), params)
    want = torch.autograd.grad((expected**2).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
