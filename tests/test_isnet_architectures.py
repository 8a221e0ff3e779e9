"""ISNet training steps on modern architectures (MobileNetV3, EfficientNet, ConvNeXt, ViT), randomly initialised,
small inputs, model in train mode: the loss falls over a few SGD steps and the maps stay finite; and the
double-backpropagated gradient of the ISNet loss equals a finite difference of the loss (float64)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

from relprop.isnet import ISNetMaps, isnet_loss

tv = pytest.importorskip("torchvision").models
timm = pytest.importorskip("timm")


def _mobilenet() -> nn.Module:
    return tv.mobilenet_v3_small(weights=None, num_classes=3, dropout=0.0)


def _efficientnet() -> nn.Module:
    return tv.efficientnet_b0(weights=None, num_classes=3, dropout=0.0, stochastic_depth_prob=0.0)


def _convnext_tiny() -> nn.Module:
    return tv.convnext_tiny(weights=None, num_classes=3, stochastic_depth_prob=0.0)


def _convnext_atto() -> nn.Module:
    return timm.create_model("convnext_atto", pretrained=False, num_classes=3)


def _vit_tiny(size: int) -> Callable[[], nn.Module]:
    return lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=size)


def _batch(size: int, batch: int = 4, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g, dtype=dtype)
    y = torch.arange(batch) % 3
    mask = torch.zeros(batch, 1, size, size, dtype=dtype)
    mask[..., size // 4 : size - size // 4, size // 4 : size - size // 4] = 1.0  # foreground: the central box
    return x, y, mask


def _loss(maps_fn: ISNetMaps, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, seed: int, create_graph: bool):  # noqa: ANN202
    logits, maps = maps_fn(x, y, create_graph=create_graph, generator=torch.Generator().manual_seed(seed))
    return isnet_loss(logits, y, maps, mask)[0], maps


# (model, input size, SGD learning rate, variant): the step length is at most lr (gradients clipped to norm 1)
TRAINS = {
    "mobilenet_v3_small": (_mobilenet, 64, 0.003, "selective"),
    "convnext_tiny": (_convnext_tiny, 32, 0.01, "selective"),
    "convnext_atto-dual": (_convnext_atto, 32, 0.003, "dual"),
    "vit_tiny": (_vit_tiny(32), 32, 0.003, "selective"),
    "vit_tiny-stochastic": (_vit_tiny(32), 32, 0.003, "stochastic"),
}


@pytest.mark.parametrize("name", list(TRAINS))
def test_isnet_steps_lower_the_loss(name: str) -> None:
    torch.set_num_threads(1)
    make, size, lr, variant = TRAINS[name]
    torch.manual_seed(0)
    model = make().train()
    x, y, mask = _batch(size)
    maps_fn = ISNetMaps(model, variant)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        start, _ = _loss(maps_fn, x, y, mask, 0, create_graph=False)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(4):
        loss, maps = _loss(maps_fn, x, y, mask, step, create_graph=True)
        assert bool(torch.isfinite(maps).all()) and bool(torch.isfinite(loss)), (name, step)
        assert maps.shape[:3] == (4, 2 if variant == "dual" else 1, 3)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    with torch.no_grad():
        end, maps = _loss(maps_fn, x, y, mask, 0, create_graph=False)  # the objective of the start (same draw)
    assert bool(torch.isfinite(maps).all())
    assert end.item() < start.item(), (name, start.item(), end.item())
    assert model.training
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the steps trained the model


def test_efficientnet_steps_keep_maps_finite() -> None:
    """EfficientNet-B0 from random initialisation: its ISNet loss is rough at this size (the gradient norm reaches
    1e4 to 1e5 and a step of length 1e-3 can raise the loss), so only finiteness is asserted over the steps."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = _efficientnet().train()
    x, y, mask = _batch(64)
    maps_fn = ISNetMaps(model, "selective")
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    for step in range(3):
        loss, maps = _loss(maps_fn, x, y, mask, step, create_graph=True)
        assert bool(torch.isfinite(maps).all()) and bool(torch.isfinite(loss)), step
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        assert bool(torch.isfinite(norm))
        opt.step()


def _eval_with_batch_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Eval mode with every BatchNorm's running statistics set to this batch's (so that eval mode is not the
    degenerate random-init network whose features vanish, and the loss depends on the parameters only through
    the explained computation: no statistics detached)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = 1.0
    with torch.no_grad():
        model.train()(x)
    return model.eval()


# (model, input size, tolerance relative to |∇L|): BatchNorm in eval mode is a fixed affine map, so the
# gradient is exact; LayerNorm's statistics are detached in the relevance pass by design (the normalisation is
# explained as the affine map with the forward pass's scale), which the finite difference does not do: there the
# two differ by a few tenths of a percent, and 2 % still catches a wrong sign or a missing path.
GRADCHECKS = {
    "mobilenet_v3_small": (_mobilenet, 32, 1e-4),
    "efficientnet_b0": (_efficientnet, 32, 1e-4),
    "convnext_atto": (_convnext_atto, 32, 2e-2),
    "vit_tiny": (_vit_tiny(32), 32, 2e-2),
}


@pytest.mark.parametrize("name", list(GRADCHECKS))
def test_isnet_loss_gradient_equals_finite_difference(name: str) -> None:
    """d/dh L(θ + h·u) at h = 0 by a central difference in float64, against ⟨∇L, u⟩ from the double
    backpropagation through the relevance maps, along u = ∇L / |∇L| and along a random direction. The step h is
    tiny because the loss of a randomly initialised network is rough: near-zero denominators of the ε rule make
    kinks at scales down to 1e-7 (the difference quotient at h = 1e-5 can be off by orders of magnitude)."""
    torch.set_num_threads(1)
    make, size, tol = GRADCHECKS[name]
    torch.manual_seed(0)
    model = make().double()
    x, y, mask = _batch(size, batch=2, dtype=torch.float64)
    model = _eval_with_batch_statistics(model, _batch(size, batch=16, dtype=torch.float64)[0])
    maps_fn = ISNetMaps(model, "selective", selective_class="label")
    params = [p for p in model.parameters() if p.requires_grad]
    loss, maps = _loss(maps_fn, x, y, mask, 0, create_graph=True)
    assert maps.abs().sum() > 0
    grads = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    g = torch.Generator().manual_seed(1)
    rand = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    rnorm = torch.sqrt(sum((r * r).sum() for r in rand))
    for direction in ([gi / norm for gi in grads], [r / rnorm for r in rand]):
        analytic = sum((gi * u).sum() for gi, u in zip(grads, direction)).item()
        h = 1e-9
        values = []
        with torch.no_grad():
            for sign in (1.0, -1.0):
                for p, u in zip(params, direction):
                    p.add_(sign * h * u)
                values.append(_loss(maps_fn, x, y, mask, 0, create_graph=False)[0].item())
                for p, u in zip(params, direction):
                    p.sub_(sign * h * u)
        numeric = (values[0] - values[1]) / (2 * h)
        assert abs(numeric - analytic) <= tol * norm.item(), (name, numeric, analytic, norm.item())
