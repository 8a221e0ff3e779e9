"""ISNet training step time against the number of classes C (the Faster ISNet claim, measured).

A fixed small CNN backbone (``--depth`` blocks of Conv3x3+BatchNorm+ReLU with 2x2 max-pooling between
them, global average pooling, ``width * 2**(depth-1)`` features) and a linear head with C outputs, in
train mode, one thread; or (``--models resnet18 densenet121``) torchvision's ResNet-18 / DenseNet-121
(``weights=None``, 3 input channels, the same backbone weights for every C: only the head differs). Per model,
C and method one training step is timed:

* ``plain``: forward + cross-entropy + backward + SGD step;
* ISNet (``selective``, ``stochastic``, ``dual``, ``original``, ``grad_input``): ``ISNetMaps(model, variant)``
  (one forward and the K relevance maps, differentiable) + ``isnet_loss(logits, y, maps, mask)`` + backward
  (the double backpropagation) + ``clip_grad_norm_(..., 1)`` + SGD step. The mask is a central box.

Every repetition is a round over all (C, method) pairs, in an order shuffled afresh each round (after one
warm-up step per pair), so that slow drifts of the machine and the after-effects of a large step affect all
alike; the median and the range over repetitions are reported, with the median and the minimum process CPU
time, which on a shared machine are less affected by other processes than the wall time. ``original`` needs C
relevance passes per step: it gets as many repetitions as fit in ``--original-budget`` seconds (at least one),
no warm-up above C = 100, and can be capped with ``--max-original-classes``. At the end, a summary per model
puts each method's step at the largest C beside its step at the smallest C, and beside the plain step and the
original variant at the smallest C, as ratios of the median process CPU time (``--summary-on``).

    .venv/bin/python benchmarks/bench_isnet_time.py                      # C = 2, 10, 100, 1000, batch 8
    .venv/bin/python benchmarks/bench_isnet_time.py --batch 32 --max-original-classes 100
    .venv/bin/python benchmarks/bench_isnet_time.py --memory --breakdown # + peak memory, time per phase
    .venv/bin/python benchmarks/bench_isnet_time.py --quick              # smoke run, a few seconds
    .venv/bin/python benchmarks/bench_isnet_time.py --models resnet18 densenet121 --classes 2 1000 \
        --batch 4 --size 64 --max-original-classes 2 --reps 5               # torchvision backbones

Peak memory (``--memory``) is the peak resident set size of one step above the level just before it, each
(C, method) in a fresh process (tracemalloc does not see torch's allocations, and within one process freed
memory is reused, so an in-process number would be wrong); it needs a writable /proc/self/clear_refs.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from relprop.isnet import isnet_loss
from relprop.isnet.variants import ISNetMaps, maps_per_image

METHODS = ("plain", "selective", "stochastic", "dual", "original", "grad_input")
MODELS = ("cnn", "resnet18", "densenet121")
#: the head of each torchvision model (the only part that depends on C)
_HEADS = {"resnet18": "fc", "densenet121": "classifier"}
ONE_MAP = ("selective", "stochastic")
PHASES = ("forward+maps", "loss", "backward", "clip+sgd")
_NO_WARMUP_ORIGINAL_ABOVE = 100  # original with more classes: no warm-up step (it costs as much as a rep)


@dataclass
class Config:
    classes: list[int] = field(default_factory=lambda: [2, 10, 100, 1000])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    batch: int = 8
    channels: int = 1
    size: int = 40
    width: int = 16
    depth: int = 4
    reps: int = 7
    min_time: float = 0.2  # seconds: each rep times enough consecutive steps to last at least this long
    max_steps: int = 20  # ... but at most this many
    original_budget: float = 25.0  # seconds of timed original steps per C
    max_original_classes: int | None = None
    threads: int = 1
    lr: float = 1e-3
    seed: int = 0
    memory: bool = False
    breakdown: bool = False
    quick: bool = False
    model: str = "cnn"

    @property
    def features(self) -> int:
        return self.width * 2 ** (self.depth - 1)


def make_model(num_classes: int, cfg: Config) -> nn.Module:
    """The backbone (identical for every C: seeded before the head) followed by Linear(features, C)."""
    if cfg.model != "cnn":
        return _torchvision_model(num_classes, cfg)
    torch.manual_seed(cfg.seed)
    layers: list[nn.Module] = []
    c = cfg.channels
    for i in range(cfg.depth):
        out = cfg.width * 2**i
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        if i < cfg.depth - 1:
            layers.append(nn.MaxPool2d(2))
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    torch.manual_seed(cfg.seed + 1)
    layers.append(nn.Linear(c, num_classes))
    return nn.Sequential(*layers).train()


_BACKBONES: dict[tuple[str, int], dict[str, torch.Tensor]] = {}


def _torchvision_model(num_classes: int, cfg: Config) -> nn.Module:
    """torchvision's model (weights=None) with C outputs; every tensor but the head's is the C = 2 model's."""
    import torchvision

    build = getattr(torchvision.models, cfg.model)
    key = (cfg.model, cfg.seed)
    if key not in _BACKBONES:
        torch.manual_seed(cfg.seed)
        _BACKBONES[key] = {k: v for k, v in build(weights=None, num_classes=2).state_dict().items()
                           if not k.startswith(_HEADS[cfg.model] + ".")}  # fmt: skip
    torch.manual_seed(cfg.seed + 1)
    model = build(weights=None, num_classes=num_classes)
    missing, unexpected = model.load_state_dict(_BACKBONES[key], strict=False)
    assert not unexpected and all(k.startswith(_HEADS[cfg.model] + ".") for k in missing), (missing, unexpected)
    return model.train()


def describe_model(cfg: Config) -> str:
    if cfg.model == "cnn":
        return (
            f"{cfg.depth} x (Conv3x3 + BatchNorm + ReLU), max-pool 2x2 between, global average pool -> "
            f"{cfg.features} features -> Linear({cfg.features}, C)"
        )
    return f"torchvision {cfg.model}(weights=None, num_classes=C), the same backbone weights for every C"


def central_box_mask(batch: int, size: int) -> torch.Tensor:
    """Foreground = the central box of half the side, (B, 1, size, size)."""
    mask = torch.zeros(batch, 1, size, size)
    lo, hi = size // 4, size - size // 4
    mask[:, :, lo:hi, lo:hi] = 1.0
    return mask


class TrainStep:
    """One training step of ``method`` on a fixed batch; ``step(phases)`` accumulates CPU time per phase."""

    def __init__(self, method: str, num_classes: int, cfg: Config) -> None:
        g = torch.Generator().manual_seed(cfg.seed + 2)
        self.x = torch.rand(cfg.batch, cfg.channels, cfg.size, cfg.size, generator=g)
        self.y = torch.randint(0, num_classes, (cfg.batch,), generator=g)
        self.mask = central_box_mask(cfg.batch, cfg.size)
        self.method = method
        self.model = make_model(num_classes, cfg)
        self.params = list(self.model.parameters())
        self.opt = torch.optim.SGD(self.params, lr=cfg.lr, momentum=0.9)
        self.maps = None if method == "plain" else ISNetMaps(self.model, method)
        self.gen = torch.Generator().manual_seed(cfg.seed + 3)  # the stochastic variant's class draws
        #: steps whose loss was not finite (timed all the same: the step's work does not depend on the values)
        self.nonfinite = 0

    def step(self, phases: dict[str, float] | None = None) -> float:
        t0 = time.process_time()
        self.opt.zero_grad(set_to_none=True)
        if self.maps is None:
            logits = self.model(self.x)
            t1 = time.process_time()
            loss = F.cross_entropy(logits, self.y)
        else:
            logits, maps = self.maps(self.x, self.y, generator=self.gen)
            t1 = time.process_time()
            loss = isnet_loss(logits, self.y, maps, self.mask)[0]
        t2 = time.process_time()
        loss.backward()
        t3 = time.process_time()
        if self.maps is not None:
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        t4 = time.process_time()
        if phases is not None:
            for name, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[name] = phases.get(name, 0.0) + dt
        value = loss.item()
        if not math.isfinite(value):
            self.nonfinite += 1
        return value


def _freeze() -> None:
    """Move the objects alive now (torch, traced graphs, models) out of the collector's reach, so that the
    collection before every timed rep only scans what the steps left behind (milliseconds, not 0.3 s)."""
    gc.collect()
    gc.freeze()


def _timed(run: TrainStep, steps: int) -> tuple[float, float]:
    """Wall and process CPU seconds per step, over ``steps`` consecutive steps, garbage collection off."""
    gc.collect()
    gc.disable()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            run.step()
        return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps
    finally:
        gc.enable()


def measure(cfg: Config, log: Any = None) -> dict[tuple[int, str], dict[str, Any]]:
    """Per (C, method): the seconds per step of every rep, steps per rep, and whether it was warmed up."""
    pairs = [
        (c, m)
        for c in cfg.classes
        for m in cfg.methods
        if not (m == "original" and cfg.max_original_classes is not None and c > cfg.max_original_classes)
    ]
    runs = {p: TrainStep(p[1], p[0], cfg) for p in pairs}
    _freeze()
    try:
        info = _measure(cfg, runs, log)
    finally:
        gc.unfreeze()
    for p, run in runs.items():
        info[p]["nonfinite"] = run.nonfinite
    return info


def _measure(cfg: Config, runs: dict[tuple[int, str], TrainStep], log: Any) -> dict[tuple[int, str], dict[str, Any]]:
    pairs = list(runs)
    info: dict[tuple[int, str], dict[str, Any]] = {
        p: {"times": [], "cpu": [], "steps": 1, "warm": False} for p in pairs
    }
    allowed = {p: cfg.reps for p in pairs}
    for p in pairs:  # warm-up; its time sets how many steps one rep times
        if p[1] == "original" and p[0] > _NO_WARMUP_ORIGINAL_ABOVE:
            continue
        t, _ = _timed(runs[p], 1)
        info[p]["warm"] = True
        info[p]["steps"] = max(1, min(cfg.max_steps, math.ceil(cfg.min_time / max(t, 1e-9))))
    order = list(pairs)
    rng = random.Random(cfg.seed)
    for rep in range(cfg.reps):
        rng.shuffle(order)  # no (C, method) always follows the same one (e.g. a large original step)
        for p in order:
            c, m = p
            if len(info[p]["times"]) >= allowed[p]:
                continue
            t, cpu = _timed(runs[p], info[p]["steps"])
            info[p]["times"].append(t)
            info[p]["cpu"].append(cpu)
            if m == "original" and len(info[p]["times"]) == 1:
                allowed[p] = max(1, min(cfg.reps, int(cfg.original_budget / (t * info[p]["steps"]))))
            if log is not None and t * info[p]["steps"] > 5:
                print(f"#   ... C={c} {m}: {t:.1f} s/step (rep {rep + 1})", file=log, flush=True)
    return info


def measure_breakdown(cfg: Config) -> dict[tuple[int, str], dict[str, float]]:
    """Mean seconds per phase of one step, per (C, method) (original only up to C = 100), interleaved."""
    pairs = [
        (c, m)
        for c in cfg.classes
        for m in cfg.methods
        if not (m == "original" and c > min(_NO_WARMUP_ORIGINAL_ABOVE, cfg.max_original_classes or 10**9))
    ]
    runs = {p: TrainStep(p[1], p[0], cfg) for p in pairs}
    _freeze()
    try:
        for run in runs.values():
            run.step()
        n = max(1, min(cfg.reps, 5))
        phases: dict[tuple[int, str], dict[str, float]] = {p: {} for p in pairs}
        for _ in range(n):
            for p in pairs:
                gc.collect()
                runs[p].step(phases[p])
    finally:
        gc.unfreeze()
    return {p: {k: v / n for k, v in ph.items()} for p, ph in phases.items()}


# -- peak memory, one fresh process per (C, method) --------------------------------------------------
def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{key} not in /proc/self/status")


def memory_child(num_classes: int, method: str, cfg: Config) -> float | None:
    torch.set_num_threads(cfg.threads)
    # warm-up on a 2-sample batch: one-time allocations (autograd engine, kernels) without leaving this
    # batch size's freed blocks behind for the measured step to reuse
    TrainStep(method, min(num_classes, 10), Config(**{**asdict(cfg), "batch": 2})).step()
    run = TrainStep(method, num_classes, cfg)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        return None
    base = _status_mib("VmRSS")
    run.step()
    return _status_mib("VmHWM") - base


def _config_args(cfg: Config) -> list[str]:
    return [
        "--batch", str(cfg.batch), "--channels", str(cfg.channels), "--size", str(cfg.size),
        "--width", str(cfg.width), "--depth", str(cfg.depth), "--threads", str(cfg.threads),
        "--lr", str(cfg.lr), "--seed", str(cfg.seed), "--models", cfg.model,
    ]  # fmt: skip


def measure_memory(cfg: Config, pairs: Sequence[tuple[int, str]]) -> dict[tuple[int, str], float | str]:
    out: dict[tuple[int, str], float | str] = {}
    for c, m in pairs:
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", str(c), m, *_config_args(cfg)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            out[(c, m)] = f"rc={proc.returncode}"
            continue
        value = json.loads(proc.stdout.strip().splitlines()[-1])
        out[(c, m)] = "-" if value is None else float(value)
    return out


# -- report ------------------------------------------------------------------------------------------
def summarise(cfg: Config, info: dict[tuple[int, str], dict[str, Any]]) -> list[dict[str, Any]]:
    med = {p: statistics.median(v["times"]) for p, v in info.items()}
    c0 = min(cfg.classes)
    rows = []
    for c in cfg.classes:
        for m in cfg.methods:
            p = (c, m)
            if p not in info:
                continue
            times = info[p]["times"]
            plain = med.get((c, "plain"))
            base = med.get((c0, m))
            rows.append(
                {
                    "classes": c,
                    "method": m,
                    "maps": 0 if m == "plain" else maps_per_image(m, c),
                    "reps": len(times),
                    "steps_per_rep": info[p]["steps"],
                    "warm_up": info[p]["warm"],
                    "median_ms": 1e3 * med[p],
                    "min_ms": 1e3 * min(times),
                    "cpu_ms": 1e3 * statistics.median(info[p]["cpu"]),
                    "cpu_min_ms": 1e3 * min(info[p]["cpu"]),
                    "max_ms": 1e3 * max(times),
                    "x_plain": med[p] / plain if plain else None,
                    "x_c_min": med[p] / base if base else None,
                }
            )
    return rows


def format_table(cfg: Config, rows: list[dict[str, Any]], memory: dict | None = None) -> str:
    c0 = min(cfg.classes)
    head = (
        f"{'C':>5}  {'method':<11}{'K':>5}{'reps':>5}{'steps':>6}{'median ms':>11}{'min ms':>9}{'max ms':>9}"
        f"{'cpu ms':>9}{'x plain':>9}{f'x C={c0}':>9}"
    )
    if memory is not None:
        head += f"{'peak MiB':>10}"
    lines = [head]
    for r in rows:
        xp = "-" if r["x_plain"] is None else f"{r['x_plain']:.2f}"
        xc = "-" if r["x_c_min"] is None else f"{r['x_c_min']:.2f}"
        line = (
            f"{r['classes']:>5}  {r['method']:<11}{r['maps']:>5}{r['reps']:>5}{r['steps_per_rep']:>6}"
            f"{r['median_ms']:>11.1f}{r['min_ms']:>9.1f}{r['max_ms']:>9.1f}{r['cpu_ms']:>9.1f}{xp:>9}{xc:>9}"
        )
        if memory is not None:
            v = memory.get((r["classes"], r["method"]), "-")
            line += f"{v:>10.0f}" if isinstance(v, float) else f"{v:>10}"
        lines.append(line)
    return "\n".join(lines)


def targets(cfg: Config, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The three targets of the Faster ISNet claim as PASS/FAIL records with the numbers behind them.

    PASS/FAIL is decided on the wall-time medians; the same ratios of the median process CPU time are
    shown alongside ("cpu"): on a loaded machine they are less affected by other processes."""
    med = {(r["classes"], r["method"]): r["median_ms"] for r in rows}
    cpu = {(r["classes"], r["method"]): r["cpu_ms"] for r in rows}
    c0, c1 = min(cfg.classes), max(cfg.classes)
    out: list[dict[str, Any]] = []
    one_map = [m for m in ONE_MAP if (c0, m) in med and (c1, m) in med]
    if one_map and c1 > c0:
        ratios = {m: med[(c1, m)] / med[(c0, m)] for m in one_map}
        ratios_cpu = {m: cpu[(c1, m)] / cpu[(c0, m)] for m in one_map}
        ref = med.get((c1, "plain"), math.nan) / med.get((c0, "plain"), math.nan)
        detail = ", ".join(
            f"{m} {med[(c0, m)]:.1f} -> {med[(c1, m)]:.1f} ms = {x:.2f}x (cpu {ratios_cpu[m]:.2f}x)"
            for m, x in ratios.items()
        )
        out.append(
            {
                "target": 1,
                "pass": all(x <= 1.1 for x in ratios.values()),
                "pass_cpu": all(x <= 1.1 for x in ratios_cpu.values()),
                "text": f"one-map step at C={c1} within 1.1x of C={c0}: {detail}; plain: {ref:.2f}x",
                "ratios": ratios,
                "ratios_cpu": ratios_cpu,
            }
        )
    one_map = [m for m in ONE_MAP if m in cfg.methods]
    if one_map and "plain" in cfg.methods:
        keys = [(c, m) for c in cfg.classes for m in one_map if (c, m) in med and (c, "plain") in med]
        ratios2 = {f"{m}@{c}": med[(c, m)] / med[(c, "plain")] for c, m in keys}
        ratios2_cpu = {f"{m}@{c}": cpu[(c, m)] / cpu[(c, "plain")] for c, m in keys}
        worst = max(ratios2, key=ratios2.__getitem__)
        detail = "; ".join(
            f"C={c}: " + ", ".join(f"{m} {ratios2[f'{m}@{c}']:.2f}x" for m in one_map if f"{m}@{c}" in ratios2)
            for c in cfg.classes
        )
        out.append(
            {
                "target": 2,
                "pass": all(x <= 3.0 for x in ratios2.values()),
                "pass_cpu": all(x <= 3.0 for x in ratios2_cpu.values()),
                "text": (
                    f"one-map step <= 3x the plain step at each C: {detail}; worst {worst} {ratios2[worst]:.2f}x "
                    f"(cpu time: {min(ratios2_cpu.values()):.2f}x to {max(ratios2_cpu.values()):.2f}x)"
                ),
                "ratios": ratios2,
                "ratios_cpu": ratios2_cpu,
            }
        )
    pts = [(c, med[(c, "original")]) for c in cfg.classes if (c, "original") in med]
    if len(pts) >= 2:
        n = len(pts)
        mx = sum(c for c, _ in pts) / n
        my = sum(t for _, t in pts) / n
        slope = sum((c - mx) * (t - my) for c, t in pts) / sum((c - mx) ** 2 for c, _ in pts)
        rising = all(b[1] > a[1] for a, b in zip(pts, pts[1:]))
        first, last = pts[0], pts[-1]
        per = f"{slope:.2f} ms per extra class (least squares over C = {', '.join(str(c) for c, _ in pts)})"
        sel = med.get((first[0], "selective"))
        extra = f" = {slope / sel:.2f} selective steps (C={first[0]}) per class" if sel else ""
        out.append(
            {
                "target": 3,
                "pass": rising and slope > 0,
                "text": (
                    f"original grows with C: {first[1]:.1f} ms at C={first[0]} -> {last[1]:.1f} ms at C={last[0]} "
                    f"({last[1] / first[1]:.1f}x), {per}{extra}"
                ),
                "slope_ms_per_class": slope,
            }
        )
    return out


def format_breakdown(cfg: Config, phases: dict[tuple[int, str], dict[str, float]]) -> str:
    names = PHASES
    lines = [f"{'C':>5}  {'method':<11}" + "".join(f"{n:>14}" for n in names) + f"{'total':>10}"]
    for (c, m), ph in phases.items():
        lines.append(
            f"{c:>5}  {m:<11}" + "".join(f"{1e3 * ph[n]:>14.1f}" for n in names) + f"{1e3 * sum(ph.values()):>10.1f}"
        )
    return "\n".join(lines)


_SUMMARY_KEYS = {"cpu_min": "cpu_min_ms", "cpu": "cpu_ms", "median": "median_ms", "min": "min_ms"}


def summary_rows(cfg: Config, rows: list[dict[str, Any]], on: str = "cpu") -> list[dict[str, Any]]:
    """Per method: its step at the smallest and the largest C, their ratio, and each beside the plain step and
    the original variant at the smallest C (ratios of ``on``: the median process CPU time by default; the
    C-max / C-min ratio on every statistic in ``ratio_by``)."""
    key = _SUMMARY_KEYS[on]
    t = {(r["classes"], r["method"]): r[key] for r in rows}
    c0, c1 = min(cfg.classes), max(cfg.classes)

    def ratio(k: str, m: str) -> float | None:
        got = {r["classes"]: r[k] for r in rows if r["method"] == m}
        return got[c1] / got[c0] if c0 in got and c1 in got and got[c0] else None
    orig0 = t.get((c0, "original"))
    out = []
    for m in cfg.methods:
        lo, hi = t.get((c0, m)), t.get((c1, m))
        if lo is None and hi is None:
            continue
        p0, p1 = t.get((c0, "plain")), t.get((c1, "plain"))
        out.append(
            {
                "model": cfg.model, "method": m, "ms_c_min": lo, "ms_c_max": hi,
                "c_max_over_c_min": hi / lo if lo and hi else None,
                "ratio_by": {k: ratio(v, m) for k, v in _SUMMARY_KEYS.items()},
                "x_plain_c_min": lo / p0 if lo and p0 else None, "x_plain_c_max": hi / p1 if hi and p1 else None,
                "x_original_c_min": (hi if hi is not None else lo) / orig0 if orig0 else None,
            }
        )  # fmt: skip
    return out


def format_summary(cfg: Config, summary: list[dict[str, Any]], on: str = "cpu") -> str:
    c0, c1 = min(cfg.classes), max(cfg.classes)
    what = {"cpu_min": "min process CPU", "cpu": "median process CPU", "median": "median wall", "min": "min wall"}[on]

    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    head = (
        f"{'model':<12}{'method':<11}{f'ms C={c0}':>11}{f'ms C={c1}':>12}{f'C={c1}/C={c0}':>13}"
        f"{f'x plain@{c0}':>12}{f'x plain@{c1}':>13}{f'x orig@{c0}':>12}"
    )
    lines = [f"# {what} ms per step; x orig@{c0}: the step at C={c1} (or C={c0} where only that ran) over the "
             f"original variant's at C={c0}", head]  # fmt: skip
    for r in summary:
        lines.append(
            f"{r['model']:<12}{r['method']:<11}{f(r['ms_c_min'], '.1f'):>11}{f(r['ms_c_max'], '.1f'):>12}"
            f"{f(r['c_max_over_c_min'], '.2f'):>13}{f(r['x_plain_c_min'], '.2f'):>12}"
            f"{f(r['x_plain_c_max'], '.2f'):>13}{f(r['x_original_c_min'], '.2f'):>12}"
        )
    one_map = [r for r in summary if r["method"] in ONE_MAP and r["c_max_over_c_min"] is not None]
    if one_map and c1 > c0:
        ok = all(r["c_max_over_c_min"] <= 1.1 for r in one_map)
        detail = ", ".join(f"{r['method']} {r['c_max_over_c_min']:.2f}x" for r in one_map)
        others = "; ".join(
            f"on {k}: " + ", ".join(f"{r['method']} {r['ratio_by'][k]:.2f}x" for r in one_map)
            for k in ("cpu", "cpu_min") if k != on and all(r["ratio_by"].get(k) is not None for r in one_map)
        )  # fmt: skip
        lines.append(f"TARGET 1 {cfg.model} ({what}) {'PASS' if ok else 'FAIL'}: one-map step at C={c1} within "
                     f"1.1x of C={c0}: {detail} ({others})")  # fmt: skip
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> tuple[Config, argparse.Namespace]:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", nargs="+", type=int, default=d.classes)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=d.methods)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--channels", type=int, default=d.channels, help="input channels")
    p.add_argument("--size", type=int, default=d.size, help="input height = width")
    p.add_argument("--width", type=int, default=d.width, help="channels of the first block (doubling per block)")
    p.add_argument("--depth", type=int, default=d.depth, help="Conv+BN+ReLU blocks")
    p.add_argument("--reps", type=int, default=d.reps, help="repetitions (median and range reported)")
    p.add_argument("--min-time", type=float, default=d.min_time, help="seconds per rep (consecutive steps)")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="at most this many steps per rep")
    p.add_argument("--original-budget", type=float, default=d.original_budget, help="seconds of original per C")
    p.add_argument("--max-original-classes", type=int, default=None, help="skip original above this C")
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--memory", action="store_true", help="peak memory per (C, method), each in a fresh process")
    p.add_argument("--breakdown", action="store_true", help="process CPU time per phase of the step")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 2 reps: a smoke run")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--models", nargs="+", choices=MODELS, default=["cnn"],
                   help="backbones: the small CNN (--depth, --width) and/or torchvision resnet18, densenet121")
    p.add_argument("--summary-on", choices=sorted(_SUMMARY_KEYS), default="cpu",
                   help="which time the closing C-max vs C-min summary compares (default: the median process CPU "
                        "time; cpu_min: the minimum, min/median: wall time)")
    p.add_argument("--memory-child", nargs=2, metavar=("C", "METHOD"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.classes = a.classes if a.classes != d.classes else [2, 10]
        a.batch, a.size, a.width, a.depth, a.reps = 4, 16, 4, 2, 2
        a.min_time, a.original_budget = 0.0, 1.0
        if a.models != ["cnn"]:
            a.batch, a.size = 2, 32
    if min(a.classes) < 2 or a.batch < 1 or a.reps < 1 or a.depth < 1 or a.width < 1:
        p.error("need C >= 2, batch >= 1, reps >= 1, depth >= 1, width >= 1")
    if "cnn" in a.models and a.size % 2 ** (a.depth - 1):
        p.error(f"--size {a.size} must be divisible by 2**(depth-1) = {2 ** (a.depth - 1)}")
    cfg = Config(
        classes=sorted(set(a.classes)),
        methods=[m for m in METHODS if m in a.methods],
        batch=a.batch,
        channels=a.channels,
        size=a.size,
        width=a.width,
        depth=a.depth,
        reps=a.reps,
        min_time=a.min_time,
        max_steps=a.max_steps,
        original_budget=a.original_budget,
        max_original_classes=a.max_original_classes,
        threads=a.threads,
        lr=a.lr,
        seed=a.seed,
        memory=a.memory,
        breakdown=a.breakdown,
        quick=a.quick,
        model=a.models[0],
    )
    return cfg, a


def main(argv: Sequence[str] | None = None) -> int:
    cfg, a = parse(argv)
    if a.memory_child:
        print(json.dumps(memory_child(int(a.memory_child[0]), a.memory_child[1], cfg)))
        return 0
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, a)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: Config, a: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = sys.stdout
    results, summaries = [], []
    for name in a.models:
        cfg_m = replace(cfg, model=name, channels=cfg.channels if name == "cnn" else 3)
        result = _run_one(cfg_m, a)
        results.append(result)
        summaries.append(format_summary(cfg_m, result["summary"], a.summary_on))
    if len(cfg.classes) > 1:
        print(f"# summary ({', '.join(a.models)}): each method at C={max(cfg.classes)} against C={min(cfg.classes)}",
              file=out)  # fmt: skip
        print("\n".join(summaries), file=out)
    print(f"# total {time.perf_counter() - started:.0f} s", file=out)
    out.flush()
    if a.json:
        first = dict(results[0])
        first["models"] = results
        with open(a.json, "w") as f:
            json.dump(first, f, indent=1)
    return 0


def _run_one(cfg: Config, a: argparse.Namespace) -> dict[str, Any]:
    """Measure one model; print its table, targets and breakdown; return its results."""
    load0 = os.getloadavg()
    started = time.perf_counter()
    out = sys.stdout
    box = cfg.size - 2 * (cfg.size // 4)
    print("# ISNet training step vs number of classes (benchmarks/bench_isnet_time.py)", file=out)
    print(
        f"# torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{cfg.threads} thread(s) (torch.set_num_threads({cfg.threads})), {datetime.date.today()}",
        file=out,
    )
    print(f"# load average at start: {' '.join(f'{x:.2f}' for x in load0)}", file=out)
    print(
        f"# model: {describe_model(cfg)}; train mode; input {cfg.batch}x{cfg.channels}x"
        f"{cfg.size}x{cfg.size} (uniform [0, 1]); mask: central {box}x{box} box",
        file=out,
    )
    print(
        "# plain: forward + CE + backward + SGD step; ISNet: ISNetMaps(model, variant) + isnet_loss + backward + "
        "clip_grad_norm_(1) + SGD step",
        file=out,
    )
    print(
        f"# timing: 1 warm-up step per (C, method); {cfg.reps} reps, each a round over all (C, method) in a "
        f"freshly shuffled order; a rep times 'steps' consecutive steps (>= {cfg.min_time:g} s, <= {cfg.max_steps}); "
        f"original: reps within {cfg.original_budget:g} s per C, no warm-up above C={_NO_WARMUP_ORIGINAL_ABOVE}",
        file=out,
    )
    print(
        "# median/min/max ms: wall time per step over the reps; cpu ms: median process CPU time per step (less "
        f"affected by other load); x plain, x C={min(cfg.classes)}: ratios of the wall medians",
        file=out,
    )
    if cfg.max_original_classes is not None:
        print(f"# original skipped above C={cfg.max_original_classes} (--max-original-classes)", file=out)
    out.flush()
    info = measure(cfg, log=out)
    rows = summarise(cfg, info)
    memory = None
    if cfg.memory:
        memory = measure_memory(cfg, list(info))
        print(
            "# peak MiB: peak resident memory of one step above the level before it, each (C, method) in a "
            "fresh process ('-': /proc/self/clear_refs not writable)",
            file=out,
        )
    print(format_table(cfg, rows, memory), file=out)
    few = [r for r in rows if r["reps"] < cfg.reps]
    for r in few:
        print(
            f"# note: {r['method']} at C={r['classes']} timed with {r['reps']} rep(s) of {r['steps_per_rep']} step(s)"
            f"{'' if r['warm_up'] else ', no warm-up'} ({r['median_ms'] / 1e3:.1f} s per step)",
            file=out,
        )
    for p, v in info.items():
        if v.get("nonfinite"):
            print(f"# note: {p[1]} at C={p[0]}: the loss was not finite in {v['nonfinite']} step(s) (timed all the "
                  "same; lower --lr for a run that trains)", file=out)  # fmt: skip
    checks = targets(cfg, rows)
    for t in checks:
        verdict = "PASS" if t["pass"] else "FAIL"
        if "pass_cpu" in t:
            verdict += f" (on CPU time: {'PASS' if t['pass_cpu'] else 'FAIL'})"
        print(f"TARGET {t['target']} {verdict}: {t['text']}", file=out)
    phases = None
    if cfg.breakdown:
        phases = measure_breakdown(cfg)
        print(
            "# breakdown, process CPU ms per step (mean of up to 5 interleaved steps; original up to C=100): "
            "forward+maps = model call (plain) or ISNetMaps (forward + relevance passes); backward = loss.backward() "
            "(for ISNet the double backpropagation)",
            file=out,
        )
        print(format_breakdown(cfg, phases), file=out)
    load1 = os.getloadavg()
    print(
        f"# load average at end: {' '.join(f'{x:.2f}' for x in load1)}; total {time.perf_counter() - started:.0f} s",
        file=out,
    )
    out.flush()
    return {
        "model": cfg.model,
        "config": asdict(cfg),
        "load_start": load0,
        "load_end": load1,
        "rows": rows,
        "targets": checks,
        "summary": summary_rows(cfg, rows, a.summary_on),
        "memory_mib": None if memory is None else [[c, m, v] for (c, m), v in memory.items()],
        "breakdown_ms": None
        if phases is None
        else [[c, m, {k: 1e3 * v for k, v in ph.items()}] for (c, m), ph in phases.items()],
    }


if __name__ == "__main__":
    sys.exit(main())
