"""``ISNetMaps(..., match="authors")`` against an independent LRP-Flex written here in plain autograd, following the
Faster ISNet authors' code (PedroRASB/FasterISNet, ISNetFlexTorch.py): every ReLU's backward multiplies the gradient
by a / (a + ε); the explained quantity (summed over the batch) is differentiated with respect to the first ReLU's
output y0, giving R = y0 ⊙ G there; their z^B rule maps it to the input, with the positive bias in the denominator
and a first-layer BatchNorm folded with the unbiased batch variance in training mode; BatchNorm elsewhere runs in
its own mode through autograd (batch statistics differentiated in training mode)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import relprop
from relprop.composites import isnet_authors
from relprop.isnet import ISNetMaps, stochastic_classes
from relprop.isnet.loss import ConfigError
from relprop.rules import Flex, ZBox

EPS = 0.01
D = torch.float64
Relu = Callable[[torch.Tensor], torch.Tensor]


# -- the reference ---------------------------------------------------------------------------------------------------
_LRP = {"on": False}  # the authors' globals.LRP: the ReLU hooks act only inside the LRP-Flex backward


def _hooked_relu(z: torch.Tensor) -> torch.Tensor:
    """ReLU whose backward multiplies the gradient by a / (a + ε) (a = its output, kept differentiable) while the
    LRP-Flex gradient is taken, the authors' DenoiseReLU hook; a plain ReLU in any later backward (the loss's)."""
    a = torch.relu(z)
    if a.requires_grad:
        a.register_hook(lambda g: g * a / (a + EPS) if _LRP["on"] else g)
    return a


def _zb_first_layer(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Their ZbRuleConvInputRule / ZbRuleConvBNInputRule with l = 0, h = 1 (FuseBN, stabilizer, detach=True): the
    conv bias, the BatchNorm's shift and its statistics detached, the weights and the BatchNorm's scale not."""
    low, high = 0.0, 1.0
    w = conv.weight
    b = conv.bias.detach() if conv.bias is not None else w.new_zeros(w.shape[0])  # (FuseBN: zeros)
    if bn is not None:
        pre = conv(x).detach()
        if bn.training:
            mean, var = pre.mean((0, 2, 3)), torch.var(pre, dim=(0, 2, 3))  # torch.var: unbiased
        else:
            mean, var = bn.running_mean, bn.running_var
        std = torch.sqrt(var + bn.eps)
        w, b = w * (bn.weight / std)[:, None, None, None], (b - mean) / std * bn.weight + bn.bias.detach()
    wp, wn, bp, bn_ = w.clamp(min=0), w.clamp(max=0), b.clamp(min=0), b.clamp(max=0)

    def conv_with(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(u, weight, bias, conv.stride, conv.padding)

    ak = conv_with(x, w, b)
    ak_pos = conv_with(torch.ones_like(x) * low, wp, bp * low)
    ak_neg = conv_with(torch.ones_like(x) * high, wn, bn_ * high)
    z = ak - ak_pos - ak_neg
    sign = torch.sign(z).detach()
    sign[sign == 0] = 1
    z = z + sign * EPS
    s = r / z

    def transposed(weight: torch.Tensor) -> torch.Tensor:
        u = torch.zeros_like(x, requires_grad=True)
        (c,) = torch.autograd.grad(conv_with(u, weight, None), u, s, create_graph=True)
        return c

    return x * transposed(w) - low * transposed(wp) - high * transposed(wn)


def lrp_flex(
    model: nn.Module, x: torch.Tensor, quantity: Callable[[torch.Tensor], torch.Tensor], create_graph: bool = False
) -> torch.Tensor:  # fmt: skip
    """LRP-Flex of ``quantity(logits)`` (a scalar, summed over the batch) at the input; on a copy of ``model``, or
    with ``create_graph`` on the model itself, differentiable with respect to its parameters."""
    m = model if create_graph else copy.deepcopy(model)
    with torch.enable_grad():
        logits, y0 = m.run(x, _hooked_relu)
        _LRP["on"] = True
        try:
            (g,) = torch.autograd.grad(quantity(logits), y0, create_graph=create_graph)
        finally:
            _LRP["on"] = False
        r = _zb_first_layer(m.conv0, getattr(m, "bn0", None), x, torch.nan_to_num(g) * y0)
    return r if create_graph else r.detach()


# -- small models; ``run(x, relu)`` returns the logits and the first ReLU's output --------------------------------
class Plain(nn.Module):
    """Conv+ReLU, Conv+ReLU, max-pool, Linear+ReLU, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.conv1 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(6 * 4 * 4, 12), nn.Linear(12, 5)

    def run(self, x: torch.Tensor, relu: Relu) -> tuple[torch.Tensor, torch.Tensor]:
        y0 = torch.relu(self.conv0(x))
        h = F.max_pool2d(relu(self.conv1(y0)), 2)
        return self.fc2(relu(self.fc1(h.flatten(1)))), y0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, torch.relu)[0]


class WithBN(Plain):
    """Conv+BN+ReLU, Conv+BN+ReLU, max-pool, Linear+BN+ReLU, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.bn0, self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(6), nn.BatchNorm1d(12)

    def run(self, x: torch.Tensor, relu: Relu) -> tuple[torch.Tensor, torch.Tensor]:
        y0 = torch.relu(self.bn0(self.conv0(x)))
        h = F.max_pool2d(relu(self.bn1(self.conv1(y0))), 2)
        return self.fc2(relu(self.bn2(self.fc1(h.flatten(1))))), y0


class Dense(nn.Module):
    """A DenseNet in small: Conv+BN+ReLU, two BN-ReLU-Conv layers whose outputs are concatenated, a transition
    (BN-ReLU-Conv, average pooling), a final BN+ReLU, global average pooling, Linear. The BatchNorms after the
    concatenations stand alone (nothing to fold them into)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.n1, self.c1 = nn.BatchNorm2d(4), nn.Conv2d(4, 3, 3, padding=1, bias=False)
        self.n2, self.c2 = nn.BatchNorm2d(7), nn.Conv2d(7, 3, 3, padding=1, bias=False)
        self.nt, self.ct = nn.BatchNorm2d(10), nn.Conv2d(10, 6, 1, bias=False)
        self.n5, self.fc = nn.BatchNorm2d(6), nn.Linear(6, 5)

    def run(self, x: torch.Tensor, relu: Relu) -> tuple[torch.Tensor, torch.Tensor]:
        y0 = torch.relu(self.bn0(self.conv0(x)))
        h = torch.cat([y0, self.c1(relu(self.n1(y0)))], 1)
        h = torch.cat([h, self.c2(relu(self.n2(h)))], 1)
        h = F.avg_pool2d(self.ct(relu(self.nt(h))), 2)
        return self.fc(relu(self.n5(h)).mean((2, 3))), y0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, torch.relu)[0]


def _model(kind: str, train: bool) -> nn.Module:
    torch.manual_seed({"plain": 0, "bn": 1, "dense": 2}[kind])
    m = {"plain": Plain, "bn": WithBN, "dense": Dense}[kind]().to(D)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.bias is not None:
                mod.bias.uniform_(-0.3, 0.3)  # biases of both signs: b⁺ and b⁻ matter at the first layer
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return m.train(train)


CASES = [("plain", False), ("bn", False), ("bn", True), ("dense", False), ("dense", True)]


def _input() -> torch.Tensor:
    return torch.rand(6, 1, 8, 8, dtype=D, generator=torch.Generator().manual_seed(5))


def _check(ours: torch.Tensor, ref: torch.Tensor) -> float:
    scale = float(ref.abs().max())
    assert scale > 0
    err = float((ours - ref).abs().max()) / scale
    assert err <= 1e-4, f"max error / max|R| = {err:.3g}"
    return err


# -- parity ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, train", CASES)
def test_selective_equals_lrp_flex(kind: str, train: bool) -> None:
    m, x = _model(kind, train), _input()
    logits, maps = ISNetMaps(m, "selective", match="authors")(x, create_graph=False)
    idx = logits.argmin(1)  # the authors' training choice: the lowest logit

    def eta(z: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(z, 1).gather(1, idx[:, None]).squeeze(1)
        return (torch.log(p + 0.01) - torch.log(1 - p + 0.01)).sum()

    _check(maps[:, 0], lrp_flex(m, x, eta))


@pytest.mark.parametrize("kind, train", CASES)
def test_stochastic_equals_lrp_flex_for_the_same_classes(kind: str, train: bool) -> None:
    m, x = _model(kind, train), _input()
    logits, maps = ISNetMaps(m, "stochastic", match="authors")(
        x, create_graph=False, generator=torch.Generator().manual_seed(1)
    )
    idx = stochastic_classes(logits, torch.Generator().manual_seed(1), 5 / 11)  # the same draws
    top = logits.argmax(1)
    assert bool((idx == top).any()) and bool((idx != top).any())  # both kinds of draw
    ref = lrp_flex(m, x, lambda z: z.gather(1, idx[:, None]).sum())
    _check(maps[:, 0], ref)


@pytest.mark.parametrize("kind, train", CASES)
def test_original_equals_lrp_flex_per_class(kind: str, train: bool) -> None:
    m, x = _model(kind, train), _input()
    _, maps = ISNetMaps(m, "original", match="authors")(x, create_graph=False)
    assert maps.shape == (6, 5, 1, 8, 8)
    for k in range(5):
        _check(maps[:, k], lrp_flex(m, x, lambda z, k=k: z[:, k].sum()))


def _lrp_flex_by_module_hooks(model: nn.Module, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """LRP-Flex on any net whose ReLUs are nn.ReLU modules, as the authors wire it: a hook on every ReLU call (the
    first one's output y0 is where the gradient is taken), z^B on the stem's conv1/bn1 (torchvision ResNet)."""
    m = copy.deepcopy(model)
    store: dict[str, torch.Tensor] = {}

    def hook(mod: nn.Module, inputs: object, out: torch.Tensor) -> None:
        if mod is m.relu and "y0" not in store:
            store["y0"] = out  # the first ReLU: its own hook never acts (the gradient is taken at its output)
        elif out.requires_grad:
            out.register_hook(lambda g, a=out: g * a / (a + EPS) if _LRP["on"] else g)

    for mod in m.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False  # (their RemoveInplace)
            mod.register_forward_hook(hook)
    with torch.enable_grad():
        logits = m(x)
        _LRP["on"] = True
        try:
            (g,) = torch.autograd.grad(logits.gather(1, idx[:, None]).sum(), store["y0"])
        finally:
            _LRP["on"] = False
        return _zb_first_layer(m.conv1, m.bn1, x, g * store["y0"]).detach()


@pytest.mark.parametrize("train", [False, True])
def test_resnet18_equals_lrp_flex_by_module_hooks(train: bool) -> None:
    """Residual additions followed by a ReLU (ε there, LRP-0 on both branches), a downsampling branch, max pooling
    after the first layer, ReLU modules called twice per block."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).to(D)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5, generator=g)
                mod.bias.normal_(0.0, 0.3, generator=g)
                mod.running_mean.normal_(0.0, 0.5, generator=g)
                mod.running_var.uniform_(0.5, 2.0, generator=g)
    model.train(train)
    x = torch.rand(6, 3, 32, 32, dtype=D, generator=torch.Generator().manual_seed(2))
    logits, maps = ISNetMaps(model, "stochastic", match="authors")(
        x, create_graph=False, generator=torch.Generator().manual_seed(1)
    )
    idx = stochastic_classes(logits, torch.Generator().manual_seed(1), 5 / 11)
    _check(maps[:, 0], _lrp_flex_by_module_hooks(model, x, idx))


@pytest.mark.parametrize("kind, train", CASES)
def test_training_gradients_equal_the_reference(kind: str, train: bool) -> None:
    """With create_graph=True the maps are the same, and the gradient of a loss on them with respect to every
    parameter equals the authors' double backpropagation (their ReLU hooks act only inside LRP-Flex's backward)."""
    m, x = _model(kind, train), _input()
    m_ref = copy.deepcopy(m)
    logits, maps = ISNetMaps(m, "stochastic", match="authors")(x, generator=torch.Generator().manual_seed(1))
    idx = stochastic_classes(logits.detach(), torch.Generator().manual_seed(1), 5 / 11)
    ref = lrp_flex(m_ref, x, lambda z: z.gather(1, idx[:, None]).sum(), create_graph=True)
    _check(maps[:, 0].detach(), ref.detach())
    weights = torch.rand(ref.shape, dtype=D, generator=torch.Generator().manual_seed(4))
    (weights * maps[:, 0] ** 2).sum().backward()
    (weights * ref**2).sum().backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    ref_grads = {n: p.grad for n, p in m_ref.named_parameters()}
    scale = max(float(g.abs().max()) for g in ref_grads.values() if g is not None)
    assert scale > 0
    for name, g_ref in ref_grads.items():
        g = grads[name]
        g_ref = torch.zeros_like(dict(m_ref.named_parameters())[name]) if g_ref is None else g_ref
        g = torch.zeros_like(g_ref) if g is None else g
        assert bool(torch.isfinite(g).all()), name
        err = float((g - g_ref).abs().max()) / scale
        assert err <= 1e-8, f"{name}: max gradient error / max|grad| = {err:.3g}"


def test_the_first_layer_bias_is_detached_as_in_the_authors_code() -> None:
    """Their z^B detaches the first layer's bias: with it attached (bias_gradient=True) its gradient differs."""
    m, x = _model("plain", False), _input()
    idx = torch.tensor([0, 1, 2, 3, 4, 0])
    got = {}
    for detached in (True, False):
        comp = isnet_authors()
        comp.first = ZBox(0.0, 1.0, EPS, bias="bounded", batch_variance="unbiased", bias_gradient=not detached)
        mm = copy.deepcopy(m)
        fp = relprop.Explainer(mm, comp).forward(x, create_graph=True)
        (fp.explain(fp.logits * F.one_hot(idx, 5).to(D)).relevance ** 2).sum().backward()
        got[detached] = mm.conv0.bias.grad
    ref_model = copy.deepcopy(m)
    (lrp_flex(ref_model, x, lambda z: z.gather(1, idx[:, None]).sum(), create_graph=True) ** 2).sum().backward()
    ref = ref_model.conv0.bias.grad
    assert ref is not None and got[True] is not None and got[False] is not None
    torch.testing.assert_close(got[True], ref, rtol=1e-8, atol=1e-12 * float(ref.abs().max()))
    assert float((got[False] - ref).abs().max()) > 1e-3 * float(ref.abs().max())


def test_the_differences_are_not_vacuous() -> None:
    """On the train-mode models relprop's own rules give other maps, and a reference that folds the first layer
    with the biased variance, or that detaches the hidden BatchNorms' statistics, misses the authors' mode."""
    m, x = _model("bn", True), _input()
    seed = torch.Generator().manual_seed(1)
    _, ours = ISNetMaps(m, "stochastic", match="authors")(x, create_graph=False, generator=seed)
    _, theirs_rel = ISNetMaps(m, "stochastic", selective_delta=None)(
        x, create_graph=False, generator=torch.Generator().manual_seed(1)
    )
    assert float((ours - theirs_rel).abs().max()) > 1e-3 * float(ours.abs().max())
    # the first layer's unbiased fold matters at this batch size (n = 6·8·8 values per channel)
    ex = relprop.Explainer(m, isnet_authors())
    biased = isnet_authors()
    biased.first = ZBox(0.0, 1.0, EPS, bias="bounded")
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    a, b = ex(x, target), relprop.Explainer(m, biased)(x, target)
    assert float((a - b).abs().max()) > 1e-4 * float(a.abs().max())
    # hidden BatchNorms through their statistics: sample 0's map depends on the other samples' classes
    t2 = torch.tensor([0, 4, 4, 4, 1, 2])
    assert float((ex(x, target)[0] - ex(x, t2)[0]).abs().max()) > 1e-6


def test_eval_mode_flex_equals_relprop_epsilon_on_a_plain_stack_apart_from_the_first_layer() -> None:
    """On Conv/Linear + ReLU stacks LRP-Flex is LRP-ε: the hidden layers agree with relprop's rules, so the
    relevance arriving at the first layer is the same (checked on the relevance of the first ReLU's output)."""
    m, x = _model("bn", False), _input()
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    flex = isnet_authors()
    ours = relprop.composites.isnet()
    # the same first-layer rule in both: then the maps must agree (hidden layers only differ by the pooling's and
    # additions' stabiliser, absent here)
    flex.first = ours.first = ZBox(0.0, 1.0, EPS, bias="bounded")
    a = relprop.Explainer(m, flex)(x, target)
    b = relprop.Explainer(m, ours)(x, target)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# -- the pieces ------------------------------------------------------------------------------------------------------
def test_zbox_bounded_bias_formula_on_one_conv() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1).to(D)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([0.4, -0.5, 0.2], dtype=D))
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 2)).to(D)
    x = torch.rand(2, 2, 5, 5, dtype=D)
    low, high = 0.1, 0.9
    rule = ZBox(low, high, EPS, bias="bounded")
    # relevance at the conv's output, from the classifier's LRP-0: a ⊙ Wᵀ e_0
    r = (torch.relu(conv(x)).flatten(1) * model[3].weight[0]).view(2, 3, 5, 5).detach()
    w, b = conv.weight.detach(), conv.bias.detach()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    z = F.conv2d(x, w, b, padding=1) - F.conv2d(torch.full_like(x, low), wp, low * b.clamp(min=0), padding=1)
    z = z - F.conv2d(torch.full_like(x, high), wn, high * b.clamp(max=0), padding=1)
    s = r / (z + EPS * torch.where(z >= 0, 1.0, -1.0))

    def t(weight: torch.Tensor) -> torch.Tensor:
        return torch.nn.grad.conv2d_input(x.shape, weight, s, padding=1)

    expected = x * t(w) - low * t(wp) - high * t(wn)
    comp = relprop.composites.Composite([(nn.Linear, relprop.rules.Zero())], first=rule)
    got = relprop.Explainer(model, comp)(x, torch.tensor([0, 0]))
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10 * float(expected.abs().max()))


def test_stochastic_picks_the_top_logit_with_probability_5_11_for_the_authors() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 4).expand(30000, 4).contiguous()
    idx = stochastic_classes(logits, gen, 5 / 11)
    top = float((idx == logits[0].argmax()).double().mean())
    assert abs(top - 5 / 11) < 0.012
    assert ISNetMaps(Plain(), "stochastic", match="authors").top_probability == 5 / 11
    assert ISNetMaps(Plain(), "stochastic").top_probability == 0.5


def test_selective_delta_defaults_follow_match() -> None:
    assert ISNetMaps(Plain(), "selective").selective_delta == 1e-7
    assert ISNetMaps(Plain(), "selective", match="authors").selective_delta == 0.01
    assert ISNetMaps(Plain(), "selective", match="authors", selective_delta=0.5).selective_delta == 0.5


def test_authors_preset_rules() -> None:
    ex = relprop.Explainer(_model("dense", False), "isnet_authors")
    rules = {s.name: r for s, r in ex.rules.items() if s.kind in ("linear", "avgpool")}
    assert isinstance(rules["conv0"], ZBox) and rules["conv0"].bias == "bounded"
    assert rules["conv0"].stabilizer == EPS and rules["conv0"].batch_variance == "unbiased"
    assert all(isinstance(r, Flex) for n, r in rules.items() if n != "conv0")


def test_errors() -> None:
    with pytest.raises(ConfigError, match="match='exact'.*'relprop'.*'authors'"):
        ISNetMaps(Plain(), "selective", match="exact")
    with pytest.raises(ConfigError, match="no dual"):
        ISNetMaps(Plain(), "dual", match="authors")
    with pytest.raises(ConfigError, match="selective_delta"):
        ISNetMaps(Plain(), "selective", selective_delta=-1.0)
    with pytest.raises(ValueError, match="scalar low and high"):
        ZBox(torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1), bias="bounded")
    with pytest.raises(ValueError, match="bias must be 'removed' or 'bounded'"):
        ZBox(bias="kept")
    with pytest.raises(ValueError, match="batch_variance"):
        ZBox(batch_variance="sample")
    with pytest.raises(ConfigError, match="top_probability"):
        stochastic_classes(torch.zeros(2, 3), None, 1.5)

