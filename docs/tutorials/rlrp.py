"""R-LRP (Relative LRP) next to LRP-ε and LRP-0 on the same inputs: the maps, their robustness, deep networks.

1. The pretrained LeNet-5 on real digits: LRP-0, LRP-ε (ε = 1e-6 and 0.25) and R-LRP side by side.
2. Denominators near zero: a copy of LeNet-5 whose hidden biases are nudged (by a fraction of a per cent of
   the pre-activations' spread) so that one neuron per channel sits at z ≈ 0 on the explained digit. Classical
   LRP divides by z; R-LRP does not divide. Correlation of each method's map with its map on the original model.
3. Input noise: relprop.evaluation.stability (mean correlation of heatmaps under noise of 1e-3 · std(x)).
4. Depth: VGG16 with random weights in float32; R-LRP rescales relevance at every step (Explanation.log_scale
   is the log of the factor removed), so nothing overflows or underflows.

Writes to --out: rlrp_maps.png, rlrp_robustness.png (bar chart of 2. and 3.), rlrp_table.txt, rlrp_deep.txt.

Run: python docs/tutorials/rlrp.py --out outputs/tutorials [--quick]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import relprop
from relprop.evaluation import heatmap_correlation, stability
from relprop.models import load_mnist_digits, load_model
from relprop.studies.rlrp.perturb import biased_modules, nudge_biases
from relprop.viz.heatmap import save_grid

if TYPE_CHECKING:
    from matplotlib.axes import Axes

METHODS = {  # column title -> composite
    "LRP-0\n(zero)": "zero",
    "LRP-ε, ε=1e-6\n(epsilon)": "epsilon",
    "LRP-ε, ε=0.25": relprop.Epsilon(0.25),
    "R-LRP\n(rlrp)": "rlrp",
}


def _bar_chart(path: Path, nudge_r: dict[str, torch.Tensor], noise_r: dict[str, torch.Tensor]) -> None:
    """Mean 1 − r per method (log scale), one panel per perturbation; the worst digit as a tick above each bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    axes: list[Axes] = list(fig.subplots(1, 2))
    names = [t.replace("\n", " ") for t in METHODS]
    colours = ["#888888", "#4477aa", "#66ccee", "#ee6677"]
    for ax, (title, rs) in zip(axes, [("biases nudged to z ≈ 0", nudge_r), ("input noise 1e-3·std(x)", noise_r)]):
        gap = [(1 - rs[t].double()).clamp(min=1e-12) for t in METHODS]
        ax.bar(range(len(names)), [float(g.mean()) for g in gap], color=colours)
        worst = [float(g.max()) for g in gap]
        ax.scatter(range(len(names)), worst, marker="_", s=300, color="black", label="worst digit")
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace(" (", "\n(") for n in names], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("1 − r with the unperturbed map", fontsize=8)
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("lower = the heatmap changes less (pretrained LeNet-5, real digits)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, facecolor="white")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/tutorials"), help="folder for the figures")
    parser.add_argument("--quick", action="store_true", help="fewer digits and noise draws, VGG16 at 64 px")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    model = load_model("lenet5").to(args.device)
    per_class = 2 if args.quick else 5
    images, labels = load_mnist_digits(n_per_class=per_class)  # sorted by digit: 0, 0, 1, 1, ...
    x, y = images.to(args.device), labels.to(args.device)
    shown = [c * per_class for c in ([0, 3, 7] if args.quick else [0, 2, 3, 5, 7, 9])]  # rows of the figures

    # --8<-- [start:side_by_side]
    fp = relprop.Explainer(model, "rlrp").forward(x, composites=list(METHODS.values()))
    maps = {title: fp.explain(y, composite=c).relevance for title, c in METHODS.items()}
    # --8<-- [end:side_by_side]
    save_grid(
        args.out / "rlrp_maps.png", list(x[shown].cpu()), {t: list(m[shown].cpu()) for t, m in maps.items()},
        row_titles=[f"digit {int(c)}" for c in y[shown]], cell_size=1.6,
        title="pretrained LeNet-5, the true class explained",
    )  # fmt: skip

    # --8<-- [start:nudged]
    # Per digit: a copy of the model whose hidden biases are shifted so that, in every channel, the pre-activation
    # closest to 0 becomes +1e-6 · std(z) (only where it was already within 0.01 · std(z)): a tiny change of the
    # function, but a denominator z ≈ 0 in every channel for the rules that divide by z.
    nudged_maps: dict[str, list[torch.Tensor]] = {title: [] for title in METHODS}
    for i in range(len(x)):
        nudged = copy.deepcopy(model)
        nudge_biases(nudged, biased_modules(nudged, x[i : i + 1]), x[i : i + 1], delta=1e-6, limit=0.01)
        fp_nudged = relprop.Explainer(nudged, "rlrp").forward(x[i : i + 1], composites=list(METHODS.values()))
        for title, c in METHODS.items():
            nudged_maps[title].append(fp_nudged.explain(y[i : i + 1], composite=c).relevance[0])
    nudge_r = {t: heatmap_correlation(maps[t], torch.stack(nudged_maps[t])) for t in METHODS}  # Pearson r per digit
    # --8<-- [end:nudged]

    # --8<-- [start:stability]
    draws = 3 if args.quick else 8
    noise_r = {}
    for title, c in METHODS.items():
        explainer = relprop.Explainer(model, c)
        noise_r[title] = stability(explainer, x, y, noise=1e-3, n=draws)  # mean Pearson r per digit
    # --8<-- [end:stability]

    lines = [
        "| method | bias nudge: 1 − r, mean (worst digit) | input noise 1e-3·std: 1 − r, mean (worst digit) |",
        "|---|---|---|",
    ]
    for title in METHODS:
        a, b = (1 - nudge_r[title].double()).clamp(min=0), (1 - noise_r[title].double()).clamp(min=0)
        name = title.replace("\n", " ")
        lines.append(f"| {name} | {a.mean():.1e} ({a.max():.1e}) | {b.mean():.1e} ({b.max():.1e}) |")
    lines.append("")
    lines.append(
        f"*Measured by `rlrp.py{' --quick' if args.quick else ''}` on {len(x)} real digits ({args.device}): "
        "1 − Pearson correlation of the channel-summed heatmaps with the unperturbed one (lower is more stable); "
        f"input noise averaged over {draws} draws.*"
    )
    (args.out / "rlrp_table.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _bar_chart(args.out / "rlrp_robustness.png", nudge_r, noise_r)

    # --8<-- [start:deep]
    size = 64 if args.quick else 224
    vgg = load_model("vgg16").to(args.device)  # random weights (nothing is downloaded)
    photo = torch.rand(1, 3, size, size, device=args.device)
    deep = []
    for name in ("zero", "epsilon", "rlrp"):
        e = relprop.Explainer(vgg, name).explain(photo, "predicted")
        finite = bool(torch.isfinite(e.relevance).all())
        scale = "" if e.log_scale is None else f"; factor removed by rescaling: exp({float(e.log_scale[0]):.1f})"
        deep.append(f"{name:8s} finite: {finite}; max |R| = {float(e.relevance.abs().max()):.3g}{scale}")
    # --8<-- [end:deep]
    text = f"VGG16, random weights, float32, one {size}x{size} input in [0, 1]:\n" + "\n".join(deep)
    (args.out / "rlrp_deep.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
