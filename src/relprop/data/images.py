"""The one image reader of relprop: image files to float32 arrays in [0, 1], and image-file discovery.

:func:`read_image` is used by :class:`relprop.data.MaskedImageFolder` and (through :func:`load_image`) by
``relprop explain``. It reads grey images of every bit depth at their full range (``1``, ``L``: /255;
16-bit ``I;16``: /65535; 32-bit ``I`` within 0..65535: /65535; ``F`` within [0, 1]) and colour images
(RGB, palette, CMYK, ...; alpha is dropped); RGB becomes grey with the ITU-R 601 weights (as PIL's
``convert("L")``), grey becomes RGB by repetition. Unreadable files raise :class:`~relprop.errors.DataError`
naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, DataProblem

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "find_images", "image_files", "is_image_name", "load_image",
    "open_image", "read_image", "resize_crop",
]  # fmt: skip

#: File extensions read as images (compared in lower case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm", ".pbm", ".pnm"}
)
#: Per-channel mean and standard deviation of ImageNet (RGB), the usual input normalisation of torchvision models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's convert("L")


def _error(path: Path, message: str, kind: str) -> DataError:
    problem = DataProblem(path, message, kind)
    return DataError(str(problem), [problem])


# -- finding image files ---------------------------------------------------------------------------------------
def is_image_name(name: str) -> bool:
    """``name`` is not hidden and has one of :data:`IMAGE_EXTENSIONS` (in any case)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (sorted; hidden files, other files and sub-folders skipped)."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if is_image_name(e.name) and e.is_file())


def find_images(root: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """The image files under ``root``, recursively (sorted; anything hidden and anything under a folder of
    ``exclude``, such as an output folder inside ``root``, skipped)."""
    skip = [Path(p).resolve() for p in exclude]
    found = []
    for p in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts) or not is_image_name(p.name):
            continue
        if p.is_file() and not any(p.resolve().is_relative_to(s) for s in skip):
            found.append(p)
    return found


# -- reading ---------------------------------------------------------------------------------------------------
def open_image(path: Path, what: str = "image") -> Image.Image:
    """``Image.open`` with the pixels loaded; a missing or unreadable file raises :class:`DataError`
    (kind ``"missing"`` or ``"unreadable"``) whose message names ``path`` and calls it ``what``."""
    path = Path(path)
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise _error(path, f"{what} not found", "missing") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _error(path, f"unreadable {what} ({type(exc).__name__}: {exc})", "unreadable") from None
    return image


def read_image(path: Path, channels: int = 1) -> np.ndarray:
    """The image at ``path`` as float32 (H, W, ``channels``) in [0, 1] at its full bit depth (see the module
    docstring); ``channels`` is 1 (grey) or 3 (RGB)."""
    if channels not in (1, 3):
        raise ValueError(f"channels={channels!r}: use 1 (grey) or 3 (RGB)")
    path = Path(path)
    with open_image(path) as image:
        mode = image.mode
        if mode in ("1", "L", "LA", "La"):
            grey = np.asarray(image.convert("L"), dtype=np.float32) / 255
        elif mode.startswith("I;16"):
            grey = np.asarray(image).astype(np.float32) / 65535
        elif mode in ("I", "F"):
            values = np.asarray(image)
            top = 65535 if mode == "I" else 1
            low, high = (values.min(), values.max()) if values.size else (0, 0)
            if not (np.isfinite(low) and np.isfinite(high) and 0 <= low and high <= top):
                message = f"{mode}-mode image values {low}..{high} lie outside 0..{top} (expected for this mode)"
                raise _error(path, message, "unsupported")
            grey = values.astype(np.float32) / top
        else:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
            return rgb @ _LUMA[:, None] if channels == 1 else rgb
    return np.repeat(grey[:, :, None], channels, axis=2)


def resize_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) float32 → (C, ``size``, ``size``): the shorter side resized to ``size`` (bilinear, with PIL's
    antialiasing when shrinking, in float32 so no bit depth is lost), then the centre square cropped."""
    if size < 1:
        raise ValueError(f"size {size}: must be positive")
    h, w, c = pixels.shape
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        bilinear = Image.Resampling.BILINEAR
        planes = [  # one float32 ("F" mode) image per channel
            np.asarray(Image.fromarray(np.ascontiguousarray(pixels[:, :, k])).resize((nw, nh), bilinear))
            for k in range(c)
        ]
        pixels = np.clip(np.stack(planes, axis=2), 0.0, 1.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    square = pixels[top : top + size, left : left + size]
    return np.ascontiguousarray(square.transpose(2, 0, 1), dtype=np.float32)


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """An image file as the model input ``relprop explain`` uses: float32 (``channels``, ``size``, ``size``) in
    [0, 1] (:func:`read_image`, then :func:`resize_crop`)."""
    return resize_crop(read_image(path, channels), size)
