"""An explanation never changes a buffer of the model: not in eval mode, and not in training mode either, where
BatchNorm's own forward would update its running statistics and ``num_batches_tracked``.

The one forward that may update them is a training step's: ``Explainer.forward(x, update_stats=True)`` (ISNet
takes its logits from that forward pass), and then exactly as one ``model(x)`` would, once.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop
from relprop.errors import RelpropError
from relprop.isnet import ISNetMaps


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics, affine parameters and batch counters, as after training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(7)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def _vgg11_bn() -> nn.Module:
    # vgg11_bn's features (eight Conv+BN+ReLU) with a small classifier of the same layout: the stock one
    # has 120M parameters and would only slow the test down
    model = torchvision.models.vgg11_bn(weights=None, num_classes=10)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(
        nn.Linear(512, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(),
        nn.Linear(32, 10),
    )  # fmt: skip
    return model


MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None, num_classes=10), 32),
    "densenet121": (lambda: torchvision.models.densenet121(weights=None, num_classes=10), 64),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=10), 32),
    "vgg11_bn": (_vgg11_bn, 32),
    "squeezenet1_1": (lambda: torchvision.models.squeezenet1_1(weights=None, num_classes=10), 64),
}
_BUILT: dict[str, nn.Module] = {}


def _model(name: str) -> tuple[nn.Module, int]:
    make, size = MODELS[name]
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = _trained_like(make())
    return copy.deepcopy(_BUILT[name]), size


def _buffers(model: nn.Module) -> dict[str, tuple[torch.Tensor, int]]:
    return {n: (b.clone(), b._version) for n, b in model.named_buffers()}


def _assert_unchanged(model: nn.Module, before: dict[str, tuple[torch.Tensor, int]]) -> None:
    after = dict(model.named_buffers())
    assert after.keys() == before.keys()
    changed = [n for n, (v, _) in before.items() if not torch.equal(after[n], v)]
    assert not changed, f"{len(changed)} buffers changed, e.g. {changed[:3]}"
    written = [n for n, (_, ver) in before.items() if after[n]._version != ver]
    assert not written, f"{len(written)} buffers were written in place, e.g. {written[:3]}"


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("preset", list(relprop.PRESETS))
@pytest.mark.parametrize("name", list(MODELS))
def test_no_explanation_changes_a_buffer(name: str, preset: str, mode: str) -> None:
    model, size = _model(name)
    model.train(mode == "train")
    torch.manual_seed(1)
    x = torch.rand(2, 3, size, size)
    before = _buffers(model)
    try:
        explainer = relprop.Explainer(model, preset)
    except RelpropError as exc:  # a preset that does not apply to this architecture
        pytest.skip(f"{preset} does not apply to {name}: {exc}")
    e = explainer.explain(x, torch.tensor([3, 5]))
    assert bool(torch.isfinite(e.relevance).all())
    _assert_unchanged(model, before)
    # the functional form, a shared forward pass with several passes, and with a graph
    relprop.explain(model, x, 1, preset)
    fp = explainer.forward(x, composites=["epsilon"])
    fp.explain(0)
    fp.explain(1, composite="epsilon")
    explainer.explain(x, 2, create_graph=True)
    _assert_unchanged(model, before)


def test_mixed_training_flags_and_a_hooked_batchnorm() -> None:
    """BatchNorm layers that relprop runs as the module itself (a hook on it, one inside a leaf_modules block
    that the relevance pass re-evaluates, an InstanceNorm with running statistics) keep their statistics too,
    next to an eval-mode BatchNorm in a train-mode model."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(x)

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), Block(),
        nn.InstanceNorm2d(8, affine=False, track_running_stats=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 4),
    )  # fmt: skip
    _trained_like(model)
    model[1].register_forward_hook(lambda m, i, o: None)
    model.train()
    model[4].eval()
    before = _buffers(model)
    x = torch.rand(3, 3, 12, 12)
    explainer = relprop.Explainer(model, "epsilon", leaf_modules={Block: "route", nn.InstanceNorm2d: "route"})
    explainer.explain(x, 1)
    explainer.forward(x).explain(0)
    _assert_unchanged(model, before)


def _plain_forward_buffers(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    plain = copy.deepcopy(model)
    with torch.no_grad():
        plain(x)
    return dict(plain.named_buffers())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_update_stats_updates_them_once_like_the_model(name: str) -> None:
    model, size = _model(name)
    model.train()
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    model.double()
    want = _plain_forward_buffers(model, x)
    fp = relprop.Explainer(model, "epsilon_plus").forward(x, update_stats=True, composites=["epsilon"])
    fp.explain(0)
    fp.explain(1, composite="epsilon")  # the relevance passes do not update them again
    got = dict(model.named_buffers())
    for n, b in want.items():
        torch.testing.assert_close(got[n], b, rtol=1e-9, atol=1e-12, msg=f"buffer {n}")
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 8


@pytest.mark.parametrize("variant", ["selective", "dual", "original", "grad_input"])
def test_isnet_training_step_updates_the_statistics_once(variant: str) -> None:
    model, size = _model("resnet18")
    model.double().train()
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    want = _plain_forward_buffers(model, x)
    logits, maps = ISNetMaps(model, variant)(x)
    maps.sum().backward()
    got = dict(model.named_buffers())
    for n, b in want.items():
        torch.testing.assert_close(got[n], b, rtol=1e-9, atol=1e-12, msg=f"buffer {n}")
