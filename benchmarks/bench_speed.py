"""Speed and peak memory of relprop against a plain input gradient and zennit, side by side.

For each (model, batch) all methods run in one subprocess with one thread, interleaved round by round
(``--reps`` rounds after a warm-up), so that every method sees the same machine state; the median time
per method is reported with its ratio to the plain input gradient (``torch.autograd.grad(logit, x)``:
forward plus the input-gradient backward) and to zennit's matching composite. Peak memory is measured
separately: each method runs once in a fresh process and the peak resident memory above the level
before the run is reported.

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

COMPOSITES = ["epsilon", "epsilon_plus_flat", "epsilon_gamma_box", "rlrp"]
#: time / plain gradient that each composite should stay within (issue 9), through Explainer and relprop.explain
TARGETS = {"epsilon": 1.15, "epsilon_plus_flat": 1.6, "epsilon_gamma_box": 1.8, "rlrp": 1.2}
FUNCTIONAL_TARGET = 1.05  # relprop.explain / Explainer
METHODS = ["gradient", *(f"ours_{c}" for c in COMPOSITES), *(f"fn_{c}" for c in COMPOSITES),
           "zennit_epsilon", "zennit_epsilon_plus_flat", "zennit_epsilon_gamma_box"]  # fmt: skip


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _build(model_name: str, batch: int, method: str, size: int, device: str = "cpu"):  # noqa: ANN202
    """A model, an input and a zero-argument function running ``method`` once."""
    import copy

    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval().to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    target = 7

    if method == "gradient":

        def run() -> None:
            xi = x.clone().requires_grad_(True)
            out = model(xi)
            torch.autograd.grad(out[:, target].sum(), xi)

        return run
    if method.startswith("ours_"):
        import relprop

        explainer = relprop.Explainer(model, method[len("ours_") :])
        return lambda: explainer(x, target)
    if method.startswith("fn_"):  # the functional entry point, called afresh every time
        import relprop

        name = method[len("fn_") :]
        return lambda: relprop.explain(model, x, target, name)

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
    onehot = torch.zeros(batch, 1000, device=device)
    onehot[:, target] = 1.0
    # zennit attaches hooks to the model it explains: give it its own copy
    attributor = Gradient(model=copy.deepcopy(model), composite=comp)
    attributor.__enter__()
    return lambda: attributor(x, onehot)


def time_worker(
    model_name: str, batch: int, methods: list[str], reps: int, size: int, device: str = "cpu"
) -> dict[str, float]:
    """All methods in one process, interleaved round by round (the order rotated each round); the median
    time per method."""
    import torch

    torch.set_num_threads(1)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    runs = {m: _build(model_name, batch, m, size, device) for m in methods}
    for run in runs.values():
        run()  # warm-up
    times: dict[str, list[float]] = {m: [] for m in methods}
    order = list(runs)
    for rep in range(reps):
        k = rep % len(order)
        for m in order[k:] + order[:k]:
            sync()
            t0 = time.perf_counter()
            runs[m]()
            sync()
            times[m].append(time.perf_counter() - t0)
    return {m: sorted(t)[len(t) // 2] for m, t in times.items()}


def memory_worker(model_name: str, batch: int, method: str, size: int, device: str = "cpu") -> float:
    """Peak resident memory of one run of ``method`` above the level before it, in its own process
    (CPU only: on CUDA the peak of torch.cuda.max_memory_allocated, in MiB)."""
    import torch

    torch.set_num_threads(1)
    run = _build(model_name, batch, method, size, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
        run()
        return torch.cuda.max_memory_allocated() / 2**20 - base
    base = _current_rss_mib()
    run()
    return _rss_mib() - base


def _sub(args: list[str]) -> object:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"worker exited with status {out.returncode}"]
        raise RuntimeError(lines[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--time-worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--memory-worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.time_worker:
        model, batch = args.time_worker
        print(json.dumps(time_worker(model, int(batch), args.methods, args.reps, args.size, args.device)))
        return
    if args.memory_worker:
        model, batch, method = args.memory_worker
        print(json.dumps(memory_worker(model, int(batch), method, args.size, args.device)))
        return

    print(f"# relprop speed benchmark: 1 thread, {args.device}, input {args.size}x{args.size}, median of {args.reps} "
          "interleaved runs")  # fmt: skip
    print("# x grad: time / plain input gradient (forward + input-gradient backward), same process, same rounds")
    print("# ours_*: a reused Explainer; fn_*: relprop.explain(model, x, ...) called afresh; target: issue 9's bound")
    print("# peak MiB: peak resident memory of one run above the level before it, each method in its own process")
    head = f"{'model':<10}{'batch':>6}  {'method':<28}{'time s':>9}{'x grad':>9}{'x zennit':>10}{'peak MiB':>10}"
    print(head + "  target")
    for model in args.models:
        for batch in args.batches:
            common = ["--size", str(args.size), "--reps", str(args.reps), "--device", args.device,
                      "--methods", *args.methods]  # fmt: skip
            times = _sub(["--time-worker", model, str(batch), *common])
            assert isinstance(times, dict)
            grad = times.get("gradient")
            for method in args.methods:
                t = times[method]
                peak = "-" if args.no_memory else f"{_sub(['--memory-worker', model, str(batch), method, *common]):.0f}"
                ratio = f"{t / grad:9.2f}" if grad else f"{'-':>9}"
                z = times.get(method.replace("ours_", "zennit_")) if method.startswith("ours_") else None
                zratio = f"{t / z:10.2f}" if z else f"{'-':>10}"
                verdict = ""
                name = method.split("_", 1)[1] if method.startswith(("ours_", "fn_")) else ""
                if grad and name in TARGETS:
                    verdict = f"<= {TARGETS[name]}: {'PASS' if t / grad <= TARGETS[name] else 'FAIL'}"
                obj = times.get(f"ours_{name}") if method.startswith("fn_") else None
                if obj:
                    ok = t / obj <= FUNCTIONAL_TARGET
                    verdict += f"; fn/object {t / obj:.3f} <= {FUNCTIONAL_TARGET}: {'PASS' if ok else 'FAIL'}"
                print(f"{model:<10}{batch:>6}  {method:<28}{t:9.3f}{ratio}{zratio}{peak:>10}  {verdict}")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
