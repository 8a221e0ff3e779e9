"""Speed of relprop on transformers and modern CNNs against a plain input gradient, side by side.

One thread, batch 1, 224², trained-like normalisation statistics. Per model, ``--reps`` rounds after a warm-up;
each round times the plain input gradient (``torch.autograd.grad(logit, x)``: forward plus input-gradient
backward) and each composite through one ``Explainer`` in a freshly shuffled order. Reported: the median wall
time and the median process CPU time per method, their ratios to the gradient, and PASS/FAIL against the target
(issue 10: epsilon_plus_flat and the AttnLRP preset within 1.5x the gradient).

    .venv/bin/python benchmarks/bench_modern_speed.py
    .venv/bin/python benchmarks/bench_modern_speed.py --models vit_b_16 --reps 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

import relprop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_architectures import trained_like  # noqa: E402  (the benchmarks' one trained-like initialisation)

TARGET = 1.5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vit_b_16", "swin_t", "convnext_tiny", "efficientnet_b0"])
    p.add_argument("--composites", nargs="+", default=["epsilon_plus_flat", "attnlrp"])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(
        f"# relprop speed on modern architectures: torch {torch.__version__}, 1 thread, batch 1, "
        f"{args.size}x{args.size}, median of {args.reps} shuffled rounds; target <= {TARGET}x the gradient"
    )
    print(f"# {'model':<18} {'method':<20} {'wall s':>8} {'x grad':>7} {'cpu s':>8} {'x grad':>7}  verdict")
    rng = random.Random(0)
    for name in args.models:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None)
        trained_like(model)
        model.eval()
        x = torch.rand(1, 3, args.size, args.size)
        explainers = {c: relprop.Explainer(model, c) for c in args.composites}

        def gradient(model: nn.Module = model, x: torch.Tensor = x) -> None:
            xg = x.clone().requires_grad_(True)
            out = model(xg)
            torch.autograd.grad(out[0, int(out.argmax())], xg)

        methods = {"gradient": gradient, **{c: (lambda e=e, x=x: e(x)) for c, e in explainers.items()}}
        for f in methods.values():  # warm-up (tracing, caches)
            f()
        wall: dict[str, list[float]] = {k: [] for k in methods}
        cpu: dict[str, list[float]] = {k: [] for k in methods}
        for _ in range(args.reps):
            order = list(methods)
            rng.shuffle(order)
            for k in order:
                t0, c0 = time.perf_counter(), time.process_time()
                methods[k]()
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
        gw, gc = statistics.median(wall["gradient"]), statistics.median(cpu["gradient"])
        for k in methods:
            w, c = statistics.median(wall[k]), statistics.median(cpu[k])
            verdict = "" if k == "gradient" else ("PASS" if c / gc <= TARGET else "FAIL")
            print(f"  {name:<18} {k:<20} {w:8.3f} {w / gw:7.2f} {c:8.3f} {c / gc:7.2f}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
