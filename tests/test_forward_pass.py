"""The public engine API: one forward, many relevance passes (ForwardPass), the summary, the functional
cache, and rules that the engine knows only through their declarations."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop
from relprop.explainer.functional import cached_explainer
from relprop.rules import Rule, divide_stabilized

D = torch.float64


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5),
    ).to(D).eval()  # fmt: skip


def test_one_forward_feeds_many_targets_and_composites() -> None:
    model = small_cnn()
    calls = []
    handle = model[4].register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(3, 3, 8, 8, dtype=D)
    ex = relprop.Explainer(model, "epsilon_plus_flat")
    fp = ex.forward(x, composites=["epsilon", "gradient"])
    targets = (0, 3, torch.tensor([1, 2, 4]))
    shared = [fp.explain(t).relevance for t in targets]
    others = {name: fp.relevance(2, composite=name) for name in ("epsilon", "gradient")}
    assert len(calls) == 1  # one forward pass for five relevance passes
    handle.remove()
    for t, got in zip(targets, shared):
        # (the gradient pass asks for the model's own BatchNorm in the forward: z differs by rounding only)
        torch.testing.assert_close(got, ex.explain(x, t).relevance, rtol=1e-12, atol=0)
    for name, got in others.items():
        torch.testing.assert_close(got, relprop.Explainer(model, name).explain(x, 2).relevance, rtol=1e-12, atol=1e-14)


def test_forward_pass_refuses_a_composite_it_did_not_keep_values_for() -> None:
    model, x = small_cnn(), torch.rand(2, 3, 8, 8, dtype=D)
    ex = relprop.Explainer(model, "epsilon")
    with pytest.raises(ValueError, match=r"composites=\[") as info:
        ex.forward(x).explain(1, composite="gradient")
    assert "'gradient'" in str(info.value)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg)[:, 1].sum(), xg)
    torch.testing.assert_close(ex.forward(x, composites=["gradient"]).relevance(1, composite="gradient"), g)


def test_forward_pass_with_create_graph_trains_like_separate_explanations() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 8, 8, dtype=D)
    params = [p for p in model.parameters()]
    ex = relprop.Explainer(model, "epsilon")
    fp = ex.forward(x, create_graph=True)
    loss = sum(fp.relevance(t).square().sum() for t in (0, 4))
    shared = torch.autograd.grad(loss, params)
    apart = sum(ex.explain(x, t, create_graph=True).relevance.square().sum() for t in (0, 4))
    separate = torch.autograd.grad(apart, params)
    for a, b in zip(shared, separate):
        torch.testing.assert_close(a, b)


def test_summary_names_every_rule_and_why() -> None:
    model = small_cnn()
    text = relprop.Explainer(model, "epsilon_plus_flat").summary()
    lines = {line.split()[1]: line for line in text.splitlines()[3:]}
    assert "Flat" in lines["0"] and "first layer" in lines["0"] and "BN folded" in lines["0"]
    assert "ZPlus" in lines["4"] and "layer_map" in lines["4"] and "input >= 0" in lines["4"]
    assert "Epsilon" in lines["8"]
    assert "winner" in lines["3"]
    other = relprop.Explainer(model, "epsilon_plus_flat").summary("rlrp")
    assert "rescaled per step" in other and "RLRP" in other


def test_functional_explain_reuses_one_trace_and_follows_model_changes() -> None:
    model, x = small_cnn(), torch.rand(2, 3, 8, 8, dtype=D)
    first = cached_explainer(model, "epsilon", None, None)
    assert cached_explainer(model, "epsilon", None, None) is first
    assert cached_explainer(model, "zero", None, None) is not first
    model[8] = nn.Linear(32, 5).to(D)  # a new classifier: the cached trace would call the old one
    torch.testing.assert_close(relprop.explain(model, x, 1, "epsilon"), relprop.Explainer(model, "epsilon")(x, 1))
    assert cached_explainer(model, "epsilon", None, None) is not first
    model.train()  # the trace depends on training flags too
    again = cached_explainer(model, "epsilon", None, None)
    assert again.graph.model is model and again is not first
    with torch.no_grad():
        model[4].weight.mul_(-1)  # a parameter edit through torch: picked up without retracing
    torch.testing.assert_close(relprop.explain(model, x, 1, "epsilon"), relprop.Explainer(model, "epsilon")(x, 1))


def test_functional_cache_does_not_keep_the_model_alive() -> None:
    model = small_cnn()
    relprop.explain(model, torch.rand(1, 3, 8, 8, dtype=D), 0)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


class MyEpsilon(Rule):
    """LRP-ε written by a user, not derived from relprop's Epsilon: the engine must treat it alike through
    its declarations alone."""

    name = "my_epsilon"
    multiplies_input = frozenset({"linear", "avgpool", "add"})

    def linear(self, layer, a, z, R):  # noqa: ANN001, ANN201
        return a * layer.transpose(divide_stabilized(R, z, 1e-6), layer.weight, a)

    def add(self, parts, z, R, negatives_silent=False):  # noqa: ANN001, ANN201
        return [p * divide_stabilized(R, z, 1e-6) for p in parts]


def test_a_user_rule_is_dispatched_by_its_declarations() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).to(D).eval()
    x = torch.rand(2, 3, 32, 32, dtype=D)
    mine = relprop.Composite([((nn.Conv2d, nn.Linear), MyEpsilon())], add=MyEpsilon(), pool=MyEpsilon())
    ours = relprop.Composite([((nn.Conv2d, nn.Linear), relprop.Epsilon())])
    a, b = relprop.Explainer(model, mine), relprop.Explainer(model, ours)
    # the same static analysis from the declarations alone
    assert {s.name for s in a.plan.alias} == {s.name for s in b.plan.alias}
    assert {s.name for s, v in a.plan.neg_silent.items() if v} == {s.name for s, v in b.plan.neg_silent.items() if v}
    assert a.plan.alias and all(s.kind == "activation" for s in a.plan.alias)
    torch.testing.assert_close(a(x, 1), b(x, 1))


class DenseBlock(nn.Module):
    """DenseNet's pattern: a BatchNorm after a concatenation, which cannot be folded into a layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv0(x)
        h = torch.cat([a, self.conv1(torch.relu(a))], 1)
        h = self.conv2(torch.relu(self.norm(h)))
        return self.head(h.mean((2, 3)))


def test_isnet_presets_give_a_standalone_batchnorm_their_linear_rule() -> None:
    from relprop.rules import Epsilon, ZPlus

    model = DenseBlock().to(D).eval()
    for preset, rule in (("isnet", Epsilon), ("isnet_zplus", ZPlus)):
        plan = relprop.Explainer(model, preset).plan
        (norm,) = [s for s in plan.rules if s.name == "norm"]
        assert norm.batchnorm is None and type(plan.rules[norm]) is rule


@pytest.mark.parametrize("train", [False, True])
def test_isnet_maps_on_densenet121_stay_bounded(train: bool) -> None:
    """DenseNet's stand-alone BatchNorm: with Pass there the maps reached 1e12 for logits below 1. (With batch
    statistics over a degenerate batch, 2 images of 32² with 1x1 maps in the last block, any z-rule on a
    stand-alone BatchNorm explodes: its shift cancels its scaled input; not tested.)"""
    from relprop.isnet import ISNetMaps

    torch.manual_seed(0)
    model = torchvision.models.densenet121(num_classes=3).train(train)
    x = torch.rand(4, 3, 64, 64)
    logits, maps = ISNetMaps(model, "stochastic")(x, create_graph=False, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(maps).all())
    assert float(maps.abs().amax()) < 10 * float(logits.abs().amax())
