"""Conservation: Σ_i R_i(input) equals the explained logit, for the rules that conserve relevance.

LRP-0, z⁺, αβ with α − β = 1, flat and w² conserve relevance layer by layer when no bias absorbs any
(all nets here are bias-free), and routing steps (max pooling, flatten, concatenation) and additions
split proportionally (LRP-0 on add/avg-pool) lose nothing. ``Zero(ignore_bias=True)`` leaves the bias
out of the denominator, so it conserves even on nets with biases and folded BatchNorm. float64 throughout.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import relprop
from relprop.composites import WEIGHTED_TYPES

DTYPE = torch.float64
RTOL = 1e-5


def _cnn(avgpool: bool, bias: bool = False, batchnorm: bool = False) -> nn.Module:
    layers = [nn.Conv2d(3, 8, 3, padding=1, bias=bias)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1, bias=bias), nn.ReLU()]
    # flat and w² ignore activations, so they can put relevance on an all-zero pooling window, which a
    # proportional pooling rule then cannot pass on: their CNN uses a strided conv instead of avg-pooling
    layers.append(nn.AvgPool2d(2) if avgpool else nn.Conv2d(8, 8, 2, stride=2, bias=bias))
    layers += [nn.Flatten(), nn.Linear(8 * 2 * 2, 16, bias=bias), nn.ReLU(), nn.Linear(16, 5, bias=bias)]
    return nn.Sequential(*layers)


def _mlp(bias: bool = False) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(3 * 8 * 8, 32, bias=bias),
        nn.ReLU(),
        nn.Linear(32, 16, bias=bias),
        nn.ReLU(),
        nn.Linear(16, 5, bias=bias),
    )


class Residual(nn.Module):
    """Two residual blocks, out = relu(conv(relu(conv(h))) + h), then global average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.c4 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(self.c2(torch.relu(self.c1(h))) + h)
        h = torch.relu(h + self.c4(torch.relu(self.c3(h))))
        return self.fc(torch.flatten(self.pool(h), 1))


class Concat(nn.Module):
    """Two branches concatenated along channels (an inception-like block), then a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.a = nn.Conv2d(6, 4, 1, bias=False)
        self.b = nn.Conv2d(6, 5, 3, padding=1, bias=False)
        self.mix = nn.Conv2d(4 + 5 + 6, 8, 1, bias=False)
        self.fc = nn.Linear(8 * 4 * 4, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.cat([torch.relu(self.a(h)), torch.relu(self.b(h)), h], dim=1)
        h = F.max_pool2d(torch.relu(self.mix(h)), 2)
        return self.fc(h.flatten(1))


MODELS = {
    "cnn": lambda: _cnn(avgpool=True),
    "cnn_no_avgpool": lambda: _cnn(avgpool=False),
    "mlp": _mlp,
    "residual": Residual,
    "concat": Concat,
}


def _exact_splits(rule: relprop.Rule) -> relprop.Composite:
    """``rule`` on every weighted layer, additions and average pooling split by LRP-0 (no stabiliser)."""
    return relprop.Composite([(WEIGHTED_TYPES, rule)], add=relprop.Zero(), pool=relprop.Zero(), name=rule.name)


def _kaiming(model: nn.Module) -> None:
    """He initialisation keeps activations O(1) through the net, so the rules' stabiliser (1e-6) is
    negligible against the denominators (PyTorch's default init shrinks bias-free activations ~3x per layer)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


def _setup(model_name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    _kaiming(model)
    model = model.to(DTYPE).eval()
    x = torch.randn(3, 3, 8, 8, dtype=DTYPE)
    return model, x


def _check_conserves(model, x, composite, target=None, rtol=RTOL):
    with torch.no_grad():
        logits = model(x)
    if target is None:
        target = torch.tensor([0, 2, 4])
    e = relprop.Explainer(model, composite).explain(x, target)
    explained = logits.gather(1, target[:, None]).squeeze(1)
    total = e.relevance.flatten(1).sum(1)
    assert torch.allclose(e.logits, logits, rtol=1e-12, atol=0)
    assert bool((explained.abs() > 1e-3).all()), "degenerate case: an explained logit is (nearly) zero"
    rel_err = (total - explained).abs() / explained.abs()
    assert bool((rel_err < rtol).all()), f"Σ R = {total.tolist()}, logits = {explained.tolist()}"
    assert bool((e.conservation_error < rtol).all())
    return e


# The stabiliser ε is the only thing that keeps these rules from conserving exactly (it absorbs about
# ε / denominator of each neuron's relevance, ~1e-5 in total on these nets with the default 1e-6), so
# the rules get ε = 1e-12 here and conservation is checked to 1e-8.
CONSERVING_RULES = {
    "zero": relprop.Zero,
    "zplus": lambda: relprop.ZPlus(stabilizer=1e-12),
    "alpha2_beta1": lambda: relprop.AlphaBeta(2, 1, stabilizer=1e-12),
    "alpha1_beta0": lambda: relprop.AlphaBeta(1, 0, stabilizer=1e-12),
}
TIGHT = 1e-8


# αβ(2, 1) on the concat net is left out: it has neurons without negative contributions (next test)
CASES = [(r, m) for r in CONSERVING_RULES for m in MODELS if (r, m) != ("alpha2_beta1", "concat")]


@pytest.mark.parametrize("rule_name, model_name", CASES)
def test_activation_based_rules_conserve(rule_name, model_name):
    model, x = _setup(model_name)
    _check_conserves(model, x, _exact_splits(CONSERVING_RULES[rule_name]()), rtol=TIGHT)


def test_alpha_beta_conserves_only_with_contributions_of_both_signs():
    """αβ sends α·R_j over positive and −β·R_j over negative contributions; a neuron with no negative
    contribution passes on only α·R_j (its negative denominator is 0, stabilised to ε). This is the
    rule's definition (zennit does the same), and why αβ(2, 1) does not conserve on the concat net."""
    layer = nn.Linear(3, 2, bias=False).to(DTYPE)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 0.5], [1.0, -2.0, 0.5]]))
    model = nn.Sequential(layer, nn.Flatten())
    x = torch.tensor([[1.0, 0.5, 2.0]], dtype=DTYPE)
    r = torch.tensor([[1.0, 0.0]], dtype=DTYPE)
    assert relprop.explain(model, x, r, relprop.AlphaBeta(2, 1)).sum().item() == pytest.approx(2.0, rel=1e-5)
    r = torch.tensor([[0.0, 1.0]], dtype=DTYPE)  # output 1 has contributions 1, -1, 1
    assert relprop.explain(model, x, r, relprop.AlphaBeta(2, 1)).sum().item() == pytest.approx(1.0, rel=1e-5)
    # and the concat net really has such neurons: αβ(2, 1) is off there by far more than the stabiliser
    model, x = _setup("concat")
    e = relprop.Explainer(model, _exact_splits(CONSERVING_RULES["alpha2_beta1"]())).explain(x, torch.tensor([0, 2, 4]))
    assert bool((e.conservation_error > 1e-3).any())


@pytest.mark.parametrize("model_name", ["cnn_no_avgpool", "mlp"])
@pytest.mark.parametrize("rule", [relprop.Flat(), relprop.WSquare()], ids=["flat", "wsquare"])
def test_input_independent_rules_conserve(rule, model_name):
    model, x = _setup(model_name)
    _check_conserves(model, x, rule)


@pytest.mark.parametrize("rule", [relprop.Flat(), relprop.WSquare()], ids=["flat", "wsquare"])
def test_input_independent_rules_give_a_fixed_map(rule):
    """On an MLP (no max pooling), flat and w² relevance is the logit times a map that ignores the input."""
    model, x = _setup("mlp")
    target = torch.tensor([0, 2, 4])
    maps = []
    for inp in (x, torch.randn_like(x)):
        r = relprop.Explainer(model, rule).explain(inp, target).relevance
        maps.append(r / r.flatten(1).sum(1).view(-1, 1, 1, 1))
    torch.testing.assert_close(maps[0], maps[1], rtol=1e-9, atol=1e-12)
    if isinstance(rule, relprop.Flat):  # every input is connected to every first-layer neuron
        torch.testing.assert_close(maps[0], torch.full_like(maps[0], 1.0 / maps[0][0].numel()), rtol=1e-9, atol=0)
    else:  # w² weighs inputs by the squared weights: the map depends on the target
        assert not torch.allclose(maps[0][0], maps[0][1])


@pytest.mark.parametrize("preset", ["zero"])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_zero_preset_conserves(preset, model_name):
    model, x = _setup(model_name, seed=1)
    _check_conserves(model, x, preset)


@pytest.mark.parametrize("model_name", ["cnn_bias_bn", "mlp_bias"])
def test_zero_ignore_bias_conserves_with_biases(model_name):
    torch.manual_seed(4)
    if model_name == "cnn_bias_bn":
        model = _cnn(avgpool=True, bias=True, batchnorm=True)
        with torch.no_grad():  # non-trivial folded BatchNorm
            bn = model[1]
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.5)
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    else:
        model = _mlp(bias=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.normal_(0.0, 0.3)
    model = model.to(DTYPE).eval()
    x = torch.randn(3, 3, 8, 8, dtype=DTYPE)
    _check_conserves(model, x, _exact_splits(relprop.Zero(ignore_bias=True)))
    # the biases are large enough that plain LRP-0 does not conserve on the same net
    e = relprop.Explainer(model, _exact_splits(relprop.Zero())).explain(x, torch.tensor([0, 2, 4]))
    assert bool((e.conservation_error > 1e-3).any())


def test_conservation_per_sample_in_a_batch():
    """Conservation holds per sample, for different targets in one batch, with the predicted class."""
    model, x = _setup("residual", seed=5)
    with torch.no_grad():
        logits = model(x)
    e = relprop.Explainer(model, "zero").explain(x, "predicted")
    assert torch.equal(e.targets, logits.argmax(1))
    torch.testing.assert_close(e.relevance.flatten(1).sum(1), logits.max(1).values, rtol=RTOL, atol=0)
