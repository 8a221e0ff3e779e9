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

__all__ = ["heatmap_grid", "montage", "save_grid", "save_png", "to_heatmap", "to_image"]

ArrayLike = Union[np.ndarray, torch.Tensor]
Normalize = Literal["max", "percentile"]


def _numpy(a: ArrayLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().float().numpy()
    return np.asarray(a)


def _squeeze_batch(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim not in (2, 3):
        raise ValueError(f"{what} must have shape (C, H, W) or (H, W), got {a.shape}")
    return a


def _cmap(cmap: str | Colormap) -> Colormap:
    c = colormaps[cmap] if isinstance(cmap, str) else cmap
    return c.resampled(255) if c.N % 2 == 0 else c  # odd N: 0 maps exactly to the centre colour


def normalize_relevance(relevance: ArrayLike, normalize: Normalize = "max", percentile: float = 99.5) -> np.ndarray:
    """Channel-summed relevance (H, W) scaled into [-1, 1] (all zeros if the relevance is all zero)."""
    r = _squeeze_batch(_numpy(relevance).astype(np.float64), "relevance")
    if r.ndim == 3:
        r = r.sum(0)
    if not np.isfinite(r).all():
        raise ValueError("relevance contains NaN or Inf values")
    a = np.abs(r)
    if normalize == "max":
        scale = a.max(initial=0.0)
    elif normalize == "percentile":
        scale = float(np.percentile(a, percentile)) if a.size else 0.0
        if scale <= 0.0:  # sparse relevance: the percentile can be 0 while some pixels are not
            scale = a.max(initial=0.0)
    else:
        raise ValueError(f"normalize={normalize!r}: use 'max' or 'percentile'")
    if scale <= 0.0:
        return np.zeros_like(r)
    return np.clip(r / scale, -1.0, 1.0)


def to_image(image: ArrayLike) -> np.ndarray:
    """An input image (C, H, W) or (H, W) with values in [0, 1] as uint8 RGB (H, W, 3)."""
    im = _squeeze_batch(_numpy(image).astype(np.float64), "image")
    if im.ndim == 3:
        if im.shape[0] == 1:
            im = im[0]
        elif im.shape[0] == 3:
            im = im.transpose(1, 2, 0)
        else:
            raise ValueError(f"image must have 1 or 3 channels, got shape {im.shape}")
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
        relevance: signed relevance; channels are summed.
        cmap: a diverging matplotlib colour map (name or object), centred at zero.
        normalize: ``"max"`` divides by max |R|, ``"percentile"`` by the ``percentile``-th percentile of |R|
            (values beyond are clipped).
        overlay: optional input image (C, H, W) or (H, W) in [0, 1]; its greyscale is blended under the
            heatmap: ``alpha * heatmap + (1 - alpha) * grey``.
        alpha: weight of the heatmap in the overlay.
    """
    r = normalize_relevance(relevance, normalize, percentile)
    rgb = _cmap(cmap)((r + 1.0) / 2.0, bytes=True)[..., :3]
    if overlay is None:
        return np.ascontiguousarray(rgb)
    img = to_image(overlay)
    if img.shape[:2] != rgb.shape[:2]:
        raise ValueError(f"overlay is {img.shape[1]}×{img.shape[0]} but the relevance is {r.shape[1]}×{r.shape[0]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: must be in [0, 1]")
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
        raise ValueError("montage of no images")
    h, w = tiles[0].shape[:2]
    if any(t.shape != tiles[0].shape for t in tiles):
        raise ValueError("montage tiles must all have the same shape")
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
        raise ValueError("heatmap_grid needs at least one image")
    for name, maps in heatmaps.items():
        if len(maps) != n:
            raise ValueError(f"method {name!r} has {len(maps)} heatmaps for {n} images")
    if row_titles is not None and len(row_titles) != n:
        raise ValueError(f"{len(row_titles)} row titles for {n} images")
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
            raise ValueError(f"save_png needs uint8 or float in [0, 1], got {a.dtype}")
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"save_png needs shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    image = Image.fromarray(np.ascontiguousarray(a))
    return atomic_write(path, lambda f: image.save(f, format="PNG"))
