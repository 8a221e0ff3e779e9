"""Explaining leaves the model as it was: parameters (values, ``_version``, ``requires_grad``, no
``.grad``), buffers, registered hooks, module attributes and every module's ``training`` flag.

In training mode BatchNorm's own forward updates its running statistics; an explanation does not, in any
mode (``tests/test_no_buffer_change.py`` checks torchvision models). Only a training step's forward,
``Explainer.forward(x, update_stats=True)``, updates them, exactly as one plain ``model(x)``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop


class SmallVGG(nn.Module):
    """vgg11_bn's layout (features / avgpool / classifier with dropout) at a size that runs in milliseconds."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        cfg = [8, "M", 16, "M", 16, 16, "M"]
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(16 * 2 * 2, 32),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(32, 32),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(32, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _make(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = SmallVGG() if name == "vgg_bn" else torchvision.models.resnet18(weights=None, num_classes=10)
    with torch.no_grad():  # non-trivial running statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(3)
    return model.double()


@pytest.fixture(scope="module", params=["vgg_bn", "resnet18"])
def base_model(request):
    return request.param, _make(request.param)


def _hook(*args):
    return None


def _register_hooks(model: nn.Module) -> None:
    leaf = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    container = next(m for m in model.children() if list(m.children()))
    for m in (leaf, container, model):
        m.register_forward_hook(_hook)
        m.register_forward_pre_hook(_hook)
        m.register_full_backward_hook(_hook)
        m.register_full_backward_pre_hook(_hook)


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _snapshot(model: nn.Module) -> dict:
    return {
        "params": {n: (p.detach().clone(), p._version, p.requires_grad, p.grad) for n, p in model.named_parameters()},
        "buffers": {n: (b.clone(), b._version) for n, b in model.named_buffers()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: {h: dict(getattr(m, h)) for h in HOOK_DICTS} for n, m in model.named_modules()},
        "attrs": {n: sorted(vars(m)) for n, m in model.named_modules()},
        "modules": [n for n, _ in model.named_modules()],
    }


# torch warns that the full backward hooks on container modules cannot fire while fx traces through them
@pytest.mark.filterwarnings("ignore:For backward hooks to be called:UserWarning")
@pytest.mark.parametrize("create_graph", [False, True], ids=["no_graph", "create_graph"])
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("preset", list(relprop.PRESETS))
def test_explaining_does_not_mutate(base_model, preset, mode, create_graph):
    name, base = base_model
    model = copy.deepcopy(base)
    model.train(mode == "train")
    if name == "resnet18" and mode == "train":
        model.layer2.eval()  # mixed flags: each module's flag must survive as it is
    _register_hooks(model)
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    x_before = x.clone()
    before = _snapshot(model)

    e = relprop.Explainer(model, preset).explain(x, torch.tensor([3, 5]), create_graph=create_graph)
    assert torch.equal(x, x_before) and x._version == 0
    assert bool(torch.isfinite(e.relevance).all())

    after = _snapshot(model)
    for n, (value, version, requires_grad, grad) in before["params"].items():
        p = dict(model.named_parameters())[n]
        assert torch.equal(p.detach(), value), f"parameter {n} changed"
        assert p._version == version, f"parameter {n} was written in place"
        assert p.requires_grad == requires_grad and p.grad is None and grad is None, n
    for n, (value, version) in before["buffers"].items():  # in train mode too: no statistics updated
        b = dict(model.named_buffers())[n]
        assert torch.equal(b, value), f"buffer {n} changed"
        assert b._version == version, f"buffer {n} was written in place"
    for key in ("training", "hooks", "attrs", "modules"):
        assert after[key] == before[key], f"{key} changed"


@pytest.mark.parametrize("rule", [relprop.Epsilon(0.1), relprop.ZPlus(), relprop.Gamma(), relprop.Flat()])
def test_input_and_float_target_are_not_modified(rule):
    """The rules compute in place where no graph is recorded; never in the caller's tensors."""
    model = _make("vgg_bn").eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    target = torch.randn(2, 10, dtype=torch.float64)
    x0, t0 = x.clone(), target.clone()
    relprop.explain(model, x, target, rule)
    assert torch.equal(x, x0) and torch.equal(target, t0)
    assert x._version == 0 and target._version == 0


def test_train_mode_batchnorm_updates_only_with_update_stats():
    """A train-mode explanation would move BatchNorm's statistics (the model's own forward does); it does not,
    while a training step's forward (``update_stats=True``) updates them as one ``model(x)`` does."""
    model = _make("vgg_bn").train()
    plain = copy.deepcopy(model)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    before = model.features[1].running_mean.clone()
    relprop.explain(model, x, 0, "epsilon_plus")
    assert torch.equal(model.features[1].running_mean, before)
    assert int(model.features[1].num_batches_tracked) == 3
    relprop.Explainer(model, "epsilon_plus").forward(x, update_stats=True).explain(0)
    with torch.no_grad():
        plain(x)
    assert not torch.equal(model.features[1].running_mean, before)
    for (n, b), want in zip(model.named_buffers(), plain.buffers()):
        torch.testing.assert_close(b, want, rtol=1e-9, atol=1e-12, msg=f"buffer {n}")
    assert int(model.features[1].num_batches_tracked) == 4


@pytest.mark.parametrize("preset", ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"])
def test_explainer_follows_parameter_updates(preset):
    """A reused Explainer sees an optimiser's in-place updates (its caches of modified weights and folded
    BatchNorm must not serve stale values), and explaining between steps does not disturb training."""
    model = _make("vgg_bn").eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    explainer = relprop.Explainer(model, preset)
    first = explainer(x, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x)[:, 1].sum().backward()
    opt.step()
    second = explainer(x, 1)
    fresh = relprop.Explainer(model, preset)(x, 1)
    assert not torch.allclose(first, fresh)
    torch.testing.assert_close(second, fresh, rtol=1e-10, atol=1e-12)
