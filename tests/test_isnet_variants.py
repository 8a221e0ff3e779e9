"""ISNet maps through the engine: LRP-ε in train mode with detached batch statistics, the variants' seeds,
and the RRR baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import relprop
from relprop.composites import Composite, isnet, isnet_zplus
from relprop.errors import InputError
from relprop.isnet import ISNetMaps, heatmap_loss, log_odds_gradient, maps_per_image, rrr_penalty, stochastic_classes
from relprop.rules import Epsilon, ZBox, Zero

EPS = 0.01


class Stack(nn.Module):
    """Conv+BN+ReLU, Conv+BN+ReLU, Linear+BN+ReLU, Linear."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.l3, self.b3 = nn.Linear(6 * 8 * 8, 16), nn.BatchNorm1d(16)
        self.l4 = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.b3(self.l3(x.flatten(1))))
        return self.l4(x)


def _stack(seed: int = 0, dtype: torch.dtype = torch.float64) -> Stack:
    torch.manual_seed(seed)
    m = Stack().to(dtype)
    for bn in (m.b1, m.b2, m.b3):
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return m


def _reference_lrp_eps(m: Stack, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Explicit layer-by-layer LRP-ε (LRP-0 on the last layer) in float64, each BatchNorm an affine map with
    the batch's statistics (train mode) or its running statistics (eval mode) as constants."""

    def bn_affine(bn: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bn.training:
            dims = [0] + list(range(2, z.dim()))
            mean, var = z.mean(dims), z.var(dims, unbiased=False)
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = bn.weight / torch.sqrt(var + bn.eps)
        return scale, bn.bias - mean * scale

    def stab(z: torch.Tensor) -> torch.Tensor:
        e = z.new_tensor(EPS)  # a float64 ε (torch.where on Python floats would round it to float32)
        return z + torch.where(z >= 0, e, -e)

    x = x.double().detach()
    with torch.no_grad():
        layers = []  # (function a -> z, input a)
        a = x
        for conv, bn in ((m.c1, m.b1), (m.c2, m.b2)):
            s, t = bn_affine(bn, conv(a))
            w, b = conv.weight * s[:, None, None, None], conv.bias * s + t
            layers.append((lambda u, w=w, b=b, c=conv: F.conv2d(u, w, b, padding=c.padding), a))
            a = F.relu(layers[-1][0](a))
        a = a.flatten(1)
        s, t = bn_affine(m.b3, m.l3(a))
        w3, b3 = m.l3.weight * s[:, None], m.l3.bias * s + t
        layers.append((lambda u: F.linear(u, w3, b3), a))
        a = F.relu(F.linear(a, w3, b3))
        z4 = m.l4(a)
    r = F.one_hot(target, z4.shape[1]).double() * z4
    # last layer LRP-0
    s4 = torch.where(z4 == 0, 0.0, r / torch.where(z4 == 0, 1.0, z4))
    r = a * (s4 @ m.l4.weight.detach())
    for fn, a_in in reversed(layers):
        a_in = a_in.detach().requires_grad_(True)
        with torch.enable_grad():
            z = fn(a_in)
            r = r.view(z.shape)  # the Linear's input relevance is flat; the conv below has maps
            (c,) = torch.autograd.grad(z, a_in, (r / stab(z)).detach())
        r = a_in.detach() * c
    return r.view(x.shape)


def _eps_composite() -> Composite:
    return Composite([(nn.Linear, Epsilon(EPS)), (nn.Conv2d, Epsilon(EPS))], last=Zero(), name="eps")


@pytest.mark.parametrize("train", [True, False])
def test_engine_lrp_eps_equals_explicit_layer_by_layer(train: bool) -> None:
    m = _stack().train(train)
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    ours = relprop.Explainer(m, _eps_composite())(x, target)
    m2 = _stack().train(train)  # same weights, fresh running statistics
    ref = _reference_lrp_eps(m2, x, target)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_train_mode_heatmap_of_one_sample_ignores_the_other_samples_relevance() -> None:
    """Batch statistics are detached in the relevance pass: what the other samples explain (their seeds)
    does not reach sample 0's map, and reordering the other samples (same statistics) changes nothing.
    Without detaching, the gradient through the batch mean/variance would couple the samples."""
    m = _stack().train()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    ex = relprop.Explainer(m, isnet(EPS))
    a = ex(x, torch.tensor([2, 0, 0, 0, 0, 0]))
    b = ex(x, torch.tensor([2, 4, 3, 1, 2, 4]))
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    perm = torch.tensor([0, 3, 5, 1, 4, 2])
    c = ex(x[perm], torch.tensor([2, 0, 0, 0, 0, 0]))
    torch.testing.assert_close(a[0], c[0], rtol=1e-12, atol=1e-14)

    # the same LRP computed by plain autograd through the BatchNorm modules (statistics not detached)
    # does couple them: the property above is not vacuous
    def coupled(targets: torch.Tensor) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        z = m(xg)
        (g,) = torch.autograd.grad((F.one_hot(targets, 5).double() * z).sum(), xg)
        return g * xg

    ga, gb = coupled(torch.tensor([2, 0, 0, 0, 0, 0])), coupled(torch.tensor([2, 4, 3, 1, 2, 4]))
    assert (ga[0] - gb[0]).abs().max() > 1e-6


def test_eval_mode_heatmap_of_one_sample_ignores_the_other_samples() -> None:
    m = _stack().eval()
    ex = relprop.Explainer(m, isnet(EPS))
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    y = x.clone()
    y[1:] = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(ex(x, 1)[0], ex(y, 1)[0], rtol=0, atol=0)


def test_isnet_preset_rules() -> None:
    ex = relprop.Explainer(_stack(), isnet(EPS, 0.0, 1.0))
    by_name = {s.name: r for s, r in ex.rules.items() if s.kind == "linear"}
    assert isinstance(by_name["c1"], ZBox)
    assert isinstance(by_name["l4"], Zero)
    assert isinstance(by_name["c2"], Epsilon) and by_name["c2"].epsilon == EPS
    assert isinstance(by_name["l3"], Epsilon)


def _tiny(classes: int = 4, bn: bool = True) -> nn.Module:
    torch.manual_seed(1)
    layers: list[nn.Module] = [nn.Conv2d(1, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 6 * 6, 12), nn.ReLU(), nn.Linear(12, classes)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("variant", ["original", "dual", "selective", "stochastic", "grad_input"])
def test_variant_shapes_and_gradients_reach_every_parameter(variant: str) -> None:
    m = _tiny().train()
    x = torch.rand(5, 1, 12, 12)
    mask = torch.zeros(5, 1, 12, 12)
    mask[..., 3:9, 3:9] = 1
    logits, maps = ISNetMaps(m, variant)(x, torch.arange(5) % 4)
    assert maps.shape == (5, maps_per_image(variant, 4), 1, 12, 12)
    assert logits.shape == (5, 4) and logits.requires_grad and maps.requires_grad
    heatmap_loss(maps, mask).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert sum(float(p.grad.abs().sum()) for p in m.parameters()) > 0


def test_logits_come_from_the_same_forward_as_the_model() -> None:
    m = _tiny().eval()
    x = torch.rand(3, 1, 12, 12)
    logits, _ = ISNetMaps(m, "selective")(x)
    torch.testing.assert_close(logits, m(x), rtol=1e-5, atol=1e-6)


def test_original_maps_are_per_class_explanations() -> None:
    m = _tiny(bn=False).eval().double()
    x = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    _, maps = ISNetMaps(m, "original")(x, create_graph=False)
    ex = relprop.Explainer(m, isnet())
    for k in range(4):
        torch.testing.assert_close(maps[:, k], ex(x, k), rtol=1e-10, atol=1e-12)


def test_dual_maps_are_all_logits_with_epsilon_and_zplus() -> None:
    m = _tiny(bn=False).eval().double()
    x = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    logits, maps = ISNetMaps(m, "dual")(x, create_graph=False)
    e = relprop.Explainer(m, isnet())(x, logits)
    zp = relprop.Explainer(m, isnet_zplus())(x, logits)
    torch.testing.assert_close(maps[:, 0], e, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(maps[:, 1], zp, rtol=1e-10, atol=1e-12)
    assert (maps[:, 0] - maps[:, 1]).abs().max() > 1e-6


@pytest.mark.parametrize("which", ["lowest", "label", "predicted"])
def test_selective_explains_the_log_odds_of_the_chosen_class(which: str) -> None:
    m = _tiny(bn=False).eval().double()
    x = torch.rand(4, 1, 12, 12, dtype=torch.float64)
    labels = torch.tensor([3, 1, 0, 2])
    logits, maps = ISNetMaps(m, "selective", selective_class=which)(x, labels, create_graph=False)
    idx = {"lowest": logits.argmin(1), "label": labels, "predicted": logits.argmax(1)}[which]
    # LRP-0 at the classifier layer seeded with z ⊙ ∂η/∂z: the output relevance of the explainer
    seed = logits * log_odds_gradient(logits, idx)
    torch.testing.assert_close(maps[:, 0], relprop.Explainer(m, isnet())(x, seed), rtol=1e-10, atol=1e-12)


def test_log_odds_gradient_matches_autograd() -> None:
    z = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([0, 3, 6, 2, 2, 5])
    p = torch.softmax(z, 1).gather(1, idx[:, None]).squeeze(1)
    eta = torch.log(p + 1e-7) - torch.log(1 - p + 1e-7)
    (g,) = torch.autograd.grad(eta.sum(), z)
    torch.testing.assert_close(log_odds_gradient(z.detach(), idx), g, rtol=1e-9, atol=1e-12)


def test_stochastic_classes_top_half_the_time_and_uniform_otherwise() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 5).expand(20000, 5).contiguous()
    top = int(logits[0].argmax())
    idx = stochastic_classes(logits, gen)
    counts = torch.bincount(idx, minlength=5).double() / idx.numel()
    assert abs(counts[top] - 0.5) < 0.015
    others = torch.cat([counts[:top], counts[top + 1 :]])
    assert (others - 0.125).abs().max() < 0.015
    again = stochastic_classes(logits, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


def test_grad_input_is_gradient_times_input_of_the_top_softmax() -> None:
    m = _tiny(bn=False).eval().double()
    x = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    logits, maps = ISNetMaps(m, "grad_input")(x, create_graph=False)
    assert not maps.requires_grad and not logits.requires_grad
    xg = x.clone().requires_grad_(True)
    p = torch.softmax(m(xg), 1)
    (g,) = torch.autograd.grad(p.max(1).values.sum(), xg)
    torch.testing.assert_close(maps[:, 0], g * x, rtol=1e-10, atol=1e-13)


def test_rrr_penalty_matches_its_formula_and_vanishes_without_background() -> None:
    m = _tiny(bn=False).eval().double()
    x = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    mask = torch.zeros(3, 1, 12, 12, dtype=torch.float64)
    mask[..., 2:10, 2:10] = 1
    _, pen = rrr_penalty(m, x, mask)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.log_softmax(m(xg), 1).sum(), xg)
    expected = (((1 - mask) * g) ** 2).sum((1, 2, 3)).mean()
    torch.testing.assert_close(pen, expected, rtol=1e-10, atol=1e-14)
    assert pen > 0
    _, none = rrr_penalty(m, x, torch.ones_like(mask))
    assert float(none.detach()) == 0.0
    pen.backward()
    assert all(p.grad is not None for p in m.parameters())
    with pytest.raises(InputError, match="mask"):
        rrr_penalty(m, x, mask[..., :6, :6])


def test_eval_mode_maps_leave_the_model_untouched() -> None:
    m = _tiny().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}

    def hook_counts() -> list[tuple[int, int, int]]:
        return [(len(u._forward_hooks), len(u._forward_pre_hooks), len(u._backward_hooks)) for u in m.modules()]

    hooks = hook_counts()
    for variant in ("original", "dual", "selective", "stochastic", "grad_input"):
        ISNetMaps(m, variant)(torch.rand(2, 1, 12, 12))
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert hooks == [
        (len(mod._forward_hooks), len(mod._forward_pre_hooks), len(mod._backward_hooks)) for mod in m.modules()
    ]
    assert not m.training


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown ISNet variant 'fast'"):
        ISNetMaps(_tiny(), "fast")
    with pytest.raises(ValueError, match="selective_class"):
        ISNetMaps(_tiny(), "selective", selective_class="top")
    with pytest.raises(ValueError, match="high > low"):
        ISNetMaps(_tiny(), "selective", low=1.0, high=0.0)
    with pytest.raises(InputError, match="needs the labels"):
        ISNetMaps(_tiny().eval(), "selective", selective_class="label")(torch.rand(2, 1, 12, 12))
    with pytest.raises(InputError, match="3 labels for a batch of 2"):
        ISNetMaps(_tiny().eval(), "selective", selective_class="label")(torch.rand(2, 1, 12, 12), torch.arange(3))


@pytest.mark.parametrize("match", ["relprop", "authors"])
@pytest.mark.parametrize("variant", ["original", "selective", "stochastic"])
def test_hidden_layer_maps_come_from_the_same_seeds_as_the_pixel_maps(variant: str, match: str) -> None:
    m = _tiny().train().double()
    x = torch.rand(5, 1, 12, 12, dtype=torch.float64)
    names = ["2", "3", "6"]  # ReLU after the folded Conv+BN, the max-pooling, the hidden Linear's ReLU
    isnet_maps = ISNetMaps(m, variant, match=match, hidden_layers=names)
    logits, maps, hidden = isnet_maps.maps_and_hidden(x, create_graph=False, generator=torch.Generator().manual_seed(1))
    k = maps_per_image(variant, 4)
    assert set(hidden) == set(names)
    assert hidden["2"].shape == (5, k, 4, 12, 12) and hidden["3"].shape == (5, k, 4, 6, 6)
    assert hidden["6"].shape == (5, k, 12)
    # the same output relevance as the pixel maps: one explainer pass per map with that seed gives both
    if variant == "original":
        seeds = [logits * F.one_hot(torch.full((5,), c), 4).double() for c in range(4)]
    elif variant == "stochastic":
        idx = stochastic_classes(logits, torch.Generator().manual_seed(1), isnet_maps.top_probability)
        seeds = [logits * F.one_hot(idx, 4).double()]
    else:
        seeds = [logits * log_odds_gradient(logits, logits.argmin(1), isnet_maps.selective_delta)]
    preset = "isnet_authors" if match == "authors" else isnet()
    for j, seed in enumerate(seeds):
        e = relprop.Explainer(m, preset).explain(x, seed, layers=names)
        torch.testing.assert_close(maps[:, j], e.relevance, rtol=1e-9, atol=1e-12)
        for name in names:
            torch.testing.assert_close(hidden[name][:, j], e.layers[name], rtol=1e-9, atol=1e-12)
            assert float(hidden[name][:, j].abs().max()) > 0
    # the plain call returns the pixel maps only, and hidden maps are differentiable in training
    _, again = isnet_maps(x, create_graph=False, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, maps, rtol=0, atol=0)
    _, _, diff = isnet_maps.maps_and_hidden(x, generator=torch.Generator().manual_seed(1))
    assert all(t.requires_grad for t in diff.values())


def test_hidden_layer_errors() -> None:
    with pytest.raises(ValueError, match="list of module names"):
        ISNetMaps(_tiny(), "selective", hidden_layers="3")
    with pytest.raises(ValueError, match="grad_input.*hidden"):
        ISNetMaps(_tiny(), "grad_input", hidden_layers=["3"]).maps_and_hidden(torch.rand(2, 1, 12, 12))
    with pytest.raises(relprop.errors.UsageError, match="no submodule 'nope'"):
        ISNetMaps(_tiny(), "selective", hidden_layers=["nope"]).maps_and_hidden(torch.rand(2, 1, 12, 12))
    _, _, none = ISNetMaps(_tiny().eval(), "selective").maps_and_hidden(torch.rand(2, 1, 12, 12))
    assert none == {}
