"""The step kinds of modern architectures: products of two tensors (gates, squeeze-excitation, matmul,
attention), softmax, normalisation (LayerNorm, GroupNorm, RMSNorm, functional batch norm), functional layers,
decomposed attention and stochastic depth.

Each kind is checked against a float64 reference written here from the rule's formula (not from relprop's
code), for conservation where the rule conserves, for LRP-0 = Gradient × Input where theory says so, and for
differentiability (gradcheck through ``create_graph=True``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import relprop
from relprop.composites import Composite
from relprop.rules import Product, Softmax, Zero

DT = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def lrp0_linear(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, r: torch.Tensor) -> torch.Tensor:
    """LRP-0 at z = a Wᵀ + b: R_i = Σ_j a_i w_ji r_j / z_j."""
    z = a @ w.T + (0 if b is None else b)
    return a * ((r / z) @ w)


# --- products ------------------------------------------------------------------------------------------


class GatedMLP(nn.Module):
    """out(a(x) * sigmoid(g(x))): a squeeze-excitation-style gate."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.g, self.out = nn.Linear(5, 6), nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(x) * torch.sigmoid(self.g(x)))


def _zero_with(product: Product) -> Composite:
    return Composite([(nn.Linear, Zero())], product=product, softmax=Softmax(), norm=Zero(), add=Zero())


@pytest.mark.parametrize("mode", ["signal", "uniform"])
def test_gate_product_matches_the_formula_in_float64(mode: str) -> None:
    torch.manual_seed(0)
    m = GatedMLP().double().eval()
    x = torch.randn(4, 5, dtype=DT)
    e = relprop.Explainer(m, _zero_with(Product(mode, 0.0))).explain(x, 1)
    # reference: LRP-0 at `out`, then the product (signal takes all / half each), then LRP-0 at a and g
    h, gate = m.a(x), torch.sigmoid(m.g(x))
    r_out = torch.zeros(4, 3, dtype=DT)
    r_out[:, 1] = m(x)[:, 1]
    r_prod = lrp0_linear(h * gate, m.out.weight, m.out.bias, r_out)
    if mode == "signal":
        ref = lrp0_linear(x, m.a.weight, m.a.bias, r_prod)
    else:  # gate relevance reaches x through sigmoid (passed) and g
        ref = lrp0_linear(x, m.a.weight, m.a.bias, r_prod / 2) + lrp0_linear(x, m.g.weight, m.g.bias, r_prod / 2)
    torch.testing.assert_close(e.relevance, ref, rtol=1e-10, atol=1e-12)


class Bilinear(nn.Module):
    """out((p(x) @ q(x)ᵀ) @ v(x)): products of two input-dependent tensors without a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.p, self.q, self.v, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 4)
        s = torch.matmul(self.p(x), self.q(x).transpose(1, 2))
        return self.out((s @ self.v(x)).flatten(1))


def test_matmul_uniform_split_matches_the_formula_and_conserves() -> None:
    torch.manual_seed(1)
    m = Bilinear().double().eval()
    for lin in (m.p, m.q, m.v, m.out):
        nn.init.zeros_(lin.bias)  # without biases LRP-0 conserves at every step
    x = torch.randn(2, 3, 4, dtype=DT)
    e = relprop.Explainer(m, _zero_with(Product("uniform", 0.0))).explain(x, 0)
    assert float(e.conservation_error.max()) < 1e-9
    # reference for the last product o = s @ v: R_s = ½ s ⊙ ((R/o) vᵀ), R_v = ½ v ⊙ (sᵀ (R/o))
    p, q, v = m.p(x), m.q(x), m.v(x)
    s = p @ q.transpose(1, 2)
    o = s @ v
    r_out = torch.zeros(2, 2, dtype=DT)
    r_out[:, 0] = m(x)[:, 0]
    r_o = lrp0_linear(o.flatten(1), m.out.weight, None, r_out).view_as(o)
    ratio = r_o / o
    r_s, r_v = 0.5 * s * (ratio @ v.transpose(1, 2)), 0.5 * v * (s.transpose(1, 2) @ ratio)
    ratio_s = r_s / s
    r_p, r_q = 0.5 * p * (ratio_s @ q), 0.5 * q * (ratio_s.transpose(1, 2) @ p)
    ref = sum(
        lrp0_linear(x.flatten(0, 1), lin.weight, None, r.flatten(0, 1)).view_as(x)
        for lin, r in ((m.p, r_p), (m.q, r_q), (m.v, r_v))
    )
    torch.testing.assert_close(e.relevance, ref, rtol=1e-9, atol=1e-12)


def test_layer_scale_and_matmul_by_a_parameter_take_all_relevance() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4, bias=False)
            self.gamma = nn.Parameter(torch.randn(4))
            self.w = nn.Parameter(torch.randn(4, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.lin(x) * self.gamma) @ self.w

    torch.manual_seed(2)
    m = Scaled().double()
    x = torch.randn(3, 4, dtype=DT)
    e = relprop.Explainer(m, "zero").explain(x, 2)
    assert float(e.conservation_error.max()) < 1e-10  # no bias anywhere: LRP-0 conserves
    xg = x.clone().requires_grad_(True)
    m(xg)[:, 2].sum().backward()
    torch.testing.assert_close(e.relevance, xg.grad * x)  # linear in x: LRP-0 = Gradient × Input


# --- softmax and attention ------------------------------------------------------------------------------


def test_softmax_rule_matches_attnlrp_formula() -> None:
    class Soft(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.out = nn.Linear(4, 5), nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.softmax(self.a(x), dim=-1))

    torch.manual_seed(3)
    m = Soft().double()
    x = torch.randn(3, 4, dtype=DT)
    e = relprop.Explainer(m, _zero_with(Product())).explain(x, 1)
    z = m.a(x)
    y = torch.softmax(z, -1)
    r_out = torch.zeros(3, 2, dtype=DT)
    r_out[:, 1] = m(x)[:, 1]
    r_y = lrp0_linear(y, m.out.weight, m.out.bias, r_out)
    r_z = z * (r_y - y * r_y.sum(-1, keepdim=True))  # AttnLRP: x ⊙ (R − s ΣR)
    torch.testing.assert_close(e.relevance, lrp0_linear(x, m.a.weight, m.a.bias, r_z), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", [None, "bool", "float", "padding"])
def test_multihead_attention_written_out_computes_the_module_output(batch_first: bool, mask: str | None) -> None:
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
            self.head = nn.Linear(8, 3)
            self.mask = torch.zeros(5, 5).bool()
            self.mask[0, 3:] = True
            self.fmask = torch.randn(5, 5)
            self.pad = torch.zeros(2, 5).bool()
            self.pad[:, -1] = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = x if batch_first else x.transpose(0, 1)
            kw = {
                None: {}, "bool": {"attn_mask": self.mask}, "float": {"attn_mask": self.fmask},
                "padding": {"key_padding_mask": self.pad},
            }[mask]  # fmt: skip
            out, _ = self.attn(t, t, t, need_weights=False, **kw)
            out = out if batch_first else out.transpose(0, 1)
            return self.head(out.mean(1))

    torch.manual_seed(4)
    m = Attn().eval()
    x = torch.randn(2, 5, 8)
    for composite in ("attnlrp", "cp_lrp", "epsilon_plus_flat", "rlrp"):
        e = relprop.Explainer(m, composite).explain(x)
        torch.testing.assert_close(e.logits, m(x), rtol=1e-5, atol=1e-6)
        assert e.relevance.shape == x.shape and torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0


@pytest.mark.parametrize("causal", [False, True])
def test_scaled_dot_product_attention_written_out(causal: bool) -> None:
    class Sdpa(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.head = nn.Linear(6, 18), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return self.head(o.sum(1))

    torch.manual_seed(5)
    m = Sdpa().double()
    x = torch.randn(2, 4, 6, dtype=DT)
    ex = relprop.Explainer(m, "cp_lrp")
    assert [s.kind for s in ex.graph.steps].count("softmax") == 1  # the fused call is written out
    e = ex.explain(x)
    torch.testing.assert_close(e.logits, m(x))
    # CP-LRP: the attention weights are a gate, so relevance reaches x only through v (and qkv's v rows)
    assert float(e.relevance.abs().sum()) > 0


# --- normalisation ------------------------------------------------------------------------------------


def _fixed_stats_reference(kind: str, x0: torch.Tensor, mod: nn.Module):  # type: ignore[no-untyped-def]
    """The normalisation as a function of x with its statistics computed from x0 (written independently)."""
    if kind == "layer":
        sd = (x0.var(-1, unbiased=False, keepdim=True) + mod.eps).sqrt()
        return lambda x: (x - x.mean(-1, keepdim=True)) / sd * mod.weight + mod.bias
    if kind == "rms":
        rms = (x0.pow(2).mean(-1, keepdim=True) + mod.eps).sqrt()
        return lambda x: x / rms * mod.weight
    if kind == "group":
        b, c = x0.shape[:2]
        g0 = x0.reshape(b, mod.num_groups, -1)
        sd = (g0.var(-1, unbiased=False, keepdim=True) + mod.eps).sqrt()

        def f(x: torch.Tensor) -> torch.Tensor:
            g = x.reshape(b, mod.num_groups, -1)
            y = ((g - g.mean(-1, keepdim=True)) / sd).reshape(x.shape)
            return y * mod.weight.view(1, c, 1, 1) + mod.bias.view(1, c, 1, 1)

        return f
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["layer", "rms", "group"])
def test_normalisation_epsilon_rule_matches_the_fixed_statistics_jacobian(kind: str) -> None:
    torch.manual_seed(6)
    if kind == "group":
        norm: nn.Module = nn.GroupNorm(2, 4)
        pre: nn.Module = nn.Conv2d(2, 4, 3, padding=1)
        x = torch.randn(2, 2, 3, 3, dtype=DT)
    else:
        norm = nn.LayerNorm(6) if kind == "layer" else nn.RMSNorm(6, eps=1e-5)
        pre = nn.Linear(5, 6)
        x = torch.randn(3, 5, dtype=DT)
    with torch.no_grad():  # trained-like affine parameters
        norm.weight.uniform_(0.5, 1.5, generator=_gen())
        if getattr(norm, "bias", None) is not None:
            norm.bias.normal_(0, 0.3, generator=_gen(1))
    m = nn.Sequential(pre, norm, nn.Flatten(), nn.LazyLinear(2)).double()
    m(x)
    e = relprop.Explainer(m, "epsilon").explain(x, 0)
    # reference: ε at the last layer, then at the normalisation x ⊙ Jᵀ(R / stab(y)) with J the Jacobian of the
    # fixed-statistics map, then ε at `pre`
    h = pre(x)
    f = _fixed_stats_reference(kind, h.detach(), norm)
    y = norm(h)
    torch.testing.assert_close(f(h), y)  # the fixed-statistics map equals the layer at the forward input
    lin = m[3]
    r_out = torch.zeros(x.shape[0], 2, dtype=DT)
    r_out[:, 0] = m(x)[:, 0]
    yf = y.flatten(1)
    zf = yf @ lin.weight.T + lin.bias
    r_y = (yf * ((r_out / (zf + 1e-6 * torch.where(zf >= 0, 1.0, -1.0))) @ lin.weight)).view_as(y)
    s = r_y / (y + 1e-6 * torch.where(y >= 0, 1.0, -1.0))
    hh = h.detach().requires_grad_(True)
    (jt_s,) = torch.autograd.grad(f(hh), hh, s)
    r_h = h * jt_s
    if kind == "group":
        zc = h
        sc = r_h / (zc + 1e-6 * torch.where(zc >= 0, 1.0, -1.0))
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.conv2d(xx, pre.weight, None, padding=1), xx, sc)
        ref = x * g
    else:
        zc = h
        ref = x * ((r_h / (zc + 1e-6 * torch.where(zc >= 0, 1.0, -1.0))) @ pre.weight)
    torch.testing.assert_close(e.relevance, ref.detach(), rtol=1e-8, atol=1e-12)


def test_layernorm_without_bias_conserves_under_lrp0() -> None:
    torch.manual_seed(7)
    m = nn.Sequential(nn.Linear(5, 6, bias=False), nn.LayerNorm(6, bias=False), nn.Linear(6, 2, bias=False)).double()
    x = torch.randn(4, 5, dtype=DT)
    e = relprop.Explainer(m, "zero").explain(x)
    assert float(e.conservation_error.max()) < 1e-9


class FunctionalNet(nn.Module):
    """timm-style: F.conv2d with parameters, F.batch_norm with running statistics, F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 2, 3, 3) * 0.5)
        self.register_buffer("rm", torch.randn(4) * 0.5)
        self.register_buffer("rv", torch.rand(4) + 0.5)
        self.gamma, self.beta = nn.Parameter(torch.rand(4) + 0.5), nn.Parameter(torch.randn(4) * 0.3)
        self.fc_w, self.fc_b = nn.Parameter(torch.randn(3, 4 * 16) * 0.1), nn.Parameter(torch.randn(3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(x, self.w, None, 1, 1)
        h = F.relu(F.batch_norm(h, self.rm, self.rv, self.gamma, self.beta, self.training, 0.1, 1e-5))
        return F.linear(h.flatten(1), self.fc_w, self.fc_b)


def test_functional_layers_and_batch_norm_give_lrp0_equal_gradient_x_input() -> None:
    torch.manual_seed(8)
    m = FunctionalNet().double().eval()
    x = torch.rand(2, 2, 4, 4, dtype=DT)
    ex = relprop.Explainer(m, "zero")
    kinds = [s.kind for s in ex.graph.steps if s.kind not in ("const", "meta", "input", "output")]
    assert kinds.count("linear") == 2 and "normalise" in kinds
    r = ex(x, 1)
    xg = x.clone().requires_grad_(True)
    m(xg)[:, 1].sum().backward()
    torch.testing.assert_close(r, xg.grad * x, rtol=1e-8, atol=1e-12)


def test_functional_conv_gets_the_conv_rule_like_the_module() -> None:
    torch.manual_seed(9)
    fn = FunctionalNet().eval()
    mod = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(64, 3)).eval()  # fmt: skip
    with torch.no_grad():
        mod[0].weight.copy_(fn.w)
        mod[1].running_mean.copy_(fn.rm), mod[1].running_var.copy_(fn.rv)
        mod[1].weight.copy_(fn.gamma), mod[1].bias.copy_(fn.beta)
        mod[4].weight.copy_(fn.fc_w), mod[4].bias.copy_(fn.fc_b)
    x = torch.rand(2, 2, 4, 4)
    # the preset's rules by layer type reach the functional layers (Flat on the first convolution, ε on the
    # dense layer); the functional batch norm is a stand-alone normalisation step, the module's is folded
    ex_fn, ex_mod = relprop.Explainer(fn, "epsilon_plus_flat"), relprop.Explainer(mod, "epsilon_plus_flat")
    rule_fn = {s.name: type(r).__name__ for s, r in ex_fn.rules.items() if s.kind == "linear"}
    rule_mod = {s.name: type(r).__name__ for s, r in ex_mod.rules.items() if s.kind == "linear"}
    assert sorted(rule_fn.values()) == sorted(rule_mod.values()) == ["Epsilon", "Flat"]
    torch.testing.assert_close(ex_fn.explain(x).logits, mod(x), rtol=1e-5, atol=1e-6)


# --- eval-mode identities -----------------------------------------------------------------------------


def test_stochastic_depth_is_the_identity_in_eval_mode() -> None:
    from torchvision.ops import StochasticDepth

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f, self.sd, self.out = nn.Linear(4, 4), StochasticDepth(0.5, "row"), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(x + self.sd(torch.relu(self.f(x))))

    m = Res().eval()
    ex = relprop.Explainer(m, "zero")
    assert not any("stochastic" in s.name for s in ex.graph.steps)
    x = torch.randn(3, 4)
    torch.testing.assert_close(ex.explain(x).logits, m(x))


# --- differentiability (ISNet trains through these kinds) ------------------------------------------------


class TinyBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(4)
        self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.g, self.out = nn.Linear(4, 4), nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        a = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2), -1)
        o = (a @ self.v(h)) * torch.sigmoid(self.g(h))
        return self.out(o.flatten(1))


@pytest.mark.parametrize("composite", ["attnlrp", "cp_lrp", "epsilon", "rlrp"])
def test_relevance_is_differentiable_through_the_new_kinds(composite: str) -> None:
    torch.manual_seed(10)
    m = TinyBlock().double()
    x = torch.randn(2, 3, 4, dtype=DT)
    names = ["q.weight", "v.bias", "g.weight", "out.weight"]  # after the LayerNorm (its statistics are fixed)

    inputs = tuple(m.get_parameter(n).detach().clone().requires_grad_(True) for n in names)
    ex = relprop.Explainer(_Bound(m, dict(zip(names, inputs))), composite)  # traced once

    def relevance_of(*ps: torch.Tensor) -> torch.Tensor:
        assert all(p is q for p, q in zip(ps, inputs))  # gradcheck perturbs these very tensors in place
        e = ex.explain(x, 0, create_graph=True)
        # R-LRP's per-step rescaling is a detached factor: the unscaled relevance is the differentiable quantity
        return e.relevance if e.log_scale is None else e.relevance * e.log_scale.exp().view(-1, 1, 1)

    assert torch.autograd.gradcheck(relevance_of, inputs, eps=1e-6, atol=1e-6)


class _Bound(nn.Module):
    """``m`` with some parameters replaced by given tensors (for gradcheck): a copy whose parameters are views."""

    def __init__(self, m: nn.Module, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        import copy

        self.m = copy.deepcopy(m)
        for name, t in state.items():
            owner, attr = name.rsplit(".", 1)
            mod = self.m.get_submodule(owner)
            del mod._parameters[attr]
            setattr(mod, attr, t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


# --- routes, resampling and affine maps written out ------------------------------------------------------


class Routes(nn.Module):
    """permute, transpose, roll, basic indexing, unbind, nearest/bilinear upsampling and addcmul."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.alpha, self.beta = nn.Parameter(torch.randn(4, 1, 1)), nn.Parameter(torch.randn(4, 1, 1))
        self.fc = nn.LazyLinear(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))  # (B, 4, 4, 4)
        h = torch.addcmul(self.beta, self.alpha, self.up(h))  # (B, 4, 8, 8)
        h = h.permute(0, 2, 3, 1).transpose(1, 2)
        h = torch.roll(h, shifts=(1, -2), dims=(1, 2))
        a, b = h[:, :4].unbind(1)[:2]
        h = F.interpolate(torch.cat([a, b], 1).permute(0, 2, 1), scale_factor=2, mode="nearest")
        return self.fc(h[..., ::2, :].flatten(1))


def test_routes_follow_the_gradient_and_affine_maps_conserve() -> None:
    torch.manual_seed(11)
    m = Routes().double()
    x = torch.randn(2, 2, 4, 4, dtype=DT)
    m(x)  # (initialises the lazy layer)
    g = relprop.explain(m, x, 1, "gradient")
    xg = x.clone().requires_grad_(True)
    m(xg)[:, 1].sum().backward()
    torch.testing.assert_close(g, xg.grad)  # every route's and resampling's vector-Jacobian product is exact
    kinds = {s.kind for s in relprop.Explainer(m, "zero").graph.steps}
    assert {"avgpool", "normalise", "route"} <= kinds
    e = relprop.Explainer(m, "zero").explain(x, 1)
    assert torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0


@pytest.mark.parametrize("groups", [1, 3, 6])
def test_zplus_on_signed_inputs_matches_the_formula_for_dense_grouped_and_depthwise_convs(groups: int) -> None:
    """z⁺ computes W⁺a⁺ + W⁻a⁻ in one stacked product (dense and depthwise convolutions): check the formula."""
    torch.manual_seed(12)
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=groups, bias=True).double()
    m = nn.Sequential(nn.Conv2d(2, 6, 1), nn.Tanh(), conv, nn.Flatten(), nn.Linear(6 * 16, 2)).double()
    x = torch.randn(2, 2, 4, 4, dtype=DT)
    comp = Composite([(nn.Conv2d, relprop.ZPlus(1e-9)), (nn.Linear, Zero())])
    comp.first = None
    ex = relprop.Explainer(m, comp)
    e = ex.explain(x, 0)
    # reference: LRP-0 at the classifier, then z⁺ at `conv` from its formula, then z⁺ at the first conv
    a = torch.tanh(m[0](x))
    r_out = torch.zeros(2, 2, dtype=DT)
    r_out[:, 0] = m(x)[:, 0]
    r_c = lrp0_linear(conv(a).flatten(1), m[4].weight, m[4].bias, r_out).view(2, 6, 4, 4)

    def zplus(layer: nn.Conv2d, inp: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        wp, wn = layer.weight.clamp(min=0), layer.weight.clamp(max=0)
        ap, an = inp.clamp(min=0).requires_grad_(True), inp.clamp(max=0).requires_grad_(True)
        kw = {"padding": layer.padding, "groups": layer.groups}
        z = F.conv2d(ap, wp, layer.bias.clamp(min=0), **kw) + F.conv2d(an, wn, None, **kw)
        gp, gn = torch.autograd.grad(z, (ap, an), r / (z + 1e-9))
        return ap.detach() * gp + an.detach() * gn

    r_a = zplus(conv, a.detach(), r_c.detach())
    ref = zplus(m[0], x, r_a)
    torch.testing.assert_close(e.relevance, ref.detach(), rtol=1e-8, atol=1e-12)
