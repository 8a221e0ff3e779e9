"""The R-LRP study's figures as palette PNG bytes: heatmap grids, perturbation curves, robustness bars and the
hyperparameter-sensitivity grid."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .measure import finite
from .methods import EPS_SERIES, GAMMA_SERIES, MAIN_METHODS, METHOD_BY_KEY


def figure_png(fig: Any, colors: int = 96) -> bytes:
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


def grid_figure(images: Tensor, relevance: dict[str, Tensor], row_titles: list[str], title: str) -> bytes:
    """Images (rows) against every main method's heatmap (columns); large inputs shown 2×2-block summed."""
    from ...viz.heatmap import heatmap_grid

    maps = {}
    for m in MAIN_METHODS:
        r = relevance[m.key].float()
        if r.shape[-1] > 112:  # display only: sum relevance over 2×2 blocks (keeps the PNG small)
            r = F.avg_pool2d(r.sum(1, keepdim=True), 2) * 4
        maps[m.short] = [ri if finite(ri) else torch.zeros_like(ri) for ri in r]
    shown = images if images.shape[-1] <= 112 else F.avg_pool2d(images, 2)
    fig = heatmap_grid(list(shown), maps, row_titles=row_titles, title=title, cell_size=1.05, dpi=80)
    return figure_png(fig)


def method_colours() -> dict[str, Any]:
    """A line colour per main method: R-LRP black, the others from tab10."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    colours: dict[str, Any] = {"rlrp": "black"}
    for i, m in enumerate(m for m in MAIN_METHODS if m.key != "rlrp"):
        colours[m.key] = cmap(i % 10)
    return colours


def curves_figure(results: dict[str, Any]) -> bytes:
    """Mean MoRF (top) and LeRF (bottom) perturbation curves per model (columns) and method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(results)
    fig = Figure(figsize=(2.5 * len(keys), 5.2), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(keys), squeeze=False)
    colours = method_colours()
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
    return figure_png(fig, colors=128)


def robustness_figure(results: dict[str, Any]) -> bytes:
    """Bars of 1 − r per method and model under input noise, weight noise and the bias nudge (log scale)."""
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
    return figure_png(fig, colors=64)


def sensitivity_figure(cases: list[tuple[str, Tensor, dict[str, Tensor]]]) -> bytes:
    """One input per model (rows): R-LRP's map against LRP-ε and LRP-γ maps as the parameter moves."""
    from ...viz.heatmap import heatmap_grid

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
    return figure_png(fig)


__all__ = ["curves_figure", "figure_png", "grid_figure", "method_colours", "robustness_figure", "sensitivity_figure"]
