"""Speed and peak memory of relprop against a plain input gradient and zennit, side by side.

Each (model, batch, method) runs in its own subprocess with one thread: the model is built, the
method runs once to warm up, then ``--reps`` timed runs; the median time and the peak resident
memory above the level before the first run are reported. Ratios are against the plain input
gradient (``torch.autograd.grad(logit, x)``: forward plus the input-gradient backward) measured in
the same invocation.

    .venv/bin/python benchmarks/bench_speed.py                 # VGG16 and ResNet50, 224², batch 1 and 8
    .venv/bin/python benchmarks/bench_speed.py --models vgg16 --batches 1 --reps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

METHODS = ["gradient", "ours_epsilon", "ours_epsilon_plus_flat", "ours_epsilon_gamma_box", "zennit_epsilon",
           "zennit_epsilon_plus_flat", "zennit_epsilon_gamma_box"]  # fmt: skip


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def worker(model_name: str, batch: int, method: str, reps: int, size: int) -> dict[str, float]:
    import torch
    import torchvision

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    x = torch.rand(batch, 3, size, size)
    target = 7

    if method == "gradient":

        def run() -> None:
            xi = x.clone().requires_grad_(True)
            out = model(xi)
            torch.autograd.grad(out[:, target].sum(), xi)

    elif method.startswith("ours_"):
        import relprop

        explainer = relprop.Explainer(model, method[len("ours_") :])

        def run() -> None:
            explainer(x, target)

    else:
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat, LayerMapComposite, layer_map_base
        from zennit.rules import Epsilon
        from zennit.torchvision import ResNetCanonizer, VGGCanonizer
        from zennit.types import Convolution

        canon = [ResNetCanonizer()] if model_name.startswith("resnet") else [VGGCanonizer()]
        name = method[len("zennit_") :]
        if name == "epsilon_plus_flat":
            comp = EpsilonPlusFlat(canonizers=canon)
        elif name == "epsilon_gamma_box":
            comp = EpsilonGammaBox(low=0.0, high=1.0, canonizers=canon)
        else:
            comp = LayerMapComposite(
                layer_map_base() + [(Convolution, Epsilon()), (torch.nn.Linear, Epsilon())], canonizers=canon
            )
        onehot = torch.zeros(batch, 1000)
        onehot[:, target] = 1.0
        attributor = Gradient(model=model, composite=comp)
        attributor.__enter__()

        def run() -> None:
            attributor(x, onehot)

    base = _current_rss_mib()
    run()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"time": times[len(times) // 2], "peak_mib": _rss_mib() - base}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        model, batch, method = args.worker
        print(json.dumps(worker(model, int(batch), method, args.reps, args.size)))
        return

    print(f"# relprop speed benchmark: 1 thread, input {args.size}x{args.size}, median of {args.reps} runs")
    print(f"{'model':<10}{'batch':>6}  {'method':<28}{'time s':>9}{'x grad':>9}{'x zennit':>10}{'peak MiB':>10}")
    results: dict[tuple[str, int, str], dict[str, float]] = {}
    for model in args.models:
        for batch in args.batches:
            for method in args.methods:
                cmd = [sys.executable, __file__, "--worker", model, str(batch), method, "--reps", str(args.reps),
                       "--size", str(args.size)]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{model:<10}{batch:>6}  {method:<28} FAILED: {out.stderr.strip().splitlines()[-1]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[(model, batch, method)] = r
                grad = results.get((model, batch, "gradient"), {}).get("time")
                ratio = f"{r['time'] / grad:9.2f}" if grad else f"{'-':>9}"
                zname = method.replace("ours_", "zennit_")
                z = results.get((model, batch, zname), {}).get("time") if method.startswith("ours_") else None
                zratio = f"{r['time'] / z:10.2f}" if z else f"{'-':>10}"
                print(f"{model:<10}{batch:>6}  {method:<28}{r['time']:9.3f}{ratio}{zratio}{r['peak_mib']:10.0f}")
                sys.stdout.flush()
    # ours against zennit, now that both are measured
    print("\n# ours / zennit (same composite)")
    for model in args.models:
        for batch in args.batches:
            for name in ("epsilon", "epsilon_plus_flat", "epsilon_gamma_box"):
                o, z = results.get((model, batch, f"ours_{name}")), results.get((model, batch, f"zennit_{name}"))
                if o and z:
                    print(f"{model:<10}{batch:>6}  {name:<28}{o['time'] / z['time']:9.2f}")


if __name__ == "__main__":
    main()
