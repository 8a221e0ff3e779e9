"""Modern torchvision and timm architectures, in small configurations that cover every step kind they need
(squeeze-excitation and other gates, LayerNorm / functional batch norm, layer scale, stochastic depth,
MultiheadAttention, scaled_dot_product_attention, einsum attention with relative position bias, window
shifts, split attention), with trained-like normalisation statistics: the explanation's logits equal the
model's, relevance is finite, shaped like the input and not zero, and the model is left unchanged.

The full model lists run in ``benchmarks/bench_architectures.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop

timm = pytest.importorskip("timm")


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random normalisation statistics and affine parameters (fresh initialisation hides wrong rules: BatchNorm's
    shift is zero there) and random weights where the initialisation is zero (ViT heads)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.uniform_(0.5, 1.5, generator=g)
                if getattr(m, "bias", None) is not None:
                    m.bias.normal_(0, 0.3, generator=g)
        for p in model.parameters():
            if p.dim() >= 2 and not bool(p.any()):
                p.normal_(0, 0.05, generator=g)
    return model.eval()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=5),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=5),
    "regnet_y_400mf": lambda: torchvision.models.regnet_y_400mf(num_classes=5),
    "vit": lambda: torchvision.models.VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=5),
    "maxvit": lambda: torchvision.models.MaxVit(
        (32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16], block_layers=[1, 1], head_dim=4,
        stochastic_depth_prob=0.1, num_classes=5,
    ),  # fmt: skip
    "timm_vit": lambda: timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5
    ),
    "timm_swin": lambda: timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=4, embed_dim=16, depths=(1, 2),
        num_heads=(1, 2), num_classes=5,
    ),  # fmt: skip
    "timm_convnext": lambda: timm.create_model(
        "convnext_atto", pretrained=False, depths=(1, 1, 1, 1), num_classes=5, ls_init_value=0.5
    ),
    "timm_efficientnet": lambda: timm.create_model("efficientnet_b0", pretrained=False, num_classes=5),
    "timm_eva": lambda: timm.create_model(
        "eva02_tiny_patch14_224", pretrained=False, img_size=28, depth=2, num_classes=5
    ),
    "timm_resnest": lambda: timm.create_model("resnest14d", pretrained=False, num_classes=5),
}
SIZE = {"timm_eva": 28, "maxvit": 32, "vit": 32, "timm_vit": 32, "timm_swin": 32}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_modern_architecture_is_explained(name: str) -> None:
    torch.manual_seed(0)
    model = trained_like(MODELS[name]())
    size = SIZE.get(name, 64)
    x = torch.rand(2, 3, size, size)
    before = _state(model)
    with torch.no_grad():
        ref = model(x)
    for composite in ("epsilon_plus_flat", "rlrp", "zero", "attnlrp"):
        e = relprop.Explainer(model, composite).explain(x)
        torch.testing.assert_close(e.logits, ref, rtol=1e-4, atol=1e-5)
        r = e.relevance
        assert r.shape == x.shape and bool(torch.isfinite(r).all()), composite
        assert bool((r.flatten(1).abs().sum(1) > 0).all()), composite
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_densenet121_with_trained_like_batchnorm_lrp0_equals_gradient_x_input_and_nothing_explodes() -> None:
    torch.manual_seed(0)
    model = trained_like(torchvision.models.densenet121(num_classes=4)).double()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    e = relprop.Explainer(model, "zero").explain(x, 1)
    xg = x.clone().requires_grad_(True)
    model(xg)[:, 1].sum().backward()
    gxi = xg.grad * x
    assert float((e.relevance - gxi).abs().max()) <= 1e-4 * float(gxi.abs().max())
    logit = float(e.logits[0, 1].abs())
    for composite in ("epsilon", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1", "attnlrp"):
        r = relprop.Explainer(model, composite).explain(x, 1).relevance
        assert bool(torch.isfinite(r).all()) and float(r.abs().sum()) < 1e3 * logit, composite
