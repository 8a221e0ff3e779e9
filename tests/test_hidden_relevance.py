"""Relevance at hidden layers: ``explain(..., layers=[...])`` against a float64 layer-by-layer LRP written here."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import relprop
from relprop.composites import epsilon as epsilon_composite
from relprop.errors import UsageError

D = torch.float64


def _cnn(bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=bias),  # 0
        nn.ReLU(),  # 1
        nn.Conv2d(4, 5, 3, stride=2, bias=bias),  # 2
        nn.ReLU(),  # 3
        nn.Flatten(),  # 4
        nn.Linear(5 * 3 * 3, 8, bias=bias),  # 5
        nn.ReLU(),  # 6
        nn.Linear(8, 4, bias=bias),  # 7
    ).to(D)


def _reference(model: nn.Sequential, x: Tensor, target: Tensor, eps: float) -> dict[str, Tensor]:
    """LRP-ε (ε = 0: LRP-0) written out layer by layer: R at the output of every module of the Sequential.

    Linear/Conv: R_a = a ⊙ Wᵀ(R / (z + ε·sign(z))), sign(0) = +1 (0/0 := 0 for ε = 0); ReLU and Flatten pass R
    (reshaped). Differentiable: gradients with respect to the parameters can be taken through it."""
    acts = [x]
    for layer in model:
        acts.append(layer(acts[-1]))
    logits = acts[-1]
    r = F.one_hot(target, logits.shape[1]).to(D) * logits
    out: dict[str, Tensor] = {}
    for i in reversed(range(len(model))):
        out[str(i)] = r
        layer, a = model[i], acts[i]
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            z = layer(a)
            den = z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
            s = torch.where(den == 0, torch.zeros_like(r), r / torch.where(den == 0, torch.ones_like(den), den))
            if isinstance(layer, nn.Conv2d):
                c = torch.nn.grad.conv2d_input(a.shape, layer.weight, s, layer.stride, layer.padding)
            else:
                c = s @ layer.weight
            r = a * c
        elif isinstance(layer, nn.Flatten):
            r = r.reshape(a.shape)
    return out


NAMES = [str(i) for i in range(8)]


@pytest.mark.parametrize("eps", [0.0, 0.25])
def test_hidden_relevance_equals_layer_by_layer_reference(eps: float) -> None:
    model = _cnn().eval()
    x = torch.randn(3, 2, 8, 8, dtype=D)
    target = torch.tensor([0, 2, 3])
    composite = "zero" if eps == 0 else epsilon_composite(eps)
    e = relprop.Explainer(model, composite).explain(x, target, layers=NAMES)
    ref = _reference(model, x, target, eps)
    assert set(e.layers) == set(NAMES)
    for name in NAMES:
        got = e.layers[name]
        assert got.shape == ref[name].shape, name
        torch.testing.assert_close(got, ref[name], rtol=1e-9, atol=1e-12, msg=f"layer {name}")
    # the last layer's output relevance is the seed itself; the input relevance is what layer 0 passes on
    torch.testing.assert_close(e.layers["7"], e.output_relevance)
    assert e.layers["0"].abs().sum() > 0


def test_forward_pass_explain_returns_the_same_layers() -> None:
    model = _cnn().eval()
    x = torch.randn(2, 2, 8, 8, dtype=D)
    ex = relprop.Explainer(model, "zero")
    direct = ex.explain(x, 1, layers=["2", "5"])
    fp = ex.forward(x, composites=[epsilon_composite(0.25)])
    via = fp.explain(1, layers=["2", "5"])
    for name in ("2", "5"):
        torch.testing.assert_close(via.layers[name], direct.layers[name], rtol=1e-12, atol=0)
    # another composite on the same forward pass gives its own hidden relevance
    other = fp.explain(1, composite=epsilon_composite(0.25), layers=["2"])
    ref = _reference(model, x, torch.tensor([1, 1]), 0.25)["2"]
    torch.testing.assert_close(other.layers["2"], ref, rtol=1e-9, atol=1e-12)
    # no layers asked: none returned
    assert ex.explain(x, 1).layers == {} and fp.explain(1).layers == {}


def test_conservation_at_hidden_layers_for_lrp0_without_bias() -> None:
    model = _cnn(bias=False).eval()
    x = torch.rand(4, 2, 8, 8, dtype=D)
    e = relprop.Explainer(model, "zero").explain(x, "predicted", layers=NAMES)
    logit = e.logits.gather(1, e.targets[:, None])[:, 0]
    for name in NAMES:
        total = e.layers[name].flatten(1).sum(1)
        # LRP-0 conserves relevance exactly except where a whole layer's relevance dies at z = 0 (not here)
        torch.testing.assert_close(total, logit, rtol=1e-10, atol=1e-12, msg=f"layer {name}")


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.conv2(self.act(self.conv1(x))))


class _ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.block = _Block(3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 5, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.block(torch.relu(self.stem(x)))).flatten(1))


def test_conservation_at_a_residual_block_output() -> None:
    torch.manual_seed(1)
    model = _ResNet().to(D).eval()
    x = torch.rand(2, 1, 6, 6, dtype=D)
    e = relprop.Explainer(model, "zero").explain(x, 2, layers=["block", "block.conv2", "stem", "pool"])
    logit = e.logits[:, 2]
    for name in ("block", "stem", "pool"):
        torch.testing.assert_close(e.layers[name].flatten(1).sum(1), logit, rtol=1e-10, atol=1e-12, msg=name)
    assert e.layers["block"].shape == (2, 3, 6, 6) and e.layers["pool"].shape == (2, 3, 1, 1)
    # the residual branch carries only part of the block's relevance
    branch = e.layers["block.conv2"].flatten(1).sum(1)
    assert bool((branch.abs() < logit.abs()).all())


def test_hidden_relevance_is_differentiable_like_the_reference() -> None:
    model = _cnn().train()  # no BatchNorm / dropout: train mode changes nothing but is what ISNet uses
    x = torch.randn(2, 2, 8, 8, dtype=D)
    target = torch.tensor([3, 1])
    e = relprop.Explainer(model, epsilon_composite(0.1)).explain(x, target, create_graph=True, layers=["2", "5"])
    loss = e.layers["2"].pow(2).sum() + e.layers["5"].abs().sum()
    got = torch.autograd.grad(loss, list(model.parameters()))
    ref = _reference(model, x, target, 0.1)
    ref_loss = ref["2"].pow(2).sum() + ref["5"].abs().sum()
    want = torch.autograd.grad(ref_loss, list(model.parameters()))
    for g, w in zip(got, want):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-11)
    # without create_graph nothing is recorded
    plain = relprop.Explainer(model, "zero").explain(x, target, layers=["2"])
    assert not plain.layers["2"].requires_grad


def test_rescaled_plans_return_each_layer_normalised_with_its_log_scale() -> None:
    model = _cnn().eval()
    x = torch.randn(2, 2, 8, 8, dtype=D)
    plain = relprop.Explainer(model, "zero").explain(x, 0, layers=["2", "5"])
    scaled = relprop.Explainer(model, "zero", rescale=True).explain(x, 0, layers=["2", "5"])
    assert plain.layer_log_scale == {}
    for name in ("2", "5"):
        r, log_s = scaled.layers[name], scaled.layer_log_scale[name]
        torch.testing.assert_close(r.abs().flatten(1).amax(1), torch.ones(2, dtype=D))
        torch.testing.assert_close(r * log_s.exp().view(-1, 1, *([1] * (r.dim() - 2))), plain.layers[name])


def _state(model: nn.Module) -> tuple[dict[str, Tensor], list[bool], int]:
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    return sd, [m.training for m in model.modules()], hooks


def test_model_not_mutated() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 2)
    ).train()
    before = _state(model)
    copy_before = copy.deepcopy(model)
    x = torch.randn(4, 1, 5, 5)
    e = relprop.Explainer(model).explain(x, 0, create_graph=True, layers=["1", "2"])
    e.layers["1"].sum().backward()
    after = _state(model)
    for k, v in before[0].items():
        assert torch.equal(v, after[0][k]), k
    assert before[1:] == after[1:]
    assert [n for n, _ in model.named_modules()] == [n for n, _ in copy_before.named_modules()]


# -- errors -----------------------------------------------------------------------------------------------------
class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
        self.act = nn.ReLU()
        self.head = nn.Linear(2, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.act(self.body(x))).mean((2, 3)))


class _Pair(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * 2, torch.relu(x)


class _TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.pair = _Pair()
        self.head = nn.Linear(2, 3)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.pair(self.conv(x))
        return self.head((a + b).mean((2, 3)))


def test_unknown_name_lists_close_names() -> None:
    model = _Twice()
    with pytest.raises(UsageError, match=r"no submodule 'body\.O'; close names: .*'body\.0'"):
        relprop.Explainer(model).explain(torch.randn(1, 1, 4, 4), 0, layers=["body.O"])
    with pytest.raises(UsageError, match="list of module names"):
        relprop.Explainer(model).explain(torch.randn(1, 1, 4, 4), 0, layers="body")  # type: ignore[arg-type]


def test_module_called_twice_is_refused_with_a_parent_that_works() -> None:
    model = _Twice()
    ex = relprop.Explainer(model)
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(UsageError, match="'act' .* is called 2 times"):
        ex.explain(x, 0, layers=["act"])
    # in a residual block of torchvision's kind: the hint names a parent that can be asked for
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18(num_classes=3).eval()
    rex = relprop.Explainer(net)
    with pytest.raises(UsageError, match=r"called 2 times.*its parent 'layer1\.0'") as info:
        rex.explain(torch.randn(1, 3, 32, 32), 0, layers=["layer1.0.relu"])
    assert "layer1.0" in str(info.value)
    e = rex.explain(torch.randn(1, 3, 32, 32), 0, layers=["layer1.0"])
    assert e.layers["layer1.0"].shape == (1, 64, 8, 8)


def test_module_with_several_outputs_is_refused() -> None:
    ex = relprop.Explainer(_TupleNet())
    with pytest.raises(UsageError, match="'pair' .* returns 2 tensors"):
        ex.explain(torch.randn(1, 1, 4, 4), 0, layers=["pair"])


def test_folded_batchnorm_names_the_batchnorm() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).eval()
    ex = relprop.Explainer(model)
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(UsageError, match=r"folded with its BatchNorm '1'.*layers=\['1'\]"):
        ex.explain(x, 0, layers=["0"])
    assert ex.explain(x, 0, layers=["1"]).layers["1"].shape == (2, 2, 2, 2)


class _Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x) * 1.0


class _ReadsWeights(nn.Module):
    """Uses its child's parameters without calling the child."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.proj.weight, self.proj.bias)


class _LeafNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _Inner()
        self.reads = _ReadsWeights()
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.reads(self.inner(x))
        h = self.attn(h, h, h, need_weights=False)[0]
        return self.head(h.mean(1))


def test_modules_inside_leaf_regions_or_never_called_are_refused() -> None:
    torch.manual_seed(0)
    model = _LeafNet().eval()
    x = torch.randn(2, 3, 4)
    ex = relprop.Explainer(model, "epsilon", leaf_modules={_Inner: "pass"})
    with pytest.raises(UsageError, match=r"'inner\.lin' .* inside 'inner' \(_Inner\).*leaf module.*layers=\['inner'\]"):
        ex.explain(x, 0, layers=["inner.lin"])
    refused = r"'reads\.proj' .* not called by 'reads' \(_ReadsWeights\).*layers=\['reads'\]"
    with pytest.raises(UsageError, match=refused):
        ex.explain(x, 0, layers=["reads.proj"])
    # the hints work; nn.MultiheadAttention (written out as primitive steps) can be asked for as a whole (one of
    # its outputs is used) and so can its output projection, which the written-out attention calls
    e = ex.explain(x, 0, layers=["inner", "reads", "attn", "attn.out_proj"])
    for name in ("inner", "reads", "attn", "attn.out_proj"):
        assert e.layers[name].shape == (2, 3, 4), name
        assert bool(torch.isfinite(e.layers[name]).all()) and e.layers[name].abs().sum() > 0, name
    # the attention's output is its output projection's output
    torch.testing.assert_close(e.layers["attn"], e.layers["attn.out_proj"])


def test_module_off_the_path_to_the_logits_is_refused() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.unused = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            self.unused(x)
            return self.used(x)

    with pytest.raises(UsageError, match="'unused' .* never used|'unused' .*no relevance reaches"):
        relprop.Explainer(Net()).explain(torch.randn(2, 3), 0, layers=["unused"])
