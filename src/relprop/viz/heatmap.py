"""Rendering relevance as images: diverging colour maps centred at zero, overlays, grids and PNG files.

Relevance R is signed. :func:`to_heatmap` sums it over channels, divides it by a per-image scale
(``"max"``: max |R|; ``"percentile"``: the 99.5th percentile of |R|, so a few extreme pixels do not wash
out the rest), clips to [-1, 1] and maps -1 → the colour map's low end (blue), 0 → its centre (white for
``"bwr"``), +1 → its high end (red). Colour maps are resampled to an odd number of colours so that zero
falls exactly on the centre colour.

Figures are built with :class:`matplotlib.figure.Figure` on the Agg canvas, never through ``pyplot``, so
nothing accumulates in pyplot's global figure list. Files are written atomically (:func:`save_png`).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from PIL import Image

from .._io import atomic_write
from ..errors import InputError

__all__ = ["heatmap_grid", "montage", "save_grid", "save_png", "to_heatmap", "to_image"]

ArrayLike = Union[np.ndarray, torch.Tensor]
Normalize = Literal["max", "percentile"]


def _numpy(a: ArrayLike, what: str = "array") -> np.ndarray:
    if isinstance(a, torch.Tensor):
        t = a.detach().cpu()
        # integer pixels keep their dtype (to_image scales them); anything else becomes float32
        a = t.numpy() if t.dtype in (torch.uint8, torch.int16, torch.int32, torch.bool) else t.float().numpy()
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{what} must be a numpy array or a torch.Tensor, not {type(a).__name__}") from exc
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise InputError(f"{what} must be a numeric array, got dtype {a.dtype}")
    if np.iscomplexobj(a):
        raise InputError(f"{what} has the complex dtype {a.dtype}; pass its real part or magnitude")
    return a


def _squeeze_batch(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim not in (2, 3):
        raise InputError(
            f"{what} must have shape (C, H, W), (H, W) or (H, W, 3), got {a.shape}; pass one image at a time"
        )
    return a


def _channels_first(a: np.ndarray) -> np.ndarray:
    """A 3-D array as (C, H, W): channel-last (H, W, 1 or 3) when the first axis cannot be channels (not 1 or 3)
    and the last can; channel-first otherwise (the documented layout, which wins when both could be)."""
    if a.ndim == 3 and a.shape[0] not in (1, 3) and a.shape[2] in (1, 3):
        return a.transpose(2, 0, 1)
    return a


def _cmap(cmap: str | Colormap) -> Colormap:
    c = colormaps[cmap] if isinstance(cmap, str) else cmap
    return c.resampled(255) if c.N % 2 == 0 else c  # odd N: 0 maps exactly to the centre colour


def normalize_relevance(relevance: ArrayLike, normalize: Normalize = "max", percentile: float = 99.5) -> np.ndarray:
    """Channel-summed relevance (H, W) scaled into [-1, 1] (all zeros if the relevance is all zero).

    ``relevance`` is (C, H, W), (H, W), a batch of one (1, C, H, W), or channel-last RGB (H, W, 3) (when the
    first axis is not 1 or 3); channels are summed."""
    r = _channels_first(_squeeze_batch(_numpy(relevance, "relevance").astype(np.float64), "relevance"))
    if r.ndim == 3:
        r = r.sum(0)
    if not np.isfinite(r).all():
        raise InputError("relevance contains NaN or Inf values; check the model and its input for non-finite values")
    a = np.abs(r)
    if normalize == "max":
        scale = a.max(initial=0.0)
    elif normalize == "percentile":
        scale = float(np.percentile(a, percentile)) if a.size else 0.0
        if scale <= 0.0:  # sparse relevance: the percentile can be 0 while some pixels are not
            scale = a.max(initial=0.0)
    else:
        raise InputError(f"normalize={normalize!r}: use 'max' or 'percentile'")
    if scale <= 0.0:
        return np.zeros_like(r)
    return np.clip(r / scale, -1.0, 1.0)


def _unit_range(im: np.ndarray) -> np.ndarray:
    """Pixels as float64 in [0, 1]: uint8 / 255, uint16 / 65535, bool as 0 / 1, floats as they are."""
    if im.dtype == bool:
        return im.astype(np.float64)
    if im.dtype == np.uint8:
        return im.astype(np.float64) / 255.0
    if im.dtype == np.uint16:
        return im.astype(np.float64) / 65535.0
    if np.issubdtype(im.dtype, np.integer):
        raise InputError(
            f"image has the integer dtype {im.dtype}; pass uint8 (0..255), uint16 (0..65535) or floats in [0, 1]"
        )
    return im.astype(np.float64)


def to_image(image: ArrayLike) -> np.ndarray:
    """An input image as uint8 RGB (H, W, 3).

    ``image`` is (C, H, W) or (H, W) (or channel-last (H, W, 1 or 3) when the first axis is not 1 or 3) with
    values in [0, 1] for floats; uint8 images are read as 0..255 and uint16 as 0..65535 (divided by 255 or
    65535 before any blending, never clipped as if they were floats)."""
    im = _channels_first(_squeeze_batch(_numpy(image, "image"), "image"))
    im = _unit_range(im)
    if im.ndim == 3:
        if im.shape[0] == 1:
            im = im[0]
        elif im.shape[0] == 3:
            im = im.transpose(1, 2, 0)
        else:
            raise InputError(f"image must have 1 or 3 channels, got shape {im.shape}")
    if im.ndim == 2:
        im = np.repeat(im[:, :, None], 3, axis=2)
    return (np.clip(im, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_heatmap(
    relevance: ArrayLike,
    *,
    cmap: str | Colormap = "bwr",
    normalize: Normalize = "max",
    percentile: float = 99.5,
    overlay: ArrayLike | None = None,
    alpha: float = 0.6,
) -> np.ndarray:
    """Relevance (C, H, W) or (H, W) as a uint8 RGB image (H, W, 3).

    Args:
        relevance: signed relevance (C, H, W), (H, W) or channel-last (H, W, 3) (read as such when the first
            axis is not 1 or 3); channels are summed.
        cmap: a diverging matplotlib colour map (name or object), centred at zero.
        normalize: ``"max"`` divides by max |R|, ``"percentile"`` by the ``percentile``-th percentile of |R|
            (values beyond are clipped).
        overlay: optional input image (C, H, W), (H, W) or (H, W, 3): floats in [0, 1], or uint8 / uint16
            pixels (scaled to [0, 1] first, see :func:`to_image`); its greyscale is blended under the heatmap:
            ``alpha * heatmap + (1 - alpha) * grey``.
        alpha: weight of the heatmap in the overlay.
    """
    r = normalize_relevance(relevance, normalize, percentile)
    rgb = _cmap(cmap)((r + 1.0) / 2.0, bytes=True)[..., :3]
    if overlay is None:
        return np.ascontiguousarray(rgb)
    img = to_image(overlay)
    if img.shape[:2] != rgb.shape[:2]:
        raise InputError(
            f"overlay is {img.shape[1]}×{img.shape[0]} but the relevance is {r.shape[1]}×{r.shape[0]} (W×H): "
            "pass the image the relevance explains"
        )
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha={alpha}: must be in [0, 1]")
    grey = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    out = alpha * rgb.astype(np.float64) + (1.0 - alpha) * grey[:, :, None]
    return (out + 0.5).clip(0, 255).astype(np.uint8)


def montage(
    tiles: Sequence[np.ndarray], ncols: int = 10, pad: int = 2, scale: int = 1, background: int = 160
) -> np.ndarray:
    """Tile equally sized uint8 RGB images (H, W, 3) into one image, row by row, ``pad`` pixels apart.

    ``scale`` enlarges each tile by pixel repetition; ``background`` is the grey level between tiles.
    """
    if not tiles:
        raise InputError("montage of no images")
    h, w = tiles[0].shape[:2]
    if any(t.shape != tiles[0].shape for t in tiles):
        raise InputError("montage tiles must all have the same shape")
    ncols = max(1, min(ncols, len(tiles)))
    nrows = math.ceil(len(tiles) / ncols)
    hs, ws = h * scale, w * scale
    out = np.full((nrows * hs + (nrows + 1) * pad, ncols * ws + (ncols + 1) * pad, 3), background, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        y, x = pad + r * (hs + pad), pad + c * (ws + pad)
        out[y : y + hs, x : x + ws] = np.kron(t, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else t
    return out


def heatmap_grid(
    images: Sequence[ArrayLike],
    heatmaps: Mapping[str, Sequence[ArrayLike]],
    *,
    row_titles: Sequence[str] | None = None,
    input_title: str = "input",
    cmap: str | Colormap = "bwr",
    normalize: Normalize = "max",
    overlay: bool = False,
    cell_size: float = 1.6,
    dpi: int = 100,
    title: str | None = None,
) -> Figure:
    """A figure with one row per image: the input, then one heatmap per method (columns titled by method).

    Args:
        images: inputs (C, H, W) or (H, W) in [0, 1].
        heatmaps: method name → one relevance per image (same order as ``images``).
        row_titles: optional label per row (e.g. "label 3, predicted 3"), shown left of the input.
        overlay: blend each heatmap over its input.
        cell_size: width and height of one cell in inches.

    The figure is not registered with pyplot; save it with ``fig.savefig`` or :func:`save_grid`.
    """
    n = len(images)
    if n == 0:
        raise InputError("heatmap_grid needs at least one image")
    for name, maps in heatmaps.items():
        if len(maps) != n:
            raise InputError(f"method {name!r} has {len(maps)} heatmaps for {n} images")
    if row_titles is not None and len(row_titles) != n:
        raise InputError(f"{len(row_titles)} row titles for {n} images")
    ncols = 1 + len(heatmaps)
    head = 0.35 if title else 0.0
    fig = Figure(figsize=(cell_size * ncols, cell_size * n + 0.3 + head), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.subplots(n, ncols, squeeze=False)
    top = 1.0 - (0.3 + head) / (cell_size * n + 0.3 + head)
    left = 0.04 if row_titles is not None else 0.0
    fig.subplots_adjust(left=left, right=1.0, bottom=0.0, top=top, wspace=0.04, hspace=0.08 if row_titles else 0.04)
    for i, image in enumerate(images):
        axes = grid[i]
        axes[0].imshow(to_image(image), interpolation="nearest")
        if row_titles is not None:
            axes[0].set_ylabel(row_titles[i], fontsize=9)
        for j, maps in enumerate(heatmaps.values(), start=1):
            hm = to_heatmap(maps[i], cmap=cmap, normalize=normalize, overlay=image if overlay else None)
            axes[j].imshow(hm, interpolation="nearest")
    for ax in grid.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for j, name in enumerate([input_title, *heatmaps], start=0):
        grid[0, j].set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 - 0.05 / (cell_size * n + 0.3 + head))
    return fig


def save_grid(
    path: str | os.PathLike[str],
    images: Sequence[ArrayLike],
    heatmaps: Mapping[str, Sequence[ArrayLike]],
    *,
    row_titles: Sequence[str] | None = None,
    input_title: str = "input",
    cmap: str | Colormap = "bwr",
    normalize: Normalize = "max",
    overlay: bool = False,
    cell_size: float = 1.6,
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Render :func:`heatmap_grid` (same arguments) and write it atomically as a PNG; returns the path."""
    fig = heatmap_grid(
        images,
        heatmaps,
        row_titles=row_titles,
        input_title=input_title,
        cmap=cmap,
        normalize=normalize,
        overlay=overlay,
        cell_size=cell_size,
        dpi=dpi,
        title=title,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white")
    fig.clear()
    data = buf.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def save_png(array: ArrayLike, path: str | os.PathLike[str]) -> Path:
    """Write an image array atomically as a PNG; returns the path.

    ``array`` is (H, W, 3) or (H, W): uint8, or float in [0, 1]. Parent folders are created. The image is
    written to a temporary file in the target's folder and moved over the target with :func:`os.replace`,
    so the target is never half-written: it either keeps its old content or has the complete new one.
    """
    a = _numpy(array)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"save_png needs uint8 or float in [0, 1], got {a.dtype}")
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise InputError(f"save_png needs shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    image = Image.fromarray(np.ascontiguousarray(a))
    return atomic_write(path, lambda f: image.save(f, format="PNG"))
