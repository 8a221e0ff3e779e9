"""Speed of relprop's pixel flipping against Quantus 0.6.0's PixelFlipping on the same inputs, side by side.

One thread, the same model, inputs and precomputed relevance (relprop LRP-ε) for both; only the curve is
timed. relprop builds all B × (S+1) perturbed inputs from one sort and evaluates them in batches of 64;
Quantus perturbs step by step in numpy and predicts one batch per step. Both give the same curve (the
maximum difference is printed; Quantus omits the unperturbed point, so its S values are our steps 1..S).

Quantus requires ``features_in_step`` to divide H·W, so the step counts are divisors: 28×28 = 784 pixels
cannot be cut into 20 equal steps; 16 steps of 49 pixels are used instead (and 16 × 256 at 64×64). The
last row flips one pixel per step (784 steps), Quantus's default ``features_in_step=1``.

    .venv/bin/python benchmarks/bench_metrics.py
    .venv/bin/python benchmarks/bench_metrics.py --batch 16 --reps 9 --no-full
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

import relprop
from relprop.evaluation import metrics
from relprop.models import LeNet5


def cnn64() -> nn.Module:
    """A small CNN for 1×64×64 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(64 * 16, 10),
    )  # fmt: skip


def interleaved(fns, reps: int) -> list[tuple[float, object]]:  # noqa: ANN001
    """Median time and last result of each function, run round by round so that all see the same load."""
    times: list[list[float]] = [[] for _ in fns]
    outs: list[object] = [None] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - t)
    return [(statistics.median(t), o) for t, o in zip(times, outs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5, help="repetitions per measurement (median reported)")
    parser.add_argument("--no-full", action="store_true", help="skip the one-pixel-per-step row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import quantus

    rows = [("LeNet-5 1×28×28", LeNet5, 28, 16), ("CNN 1×64×64", cnn64, 64, 16)]
    if not args.no_full:
        rows.append(("LeNet-5 1×28×28, 1 px/step", LeNet5, 28, 784))
    print(f"pixel flipping, batch {args.batch}, 1 thread, median of {args.reps} interleaved rounds (1 for the "
          f"784-step row); torch {torch.__version__}, quantus {quantus.__version__}")  # fmt: skip
    b = args.batch
    header = (f"{'model':<30} {'steps':>6} {'px/step':>8} {'ours@64 s':>10} {f'ours@{b} s':>10} {'quantus s':>10} "
              f"{'q/64':>7} {f'q/{b}':>7} {'max|diff|':>10}")  # fmt: skip
    print("ours@N: relprop with batch_size=N perturbed inputs per forward pass (64 is the default; Quantus runs")
    print(f"one forward of the {b} samples per step); q/N: Quantus time / ours@N (> 1: relprop is faster)")
    print(header)
    print("-" * len(header))
    for name, make, size, steps in rows:
        torch.manual_seed(0)
        model = make().eval()
        x = torch.rand(args.batch, 1, size, size)
        y = model(x).argmax(1)
        relevance = relprop.explain(model, x, y, "epsilon")
        per_step = size * size // steps

        def ours(model=model, x=x, relevance=relevance, y=y, steps=steps, bs=64) -> torch.Tensor:  # noqa: ANN001
            return metrics.pixel_flipping(model, x, relevance, y, steps=steps, batch_size=bs).scores

        def ours_b(bs=args.batch) -> torch.Tensor:  # noqa: ANN001
            return ours(bs=bs)

        x_np, y_np, a_np = x.numpy(), y.numpy(), relevance.numpy()

        def theirs(model=model, x_np=x_np, y_np=y_np, a_np=a_np, per_step=per_step) -> np.ndarray:  # noqa: ANN001
            metric = quantus.PixelFlipping(features_in_step=per_step, perturb_baseline=0.0, disable_warnings=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.asarray(metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np, softmax=False,
                                         device="cpu", batch_size=args.batch))  # fmt: skip

        ours()  # warm-up
        reps = 1 if steps > 100 else args.reps
        (t_ours, s_ours), (t_b, s_b), (t_theirs, s_theirs) = interleaved([ours, ours_b, theirs], reps)
        diff = max(float(np.abs(s[:, 1:].numpy() - s_theirs).max()) for s in (s_ours, s_b))
        print(f"{name:<30} {steps:>6} {per_step:>8} {t_ours:>10.3f} {t_b:>10.3f} {t_theirs:>10.3f} "
              f"{t_theirs / t_ours:>6.1f}x {t_theirs / t_b:>6.1f}x {diff:>10.2e}")  # fmt: skip
    # the 20-step curve the issue asks for (relprop only: Quantus cannot split 784 pixels into 20 equal steps)
    torch.manual_seed(0)
    model = LeNet5().eval()
    x = torch.rand(args.batch, 1, 28, 28)
    r = relprop.explain(model, x, "predicted", "epsilon")
    [(t20, _)] = interleaved([lambda: metrics.pixel_flipping(model, x, r, "predicted", steps=20)], args.reps)
    print(f"relprop alone: LeNet-5, 20 steps, batch {args.batch}: {t20:.3f} s")


if __name__ == "__main__":
    main()
