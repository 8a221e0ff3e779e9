"""Real image data sets with foreground masks, read from folders or a CSV file.

Layouts (image and mask files: PNG, JPEG, BMP, TIFF, GIF, WebP, PGM/PPM/PBM; extensions in any case):

- **Folders**: ``ROOT/<class>/<image>`` with the mask of each image at ``ROOT/masks/<class>/<stem>.<ext>``
  (the same stem, any image extension), or under ``mask_root=`` with the same ``<class>/<stem>`` layout. The
  mask folder is never a class; hidden entries, non-image files and subfolders of class folders are skipped.
  Classes are the sorted folder names unless ``classes=`` names them (other folders are then skipped).
  Sources are ``""`` unless ``source_of(image_path)`` names them.
- **CSV** (``csv=``): a header with the columns ``image, mask, label`` and optionally ``source`` (e.g. the
  hospital), one row per image; paths relative to the CSV's folder (or to ``root`` when given) or absolute;
  ``label`` is a class name. Classes are the sorted labels unless ``classes=`` names them.

Images may be grey (``L``, ``1``, 16-bit ``I;16`` scaled by 1/65535, 32-bit ``I`` within 0..65535, ``F``
within [0, 1]) or colour (RGB, palette, CMYK, …; alpha is dropped) of any size; ``channels`` converts (RGB to
grey with ITU-R 601 weights). Masks are read as grey and must already be binary: values within {0, 1},
{0, 255} or {0, 65535} (non-zero = foreground), of the image's size.

Items are ``(image, mask, label)`` as in :class:`relprop.data.MaskedTensorDataset`: image float32 (C, H, W)
in [0, 1], mask float32 (1, H, W) in {0, 1}, label an int64 scalar tensor.

``relprop check-data ROOT [--csv F] [--mask-root D]`` (or :func:`check_folder`) lists every problem of a data set.
Images are read by :func:`relprop.data.images.read_image`, the package's one image reader.
"""

from __future__ import annotations

import csv as csv_module
import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..errors import DataError, DataProblem
from .images import IMAGE_EXTENSIONS, image_files, open_image, read_image

__all__ = [
    "IMAGE_EXTENSIONS", "DataCheck", "DataError", "DataProblem", "LabelledSubset", "MaskedImageFolder", "Sample",
    "check_data", "check_folder", "split", "split_by_source",
]  # fmt: skip

MASKS_DIR = "masks"  # the default mask folder inside ROOT
_SHOWN_PROBLEMS = 5  # problems quoted in a DataError raised by the constructor
_SHOWN_VALUES = 6  # mask values quoted in a "not binary" message
_MASK_HIGH = (1, 255, 65535)  # the foreground value of a binary mask

PathLike = str | os.PathLike[str]
Augment = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _error(path: Path, message: str, kind: str) -> DataError:
    """A :class:`DataError` about one file; its message is ``"path: message"``."""
    problem = DataProblem(path, message, kind)
    return DataError(str(problem), [problem])


class Sample(NamedTuple):
    """One item of a :class:`MaskedImageFolder`: its files, class index and source."""

    image: Path
    mask: Path
    label: int
    source: str


# ----------------------------------------------------------------------------------------------------------------------
# Reading files


def _format_values(values: np.ndarray) -> str:
    unique = np.unique(values)
    shown = ", ".join(f"{v:g}" for v in unique[:_SHOWN_VALUES].tolist())
    return shown + (f" … {unique.size} distinct" if unique.size > _SHOWN_VALUES else "")


def _read_mask(path: Path) -> np.ndarray:
    """The mask at ``path`` as a bool (H, W) array (True = foreground); it must already be binary."""
    with open_image(path, "mask") as mask:
        if mask.mode == "1":
            return np.asarray(mask).astype(bool)
        grey = mask if mask.mode in ("L", "I", "F") or mask.mode.startswith("I;16") else mask.convert("L")
        values = np.asarray(grey)
    high = values.max() if values.size else 0
    if not ((high == 0 or high in _MASK_HIGH) and bool(((values == 0) | (values == high)).all())):
        raise _error(
            path,
            f"not binary (values {_format_values(values)}; expected 0 and one of 1, 255, 65535)",
            "not_binary",
        )
    return values != 0


def _size_problem(sample: Sample, image_shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> DataProblem | None:
    if image_shape[:2] == mask_shape[:2]:
        return None
    (ih, iw), (mh, mw) = image_shape[:2], mask_shape[:2]
    return DataProblem(
        sample.mask, f"mask is {mw}×{mh} (W×H) but its image {sample.image} is {iw}×{ih}", "size_mismatch"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Finding the files


def _folder_samples(
    root: Path,
    mask_root: Path | None,
    classes: Sequence[str] | None,
    source_of: Callable[[Path], str] | None,
) -> tuple[list[Sample], tuple[str, ...], list[DataProblem]]:
    problems: list[DataProblem] = []
    if not root.is_dir():
        return [], tuple(classes or ()), [DataProblem(root, "data folder not found", "layout")]
    mask_dir = root / MASKS_DIR if mask_root is None else mask_root
    mask_key = os.path.normcase(os.path.realpath(mask_dir))
    with os.scandir(root) as entries:
        folders = {
            e.name: Path(e.path)
            for e in entries
            if e.is_dir() and not e.name.startswith(".") and os.path.normcase(os.path.realpath(e.path)) != mask_key
        }
    class_names = tuple(sorted(folders)) if classes is None else tuple(classes)
    if not mask_dir.is_dir():
        hint = "" if mask_root is not None else f" (masks go in {mask_dir}/<class>/<stem>.png, or pass a mask root)"
        problems.append(DataProblem(mask_dir, f"mask folder not found{hint}", "layout"))
    if not class_names:
        problems.append(DataProblem(root, "no class folders", "layout"))
    samples: list[Sample] = []
    for label, name in enumerate(class_names):
        folder = folders.get(name)
        if folder is None:
            problems.append(DataProblem(root / name, f"class folder of class {name!r} not found", "layout"))
            continue
        images = image_files(folder)
        if not images:
            problems.append(DataProblem(folder, "empty class folder (no image files)", "empty_class"))
            continue
        masks: dict[str, list[Path]] = defaultdict(list)
        class_masks = mask_dir / name
        if class_masks.is_dir():
            for path in image_files(class_masks):
                masks[path.stem].append(path)
        elif mask_dir.is_dir():
            problems.append(DataProblem(class_masks, f"mask folder missing ({len(images)} images)", "missing"))
        by_stem: dict[str, list[Path]] = defaultdict(list)
        for image in images:
            by_stem[image.stem].append(image)
        for stem, same in by_stem.items():
            if len(same) > 1:
                names = ", ".join(p.name for p in same)
                problems.append(DataProblem(same[0], f"duplicate: images {names} share one mask stem", "duplicate"))
                continue
            found = masks.get(stem, [])
            if len(found) > 1:
                names = ", ".join(p.name for p in found)
                problems.append(DataProblem(found[0], f"duplicate: masks {names} for one image", "duplicate"))
            elif not found:
                if class_masks.is_dir():
                    problems.append(DataProblem(same[0], f"no mask {class_masks / stem}.* found", "missing"))
            else:
                source = "" if source_of is None else str(source_of(same[0]))
                samples.append(Sample(same[0], found[0], label, source))
    return samples, class_names, problems


_CSV_COLUMNS = ("image", "mask", "label")


def _csv_samples(
    csv_path: Path, base: Path | None, classes: Sequence[str] | None
) -> tuple[list[Sample], tuple[str, ...], list[DataProblem]]:
    problems: list[DataProblem] = []
    base = csv_path.parent if base is None else base
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv_module.DictReader(f)
            header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
            missing = [c for c in _CSV_COLUMNS if c not in header]
            if missing:
                found = ", ".join(header) or "nothing"
                message = (
                    f"the header lacks the column(s) {', '.join(missing)} (found {found}; needs image, mask, label)"
                )
                return [], tuple(classes or ()), [DataProblem(csv_path, message, "layout")]
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        return [], tuple(classes or ()), [DataProblem(csv_path, "CSV file not found", "layout")]
    except (OSError, UnicodeDecodeError, csv_module.Error) as exc:
        return [], tuple(classes or ()), [DataProblem(csv_path, f"unreadable CSV file ({exc})", "unreadable")]

    def cell(row: Mapping[str, str | None], column: str) -> str:
        return (row.get(column) or "").strip()

    labels = sorted({cell(row, "label") for _, row in rows} - {""})
    class_names = tuple(labels) if classes is None else tuple(classes)
    index = {name: i for i, name in enumerate(class_names)}
    if not rows:
        problems.append(DataProblem(csv_path, "no rows", "layout"))
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        paths = []
        for column in ("image", "mask"):
            value = cell(row, column)
            if not value:
                problems.append(DataProblem(csv_path, f"line {line}: empty {column} path", "layout"))
            paths.append(Path(value) if Path(value).is_absolute() else base / value)
        label = cell(row, "label")
        if label not in index:
            message = f"line {line}: unknown label {label!r} (classes: {', '.join(class_names)})"
            problems.append(DataProblem(csv_path, message, "unknown_label"))
        if not (cell(row, "image") and cell(row, "mask")) or label not in index:
            continue
        image, mask = paths
        key = os.path.normcase(os.path.normpath(image))
        if key in seen:
            message = f"duplicate: CSV lines {seen[key]} and {line} list this image"
            problems.append(DataProblem(image, message, "duplicate"))
            continue
        seen[key] = line
        ok = True
        for path, what in ((image, "image"), (mask, "mask")):
            if not path.is_file():
                problems.append(DataProblem(path, f"{what} not found (CSV line {line})", "missing"))
                ok = False
        if ok:
            samples.append(Sample(image, mask, index[label], cell(row, "source")))
    return samples, class_names, problems


def _find_samples(
    root: PathLike | None,
    csv: PathLike | None,
    mask_root: PathLike | None,
    classes: Sequence[str] | None,
    source_of: Callable[[Path], str] | None,
) -> tuple[list[Sample], tuple[str, ...], list[DataProblem]]:
    if classes is not None:
        if isinstance(classes, str):
            raise ValueError(f"classes={classes!r}: give a sequence of class names, e.g. ['normal', 'pneumonia']")
        classes = list(classes)
        if not classes or len(set(classes)) != len(classes) or not all(isinstance(c, str) and c for c in classes):
            raise ValueError(f"classes={classes!r}: give distinct, non-empty class names")
    if csv is not None:
        if mask_root is not None or source_of is not None:
            raise ValueError("mask_root= and source_of= apply to the folder layout; the CSV names masks and sources")
        return _csv_samples(Path(csv), None if root is None else Path(root), classes)
    if root is None:
        raise ValueError("give a data folder (root=) or a CSV file (csv=)")
    return _folder_samples(Path(root), None if mask_root is None else Path(mask_root), classes, source_of)


def _where(root: PathLike | None, csv: PathLike | None) -> str:
    return str(csv if csv is not None else root)


# ----------------------------------------------------------------------------------------------------------------------
# Data set


def _check_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"size={size!r}: give (H, W) as two positive ints, one int for a square, or None")
    return pair[0], pair[1]


def _resize(image: Tensor, mask: Tensor, size: tuple[int, int], crop: str | None) -> tuple[Tensor, Tensor]:
    h, w = image.shape[-2:]
    th, tw = size
    if crop == "center":  # scale to cover (th, tw), keeping the aspect ratio, then cut the middle
        scale = max(th / h, tw / w)
        rh, rw = max(th, int(h * scale + 0.5)), max(tw, int(w * scale + 0.5))
    else:
        rh, rw = th, tw
    if (rh, rw) != (h, w):
        image = F.interpolate(image[None], (rh, rw), mode="bilinear", align_corners=False, antialias=True)[0]
        image = image.clamp_(0, 1)
        mask = F.interpolate(mask[None], (rh, rw), mode="nearest-exact")[0]
    if (rh, rw) != (th, tw):
        top, left = (rh - th) // 2, (rw - tw) // 2
        image, mask = image[:, top : top + th, left : left + tw], mask[:, top : top + th, left : left + tw]
    return image.contiguous(), mask.contiguous()


class MaskedImageFolder(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """Images with binary foreground masks and class labels read from folders or a CSV file (see the module doc).

    Construction lists the files and checks cheaply that every image has a mask (no image is opened); it
    raises one :class:`DataError` quoting the first few problems and their count. Images are read with PIL
    on each ``dataset[i]``; an unreadable image, a non-binary mask or a mask of another size than its image
    raises a :class:`DataError` naming the file. :func:`check_folder` opens every file and lists all problems.

    Args:
        root: data folder ``ROOT/<class>/<image>`` (masks in ``ROOT/masks``); with ``csv``, the folder that
            relative paths in the CSV start from (default: the CSV's folder).
        csv: CSV file with the columns ``image, mask, label[, source]``.
        mask_root: mask folder ``<mask_root>/<class>/<stem>.<ext>`` for the folder layout.
        classes: class names in index order (default: sorted folder names or CSV labels).
        channels: 1 (grey) or 3 (RGB); images are converted.
        size: ``(H, W)`` (or one int for a square) to resize to: bilinear (antialiased) for the image,
            nearest for the mask, so the mask stays binary. None keeps each image's size.
        crop: ``"center"`` scales to cover ``size`` keeping the aspect ratio, then cuts the centre;
            None stretches to ``size``.
        augment: ``augment(image, mask) -> (image, mask)``, called on every load after resizing and cropping
            with image float32 (C, H, W) in [0, 1] and mask float32 (1, H, W) in {0, 1}. It must change both
            alike (same flip, crop, rotation; nearest interpolation for the mask) and return the same format,
            the mask still binary. Draw randomness from torch's RNG, which DataLoader seeds per worker.
        source_of: for the folder layout, ``source_of(image_path)`` names an image's source (default ``""``).

    Attributes: ``samples`` (list of :class:`Sample`), ``class_names``, ``labels`` (int64 (N,)), ``sources``
    (one string per item) and ``source_names`` (the distinct sources, sorted).
    """

    def __init__(
        self,
        root: PathLike | None = None,
        *,
        csv: PathLike | None = None,
        mask_root: PathLike | None = None,
        classes: Sequence[str] | None = None,
        channels: int = 1,
        size: int | Sequence[int] | None = None,
        crop: str | None = None,
        augment: Augment | None = None,
        source_of: Callable[[Path], str] | None = None,
    ) -> None:
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"channels={channels!r}: use 1 (grey) or 3 (RGB)")
        self.size = _check_size(size)
        if crop not in (None, "center"):
            raise ValueError(f"crop={crop!r}: use 'center' or None")
        if crop is not None and self.size is None:
            raise ValueError("crop='center' needs size=(H, W)")
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be callable (image, mask) -> (image, mask), got {type(augment).__name__}")
        samples, class_names, problems = _find_samples(root, csv, mask_root, classes, source_of)
        if not problems and not samples:
            problems = [DataProblem(Path(_where(root, csv)), "no images found", "layout")]
        if problems:
            shown = "\n".join(f"  {p}" for p in problems[:_SHOWN_PROBLEMS])
            more = len(problems) - _SHOWN_PROBLEMS
            tail = f"\n  … and {more} more" if more > 0 else ""
            command = f"relprop check-data {' '.join(_check_argv(root, csv, mask_root))}"
            raise DataError(
                f"{len(problems)} problem{'s' * (len(problems) != 1)} in the data set {_where(root, csv)}:\n"
                f"{shown}{tail}\n(`{command}` lists every problem)",
                problems,
            )
        self.samples: list[Sample] = samples
        self.class_names: tuple[str, ...] = class_names
        self.labels: Tensor = torch.tensor([s.label for s in samples], dtype=torch.int64)
        self.sources: tuple[str, ...] = tuple(s.source for s in samples)
        self.source_names: tuple[str, ...] = tuple(sorted(set(self.sources)))
        self.channels, self.crop, self.augment = channels, crop, augment

    @property
    def num_classes(self) -> int:
        """Number of classes (the length of ``class_names``)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        sample = self.samples[index]
        array = read_image(sample.image, self.channels)
        mask_array = _read_mask(sample.mask)
        problem = _size_problem(sample, array.shape, mask_array.shape)
        if problem is not None:
            raise DataError(str(problem), [problem])
        image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        mask = torch.from_numpy(mask_array).to(torch.float32)[None]
        if self.size is not None:
            image, mask = _resize(image, mask, self.size, self.crop)
        if self.augment is not None:
            image, mask = self._augmented(image, mask, sample)
        return image, mask, torch.tensor(sample.label, dtype=torch.int64)

    def _augmented(self, image: Tensor, mask: Tensor, sample: Sample) -> tuple[Tensor, Tensor]:
        assert self.augment is not None
        out = self.augment(image, mask)
        where = f"augment on {sample.image}"
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)):
            raise TypeError(f"{where} must return (image, mask) tensors, got {type(out).__name__}")
        image, mask = out
        c = self.channels
        if image.ndim != 3 or image.shape[0] != c or mask.shape != (1, *image.shape[1:]):
            raise ValueError(
                f"{where} returned image {tuple(image.shape)} and mask {tuple(mask.shape)}; "
                f"expected ({c}, H, W) and (1, H, W)"
            )
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{where} returned a mask that is not binary (use nearest interpolation for masks)")
        return image.to(torch.float32), mask.to(torch.float32)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, num_classes={self.num_classes}, "
            f"sources={len(self.source_names)}, channels={self.channels}, size={self.size})"
        )


# ----------------------------------------------------------------------------------------------------------------------
# Splits


class LabelledSubset(Subset):
    """A :class:`~torch.utils.data.Subset` that keeps ``class_names``, ``labels`` and ``sources`` of its data set."""

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.dataset.class_names)  # type: ignore[attr-defined]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self) -> Tensor:
        return _labels(self.dataset)[torch.as_tensor(list(self.indices), dtype=torch.int64)]

    @property
    def sources(self) -> tuple[str, ...]:
        sources = self.dataset.sources  # type: ignore[attr-defined]
        return tuple(sources[i] for i in self.indices)


def _labels(dataset: Dataset) -> Tensor:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise TypeError(f"{type(dataset).__name__} has no .labels (one class index per item) to stratify by")
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if labels.shape != (len(dataset),):  # type: ignore[arg-type]
        raise ValueError(f"{type(dataset).__name__}.labels has shape {tuple(labels.shape)}, expected (len,)")
    return labels


def _by_class(labels: Tensor, pool: Sequence[int], generator: torch.Generator) -> list[list[int]]:
    """The ``pool`` indices grouped by label (ascending), each group shuffled by ``generator``."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i in pool:
        groups[int(labels[i])].append(i)
    out = []
    for label in sorted(groups):
        group = groups[label]
        out.append([group[j] for j in torch.randperm(len(group), generator=generator).tolist()])
    return out


def split(dataset: Dataset, fractions: Mapping[str, float], seed: int = 0) -> dict[str, LabelledSubset]:
    """Split ``dataset`` (which needs ``.labels``) into named parts, stratified by label.

    ``fractions`` maps part names to fractions summing to 1, e.g. ``{"train": 0.8, "val": 0.1, "test": 0.1}``.
    Each class is divided by largest remainders, so counts per class differ from exact fractions by under
    one item; the result depends only on the labels and ``seed``. Indices in each part are ascending.
    """
    names = list(fractions)
    values = [float(fractions[n]) for n in names]
    if not names or any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"fractions={dict(fractions)!r}: give non-negative fractions that sum to 1")
    labels = _labels(dataset)
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = [[] for _ in names]
    for group in _by_class(labels, range(len(labels)), generator):
        exact = [v * len(group) for v in values]
        counts = [math.floor(x) for x in exact]
        by_remainder = sorted(range(len(names)), key=lambda k: (counts[k] - exact[k], k))
        for k in by_remainder[: len(group) - sum(counts)]:
            counts[k] += 1
        start = 0
        for part, count in zip(parts, counts):
            part.extend(group[start : start + count])
            start += count
    return {name: LabelledSubset(dataset, sorted(part)) for name, part in zip(names, parts)}


def split_by_source(
    dataset: Dataset, test_sources: Sequence[str] | str, val_fraction: float = 0.1, seed: int = 0
) -> dict[str, LabelledSubset]:
    """Hold out whole sources as an external test set; split the other sources into train and val.

    Returns ``{"train", "val", "external"}``: ``external`` holds every item of ``test_sources``; train and
    val hold the other items, split per class (``round(val_fraction × n)`` of each class to val, but at least
    one item of a class stays in train). ``dataset`` needs ``.labels`` and ``.sources`` (as
    :class:`MaskedImageFolder` has). Deterministic given ``seed``; indices in each part are ascending.
    """
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction!r} must lie in [0, 1)")
    test = [test_sources] if isinstance(test_sources, str) else list(test_sources)
    labels = _labels(dataset)
    sources = getattr(dataset, "sources", None)
    if sources is None:
        raise TypeError(f"{type(dataset).__name__} has no .sources (one source name per item)")
    known = sorted(set(sources))
    unknown = [s for s in test if s not in known]
    if unknown:
        raise ValueError(f"unknown source(s) {', '.join(map(repr, unknown))}; the data set has {known}")
    held = set(test)
    external = [i for i, s in enumerate(sources) if s in held]
    pool = [i for i, s in enumerate(sources) if s not in held]
    if not pool:
        raise ValueError(f"no items left for training: every source ({', '.join(known)}) is held out")
    generator = torch.Generator().manual_seed(seed)
    train: list[int] = []
    val: list[int] = []
    for group in _by_class(labels, pool, generator):
        n_val = min(math.floor(val_fraction * len(group) + 0.5), len(group) - 1)
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    parts = {"train": train, "val": val, "external": external}
    return {name: LabelledSubset(dataset, sorted(part)) for name, part in parts.items()}


# ----------------------------------------------------------------------------------------------------------------------
# Checking a data set


class DataCheck(NamedTuple):
    """What :func:`check_data` found: the samples listed, the class names and every problem."""

    samples: list[Sample]
    class_names: tuple[str, ...]
    problems: list[DataProblem]


def check_data(
    root: PathLike | None = None,
    *,
    csv: PathLike | None = None,
    mask_root: PathLike | None = None,
    classes: Sequence[str] | None = None,
    source_of: Callable[[Path], str] | None = None,
    progress: bool = False,
) -> DataCheck:
    """:func:`check_folder` with the samples and class names found as well (``relprop check-data`` counts them)."""
    samples, class_names, problems = _find_samples(root, csv, mask_root, classes, source_of)
    if not problems and not samples:
        problems.append(DataProblem(Path(_where(root, csv)), "no images found", "layout"))
    from tqdm import tqdm

    for sample in tqdm(samples, desc="checking", unit="image", disable=None if progress else True, leave=False):
        shapes = []
        for path, read in ((sample.image, read_image), (sample.mask, _read_mask)):
            try:
                shapes.append(read(path).shape)
            except DataError as exc:
                problems.extend(exc.problems)
        if len(shapes) == 2 and (problem := _size_problem(sample, *shapes)) is not None:
            problems.append(problem)
    return DataCheck(samples, class_names, problems)


def check_folder(
    root: PathLike | None = None,
    *,
    csv: PathLike | None = None,
    mask_root: PathLike | None = None,
    classes: Sequence[str] | None = None,
    source_of: Callable[[Path], str] | None = None,
    progress: bool = False,
) -> list[DataProblem]:
    """Every problem of a data set (arguments as for :class:`MaskedImageFolder`); empty if it is usable.

    Opens every image and mask: missing, unreadable or corrupt files, non-binary masks, masks of another size
    than their image, empty or missing class folders, unknown CSV labels, duplicate entries. ``progress``
    shows a tqdm bar on a terminal.
    """
    found = check_data(root, csv=csv, mask_root=mask_root, classes=classes, source_of=source_of, progress=progress)
    return found.problems


def _check_argv(root: PathLike | None, csv: PathLike | None, mask_root: PathLike | None) -> list[str]:
    argv = [] if root is None else [str(root)]
    argv += [] if csv is None else ["--csv", str(csv)]
    return argv + ([] if mask_root is None else ["--mask-root", str(mask_root)])
