"""Graph constructs that shortcuts or tracing could get wrong (each was a bug once)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import relprop
from relprop import UnsupportedLayerError

D = torch.float64


class ShiftAfterReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x)) + 0.5)


def _eps_reference(x: torch.Tensor, layers: list[tuple[nn.Linear, str]], target: int, eps: float) -> torch.Tensor:
    """LRP-ε on a chain of Linear layers with elementwise ops in between (callable per layer)."""
    acts, h = [], x
    for lin, op in layers:
        acts.append(h)
        h = lin(h)
        h = {"relu+0.5": lambda t: torch.relu(t) + 0.5, "id": lambda t: t}[op](h)
    R = torch.zeros_like(h)
    R[:, target] = h[:, target]
    for (lin, _), a in zip(reversed(layers), reversed(acts)):
        z = lin(a)
        R = a * ((R / (z + eps * torch.where(z >= 0, 1.0, -1.0))) @ lin.weight)
    return R


def test_constant_shift_after_relu_is_not_a_silent_output() -> None:
    torch.manual_seed(0)
    m = ShiftAfterReLU().to(D)
    x = torch.randn(4, 5, dtype=D)
    with torch.no_grad():
        ref = _eps_reference(x, [(m.l1, "relu+0.5"), (m.l2, "id")], 0, 1e-6)
    torch.testing.assert_close(relprop.explain(m, x, 0, "epsilon"), ref)


def test_epsilon_ignore_bias_between_relus() -> None:
    l1, l2 = nn.Linear(2, 2), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[-1.0, 0], [0, 1]]))
        l1.bias.copy_(torch.tensor([2.0, 0]))
        l2.weight.fill_(1)
    model = nn.Sequential(l1, nn.ReLU(), l2).to(D)
    r = relprop.explain(model, torch.ones(1, 2, dtype=D), 0, relprop.Epsilon(0.25, ignore_bias=True))
    expected = torch.tensor([[0.7111, 0.7111]], dtype=D)  # hand computation: R = 2, z₁ w/o bias = (-1, 1)
    torch.testing.assert_close(r, expected, atol=1e-4, rtol=0)


class Negate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


def test_custom_pass_module_is_not_assumed_sign_preserving() -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), Negate(), nn.Linear(5, 3)).to(D)
    func = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Identity(), nn.Linear(5, 3)).to(D)
    func.load_state_dict(conv.state_dict())
    x = torch.randn(3, 4, dtype=D)
    ours = relprop.explain(conv, x, 1, relprop.ZPlus(), leaf_modules={Negate: "pass"})
    # reference: z⁺ on the last layer sees input -a (non-positive): W⁻ carries it
    a = -torch.relu(conv[0](x))
    z2 = F.linear(a.clamp(max=0), conv[3].weight.clamp(max=0)) + conv[3].bias.clamp(min=0)
    r2 = torch.zeros(3, 3, dtype=D)
    r2[:, 1] = conv(x)[:, 1]
    ra = a * ((r2 / (z2 + 1e-6 * torch.where(z2 >= 0, 1.0, -1.0))) @ conv[3].weight.clamp(max=0))
    h = conv[0](x)
    zp = F.linear(x.clamp(min=0), conv[0].weight.clamp(min=0), conv[0].bias.clamp(min=0)) + F.linear(
        x.clamp(max=0), conv[0].weight.clamp(max=0)
    )
    s = ra / (zp + 1e-6 * torch.where(zp >= 0, 1.0, -1.0))
    ref = x.clamp(min=0) * (s @ conv[0].weight.clamp(min=0)) + x.clamp(max=0) * (s @ conv[0].weight.clamp(max=0))
    assert h.shape == (3, 5)
    torch.testing.assert_close(ours.detach(), ref.detach())


def test_zbox_bounds_of_full_input_shape() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 2, 5, 5, dtype=D)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten()).to(D)
    seed = torch.randn(2, 27, dtype=D)
    full = relprop.explain(model, x, seed, relprop.ZBox(torch.zeros_like(x), torch.ones_like(x)))
    scalar = relprop.explain(model, x, seed, relprop.ZBox(0.0, 1.0))
    torch.testing.assert_close(full, scalar)


class Sub(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3, bias=False), nn.Linear(4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) - self.b(x)


def test_subtraction_conserves_and_gradient_changes_sign() -> None:
    torch.manual_seed(0)
    m, x = Sub().to(D), torch.randn(2, 4, dtype=D)
    e = relprop.Explainer(m, "zero").explain(x, 0)
    torch.testing.assert_close(e.relevance.sum(1), e.logits[:, 0])
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m(xr)[:, 0].sum(), xr)
    torch.testing.assert_close(relprop.explain(m, x, 0, "gradient"), g)


def test_gradient_through_scaling_and_negation() -> None:
    torch.manual_seed(0)

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -(self.l(x * 3.0) / 2.0)

    m, x = Scaled().to(D), torch.randn(2, 4, dtype=D)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m(xr)[:, 2].sum(), xr)
    torch.testing.assert_close(relprop.explain(m, x, 2, "gradient"), g)


def test_gradient_double_backward_through_smooth_activation() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(D)
    x = torch.randn(2, 4, dtype=D, requires_grad=True)
    r = relprop.explain(m, x, 1, "gradient", create_graph=True)
    (g,) = torch.autograd.grad(m(x)[:, 1].sum(), x, create_graph=True)
    torch.testing.assert_close(r, g)
    ours = torch.autograd.grad((r**2).sum(), [m[0].weight, x])
    ref = torch.autograd.grad((g**2).sum(), [m[0].weight, x])
    for o, t in zip(ours, ref):
        torch.testing.assert_close(o, t)


def test_inplace_op_whose_input_is_read_again_is_refused() -> None:
    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.f = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            y = h.relu_()
            return self.f(h + y)

    with pytest.raises(UnsupportedLayerError, match=r"relu_.*in place.*read again"):
        relprop.Explainer(Reuse())


def test_hooks_of_traced_modules_do_not_see_proxies() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.l(x))

    model = nn.Sequential(Block(), nn.Linear(4, 2))
    store: list[torch.Tensor] = []
    handle = model[0].register_forward_hook(lambda m, i, o: store.append(o.detach()))
    r = relprop.explain(model, torch.rand(2, 4), 0)
    assert torch.isfinite(r).all() and store == []
    handle.remove()


def test_shape_indexing_pad_and_torch_max_pool() -> None:
    class Shapes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 2, 3)
            self.l = nn.Linear(2 * 3 * 3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.max_pool2d(torch.relu(self.c(F.pad(x, (1, 1, 1, 1)))), 2)
            return self.l(h.reshape(h.shape[0], -1))

    torch.manual_seed(0)
    m, x = Shapes().to(D), torch.rand(2, 1, 6, 6, dtype=D)
    e = relprop.Explainer(m, "zero").explain(x, 1)
    steps = {s.kind for s in relprop.RelevanceGraph(m).steps}
    assert {"maxpool", "route", "meta"} <= steps
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m(xr)[:, 1].sum(), xr)
    torch.testing.assert_close(relprop.explain(m, x, 1, "gradient"), g)
    assert torch.isfinite(e.relevance).all()


def test_a_forward_that_caches_in_its_module_leaves_no_proxy_there() -> None:
    """timm's LeViT/TinyViT keep attention biases in a dict in eval mode; tracing must not leave proxies there."""

    class Caching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.bias_table = nn.Parameter(torch.randn(4))
            self.cache: dict[str, torch.Tensor] = {}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if "b" not in self.cache:
                self.cache["b"] = self.bias_table * 2
            return self.lin(x) + self.cache["b"]

    m = Caching().eval()
    x = torch.randn(3, 4)
    for composite in ("epsilon", "zero", "rlrp"):  # a new trace each time
        e = relprop.Explainer(m, composite).explain(x)
        torch.testing.assert_close(e.logits, m(x))
        m.cache.clear()
    relprop.Explainer(m, "zero")
    assert m.cache == {} and set(vars(m)) == set(vars(Caching()))
