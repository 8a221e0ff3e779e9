"""Whole architectures: torchvision DenseNet-121 and ResNet-18, and user models written with functional
calls (F.relu, x + y, torch.cat, torch.flatten, x.view, a module used twice, in-place ReLU), checked
against a hand-written layer-by-layer float64 LRP-ε and for conservation under LRP-0."""

from __future__ import annotations

import _lrp_reference as ref
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import relprop

DTYPE = torch.float64


def _randomise_batchnorm(model: nn.Module, bias_free: bool) -> None:
    """Random affine parameters and running statistics, so BatchNorm folding is not the identity.

    ``bias_free``: BatchNorm in eval mode is y = γ (x − μ) / √(σ² + ε) + β. Folded into the preceding
    convolution it contributes the bias β − γ μ / √(σ² + ε), which (like any bias) absorbs relevance
    under LRP-0 and breaks conservation. With β = 0 and μ = 0 that bias vanishes while the scale
    γ / √(σ² + ε) stays random, so folding is still exercised but LRP-0 must conserve exactly.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 2.0)
                if bias_free:
                    m.bias.zero_()
                    m.running_mean.zero_()
                else:
                    m.bias.normal_(0.0, 0.2)
                    m.running_mean.normal_(0.0, 0.2)


def _densenet(bias_free: bool) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None)
    _randomise_batchnorm(model, bias_free)
    with torch.no_grad():
        if bias_free:
            model.classifier.bias.zero_()
        else:
            model.classifier.bias.normal_(0.0, 0.2)
    return model.to(DTYPE).eval()


@pytest.fixture(scope="module")
def densenet():
    return _densenet(bias_free=False)


@pytest.fixture(scope="module")
def densenet_input():
    torch.manual_seed(1)
    return torch.rand(1, 3, 64, 64, dtype=DTYPE)  # in [0, 1], the default box of epsilon_gamma_box


@pytest.mark.parametrize("preset", list(relprop.PRESETS))
def test_densenet121_every_preset(densenet, densenet_input, preset):
    explainer = relprop.Explainer(densenet, preset)
    e = explainer.explain(densenet_input, 7)
    assert e.relevance.shape == densenet_input.shape
    assert bool(torch.isfinite(e.relevance).all())
    assert bool((e.relevance != 0).any())
    with torch.no_grad():
        torch.testing.assert_close(e.logits, densenet(densenet_input), rtol=1e-12, atol=1e-12)


def test_densenet121_graph_folds_and_keeps_batchnorm(densenet):
    """conv0 → norm0 and each dense layer's conv1 → norm2 are folded; the pre-activation BatchNorms
    (norm1 → ReLU → conv1 of 58 dense layers, 3 transitions, norm5) have no linear layer before them."""
    graph = relprop.RelevanceGraph(densenet)
    folded = [s.name for s in graph.steps if s.batchnorm is not None]
    standalone = [s for s in graph.steps if s.kind == "linear" and isinstance(s.module, nn.BatchNorm2d)]
    assert folded[0] == "features.conv0"
    assert len(folded) == 59 and all(name.endswith(".conv1") for name in folded[1:])
    assert len(standalone) == 62
    assert sum(1 for s in graph.steps if s.name == "cat") >= 58


def test_densenet121_lrp0_conserves_when_bias_free(densenet_input):
    model = _densenet(bias_free=True)
    e = relprop.Explainer(model, "zero").explain(densenet_input, 7)
    with torch.no_grad():
        logit = model(densenet_input)[0, 7]
    assert abs(logit.item()) > 1e-3
    assert e.relevance.sum().item() == pytest.approx(logit.item(), rel=1e-4)
    # not vacuous: the same net with its biases does not conserve under LRP-0
    biased = _densenet(bias_free=False)
    e = relprop.Explainer(biased, "zero").explain(densenet_input, 7)
    assert e.conservation_error.item() > 1e-3


def test_resnet18_lrp0_conserves_when_bias_free():
    torch.manual_seed(2)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    _randomise_batchnorm(model, bias_free=True)
    with torch.no_grad():
        model.fc.bias.zero_()
    model = model.to(DTYPE).eval()
    x = torch.randn(2, 3, 32, 32, dtype=DTYPE)
    e = relprop.Explainer(model, "zero").explain(x, torch.tensor([1, 8]))
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(e.relevance.flatten(1).sum(1), logits[[0, 1], [1, 8]], rtol=1e-6, atol=0)


# -- functional user models ------------------------------------------------------------------------


class FunctionalNet(nn.Module):
    """F.relu, an in-place nn.ReLU module used twice, a residual x + y, conv2 used twice, torch.cat,
    and flattening by torch.flatten or x.view(x.size(0), -1)."""

    def __init__(self, flatten: str, bias: bool = True) -> None:
        super().__init__()
        self.flatten = flatten
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.conv3 = nn.Conv2d(8, 4, 3, stride=2, padding=1, bias=bias)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 3 * 3, 5, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        y = self.act(self.conv2(h))
        h2 = h + y
        y2 = F.relu(self.conv2(h2))
        c = torch.cat([h2, y2], dim=1)
        c = self.act(self.conv3(c))
        if self.flatten == "torch.flatten":
            f = torch.flatten(c, 1)
        else:
            f = c.view(c.size(0), -1)
        return self.fc(f)


class ModuleNet(nn.Module):
    """The same computation with a module per call (conv2's second use is a copy with the same weights)."""

    def __init__(self, src: FunctionalNet) -> None:
        super().__init__()
        self.conv1, self.conv3, self.fc = src.conv1, src.conv3, src.fc
        self.conv2a = src.conv2
        self.conv2b = nn.Conv2d(4, 4, 3, padding=1, bias=src.conv2.bias is not None).to(src.conv2.weight.dtype)
        self.conv2b.load_state_dict(src.conv2.state_dict())
        self.relu1, self.relu2, self.relu3, self.relu4 = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.flat = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.conv1(x))
        y = self.relu2(self.conv2a(h))
        h2 = h + y
        y2 = self.relu3(self.conv2b(h2))
        c = torch.cat([h2, y2], dim=1)
        return self.fc(self.flat(self.relu4(self.conv3(c))))


def _hand_lrp_epsilon(net: FunctionalNet, x: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """LRP-ε written out layer by layer for FunctionalNet: ε on every conv/linear layer (dense-matrix
    reference), relevance crosses ReLUs unchanged, the residual sum is split in proportion to its terms
    (stabiliser 1e-6, relprop's Norm), concatenation splits by channels, uses of conv2 add up."""
    with torch.no_grad():
        z1 = net.conv1(x)
        a1 = torch.relu(z1)
        y = torch.relu(net.conv2(a1))
        h2 = a1 + y
        y2 = torch.relu(net.conv2(h2))
        c = torch.cat([h2, y2], dim=1)
        a4 = torch.relu(net.conv3(c))
        f = a4.reshape(a4.shape[0], -1)
        out = net.fc(f)
    r_out = F.one_hot(target, out.shape[1]).to(DTYPE) * out
    r_f = ref.layer_epsilon(net.fc, f, r_out, eps)
    r_c = ref.layer_epsilon(net.conv3, c, r_f.reshape(a4.shape), eps)
    r_h2, r_y2 = r_c[:, :4], r_c[:, 4:]
    r_h2 = r_h2 + ref.layer_epsilon(net.conv2, h2, r_y2, eps)  # second use of conv2
    r_a1, r_y = ref.norm_split(a1, y, r_h2)
    r_a1 = r_a1 + ref.layer_epsilon(net.conv2, a1, r_y, eps)  # first use of conv2
    return ref.layer_epsilon(net.conv1, x, r_a1, eps)


def _functional(flatten: str, bias: bool = True, seed: int = 0) -> tuple[FunctionalNet, torch.Tensor]:
    torch.manual_seed(seed)
    net = FunctionalNet(flatten, bias)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if bias:
                    m.bias.normal_(0.0, 0.2)
    x = torch.randn(3, 2, 6, 6, dtype=DTYPE)
    return net.to(DTYPE).eval(), x


FLATTENS = ["torch.flatten", "view"]


@pytest.mark.parametrize("eps", [0.25, 1e-6])
@pytest.mark.parametrize("flatten", FLATTENS)
def test_functional_model_matches_hand_written_lrp_epsilon(flatten, eps):
    net, x = _functional(flatten)
    target = torch.tensor([0, 3, 4])
    e = relprop.Explainer(net, relprop.Epsilon(eps)).explain(x, target)
    with torch.no_grad():
        torch.testing.assert_close(e.logits, net(x.clone()), rtol=1e-12, atol=1e-12)
    expected = _hand_lrp_epsilon(net, x, target, eps)
    scale = expected.abs().max().item()
    assert scale > 0
    assert (e.relevance - expected).abs().max().item() <= 1e-10 * scale


@pytest.mark.parametrize("flatten", FLATTENS)
def test_functional_model_lrp0_conserves(flatten):
    net, x = _functional(flatten, bias=False, seed=1)
    target = torch.tensor([1, 2, 0])
    e = relprop.Explainer(net, "zero").explain(x, target)
    with torch.no_grad():
        logits = net(x)
    explained = logits.gather(1, target[:, None]).squeeze(1)
    assert bool((explained.abs() > 1e-3).all())
    torch.testing.assert_close(e.relevance.flatten(1).sum(1), explained, rtol=1e-10, atol=0)


@pytest.mark.parametrize("preset", list(relprop.PRESETS))
@pytest.mark.parametrize("flatten", FLATTENS)
def test_functional_calls_equal_modules(flatten, preset):
    net, x = _functional(flatten, seed=2)
    modules = ModuleNet(net).eval()
    with torch.no_grad():
        torch.testing.assert_close(modules(x), net(x), rtol=0, atol=0)
    target = torch.tensor([4, 0, 2])
    r_fn = relprop.explain(net, x, target, preset)
    r_mod = relprop.explain(modules, x, target, preset)
    assert bool((r_fn != 0).any())
    torch.testing.assert_close(r_fn, r_mod, rtol=1e-12, atol=1e-14)
