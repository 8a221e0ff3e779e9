"""Evaluate heatmaps: relprop.evaluation's metrics, and Quantus metrics through relprop's adapter.

The pretrained LeNet-5 on real MNIST digits, four methods (epsilon_plus_flat, epsilon_gamma_box, rlrp,
gradient) and a random heatmap as the floor every method should beat.

Writes to --out:
  evaluate_curves.png          pixel flipping: the target logit as the most (MoRF) / least (LeRF) relevant
                               2×2 patches are set to 0
  evaluate_randomisation.png   cascading parameter randomisation: similarity to the original map per layer
                               reset, and the maps on the original vs the fully randomised model
  evaluate_table.txt           relprop metrics per method (Markdown table)
  evaluate_quantus.txt         Quantus metrics per method, with relprop as the explain_func (Markdown table)

Run: python docs/tutorials/evaluate.py --out outputs/tutorials [--quick]
"""

from __future__ import annotations

import argparse
import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import relprop
from relprop.evaluation import (
    aopc,
    background_share,
    pixel_flipping,
    quantus_explain_func,
    randomisation_check,
    stability,
)
from relprop.models import load_mnist_digits, load_model
from relprop.viz.heatmap import save_grid

METHODS = ["epsilon_plus_flat", "epsilon_gamma_box", "rlrp", "gradient"]
COLOURS = {"epsilon_plus_flat": "#4477aa", "epsilon_gamma_box": "#228833", "rlrp": "#ee6677",
           "gradient": "#ccbb44", "random": "#999999"}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/tutorials"), help="folder for the figures")
    parser.add_argument("--quick", action="store_true", help="20 digits and coarser curves instead of 100")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = load_model("lenet5").to(args.device)
    images, labels = load_mnist_digits(n_per_class=2 if args.quick else 10)
    x, y = images.to(args.device), labels.to(args.device)
    steps = 14 if args.quick else 49

    # --8<-- [start:relevance]
    relevance = {name: relprop.Explainer(model, name)(x, y) for name in METHODS}
    relevance["random"] = torch.rand_like(x)  # a heatmap that knows nothing: the floor to beat
    # --8<-- [end:relevance]

    # --8<-- [start:faithfulness]
    curves = {}
    for name, r in relevance.items():
        morf = pixel_flipping(model, x, r, y, order="morf", steps=steps, patch=2, baseline=0.0)
        lerf = pixel_flipping(model, x, r, y, order="lerf", steps=steps, patch=2, baseline=0.0)
        curves[name] = (morf, lerf)  # curve.scores: (B, steps + 1) target logit; aopc(curve): (B,)
    # --8<-- [end:faithfulness]
    _curves_figure(args.out / "evaluate_curves.png", curves)

    # --8<-- [start:other_metrics]
    # A foreground mask for the background share: the digit's strokes, dilated by 2 pixels.
    mask = F.max_pool2d((x > 0.2).float(), kernel_size=5, stride=1, padding=2)
    rows = {}
    for name in METHODS:
        explainer = relprop.Explainer(model, name)
        e = explainer.explain(x, y)
        rows[name] = {
            "MoRF AOPC ↑": aopc(curves[name][0]).mean(),
            "LeRF AOPC ↓": aopc(curves[name][1]).mean(),
            "stability ↑": stability(explainer, x, y, noise=0.05, n=2 if args.quick else 8).mean(),
            "background share": background_share(e.relevance, mask).nanmean(),
            "conservation error": e.conservation_error.nanmean(),
        }
    randomised = {name: randomisation_check(model, x, y, name) for name in METHODS}
    # --8<-- [end:other_metrics]
    rows["random"] = {"MoRF AOPC ↑": aopc(curves["random"][0]).mean(), "LeRF AOPC ↓": aopc(curves["random"][1]).mean()}
    for name in METHODS:
        rows[name]["randomised, all layers ↓"] = randomised[name][-1][1].mean()
    columns = list(rows["epsilon_plus_flat"])
    table = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in rows.items():
        cells = [f"{float(values[c]):.3g}" if c in values else "–" for c in columns]
        table.append(f"| `{name}` | " + " | ".join(cells) + " |")
    table += ["", (
        f"*Measured by `evaluate.py{' --quick' if args.quick else ''}` on {len(x)} real digits ({args.device}). "
        "AOPC: mean drop of the target logit over the perturbation curve; stability: mean Pearson r of the maps "
        "under input noise of 0.05·std(x); background share: Σ|R| outside the dilated strokes / Σ|R|; "
        "randomised: Spearman r of |map| with the original after every layer is re-initialised.*"
    )]  # fmt: skip
    (args.out / "evaluate_table.txt").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    _randomisation_figure(args.out / "evaluate_randomisation.png", model, x[:1], y[:1], randomised)

    try:
        import quantus
    except ImportError:
        text = "Quantus is not installed (pip install quantus==0.6.0): its metrics were not run."
        (args.out / "evaluate_quantus.txt").write_text(text + "\n")
        print(text)
        return
    quantus_table(args, quantus, model, x, y)


def quantus_table(args: argparse.Namespace, quantus: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Four Quantus metrics per method, each computing its heatmaps through relprop's explain_func."""
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
    # --8<-- [start:quantus]
    metrics: dict[str, Callable[[], Any]] = {
        "FaithfulnessCorrelation ↑": lambda: quantus.FaithfulnessCorrelation(
            nr_runs=20 if args.quick else 100, subset_size=28, perturb_baseline="black", return_aggregate=False,
            disable_warnings=True),
        "MaxSensitivity ↓": lambda: quantus.MaxSensitivity(nr_samples=5 if args.quick else 20, disable_warnings=True),
        "Sparseness ↑": lambda: quantus.Sparseness(disable_warnings=True),
        "RandomLogit ↓": lambda: quantus.RandomLogit(num_classes=10, seed=0, disable_warnings=True),
    }  # fmt: skip
    scores: dict[str, dict[str, float]] = {}
    for name in METHODS:
        explain_func = quantus_explain_func(name)  # explain_func(model, inputs, targets) -> relevance (numpy)
        scores[name] = {}
        for metric_name, make in metrics.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = make()(model=model, x_batch=x_np, y_batch=y_np, explain_func=explain_func,
                                device=args.device)  # fmt: skip
            scores[name][metric_name] = float(np.nanmean(np.asarray(result, dtype=np.float64)))
    # --8<-- [end:quantus]
    table = ["| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in scores.items():
        table.append(f"| `{name}` | " + " | ".join(f"{v:.3g}" for v in values.values()) + " |")
    table += ["", (
        f"*Quantus {quantus.__version__} metrics, measured by `evaluate.py{' --quick' if args.quick else ''}` on "
        f"{len(x)} digits, heatmaps computed by relprop (`quantus_explain_func`). ↑: higher is better, ↓: lower.*"
    )]  # fmt: skip
    (args.out / "evaluate_quantus.txt").write_text("\n".join(table) + "\n")
    print("\n".join(table))


def _curves_figure(path: Path, curves: dict[str, tuple[Any, Any]]) -> None:
    fig = Figure(figsize=(9, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, k, title in ((axes[0], 0, "MoRF: most relevant first (faster drop = better)"),
                         (axes[1], 1, "LeRF: least relevant first (slower drop = better)")):  # fmt: skip
        for name, pair in curves.items():
            c = pair[k]
            ax.plot(c.fractions.cpu(), c.scores.double().mean(0).cpu(), label=name, color=COLOURS[name],
                    linestyle="--" if name == "random" else "-")  # fmt: skip
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fraction of 2×2 patches set to 0", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("target logit (mean over digits)", fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, facecolor="white")
    print(f"wrote {path}")


def _randomisation_figure(path: Path, model: torch.nn.Module, x1: torch.Tensor, y1: torch.Tensor,
                          randomised: dict[str, list[tuple[str, torch.Tensor]]]) -> None:  # fmt: skip
    """Left: similarity per layer reset (cascading from the top); right: maps before / after resetting all."""
    fig = Figure(figsize=(4.2, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, steps in randomised.items():
        layers = [layer for layer, _ in steps]
        ax.plot(range(1, len(steps) + 1), [float(s.mean()) for _, s in steps], marker="o", label=name,
                color=COLOURS[name])  # fmt: skip
    ax.set_xticks(range(1, len(layers) + 1))
    ax.set_xticklabels([f"+{layer}" for layer in layers], fontsize=8)
    ax.set_xlabel("layers re-initialised, from the top", fontsize=8)
    ax.set_ylabel("Spearman r of |map| with the original", fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    plot = path.with_name(path.stem + "_curve.png")
    fig.savefig(plot, facecolor="white")
    # maps on the original model and on a copy with every weighted layer re-initialised
    reset = copy.deepcopy(model)
    torch.manual_seed(0)
    for m in reset.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.reset_parameters()
    maps = {name: [relprop.explain(m, x1, y1, name)[0].cpu() for m in (model, reset)] for name in randomised}
    grid = path.with_name(path.stem + "_maps.png")
    save_grid(grid, [x1[0].cpu()] * 2, maps, row_titles=["trained", "all layers reset"], cell_size=1.5,
              title="the same digit, same class explained")  # fmt: skip
    # side by side in one PNG
    from PIL import Image

    a, b = Image.open(plot).convert("RGB"), Image.open(grid).convert("RGB")
    out = Image.new("RGB", (a.width + b.width, max(a.height, b.height)), "white")
    out.paste(a, (0, (out.height - a.height) // 2))
    out.paste(b, (a.width, (out.height - b.height) // 2))
    out.save(path)
    plot.unlink()
    grid.unlink()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
