"""The R-LRP study from start to end: measure every model, draw the figures, write results.json and
report.md (each file atomically, so an interrupted run leaves the previous report as it was)."""

from __future__ import annotations

import json
import math
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..._io import atomic_write_bytes
from .cases import mnist_cases, natural_images, photo_case, torchvision_model
from .config import Config
from .figures import curves_figure, grid_figure, robustness_figure, sensitivity_figure
from .measure import measure_case, measure_full_size
from .report import ReportData, write_report


def json_safe(obj: Any) -> Any:
    """``obj`` with string keys, lists for tuples, None for NaN/Inf and Python numbers for numpy's."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (or what :func:`platform.processor` says)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@dataclass
class Collected:
    """What the measuring stages produce: small-size results per model, full-size results per architecture,
    the PNG files by name, and one input with its relevance per model for the sensitivity figure."""

    results: dict[str, Any] = field(default_factory=dict)
    full: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    sens_cases: list[tuple[str, Tensor, dict[str, Tensor]]] = field(default_factory=list)


def _measure_mnist(cfg: Config, cache: Path | None, bar: tqdm, got: Collected) -> None:
    bar.set_postfix_str("MNIST models (training the simple CNN if not cached)")
    for case in mnist_cases(cfg, cache):
        # small models: one thread is faster (and far less hurt by other jobs on the machine)
        torch.set_num_threads(1)
        try:
            res, rel = measure_case(case, cfg, bar)
        finally:
            torch.set_num_threads(cfg.threads)
        res["patch"] = case.patch
        got.results[case.key] = res
        got.sens_cases.append((case.label, case.images[0], {k: v[:1] for k, v in rel.items()}))
        n = min(4, case.x.shape[0])
        pick = torch.linspace(0, case.x.shape[0] - 1, n).round().long()
        got.files[f"grid_{case.key}.png"] = grid_figure(
            case.images[pick],
            {k: v[pick] for k, v in rel.items()},
            [case.row_titles[i] for i in pick],
            f"{case.label} on MNIST, predicted class explained",
        )


def _measure_architectures(cfg: Config, bar: tqdm, got: Collected) -> None:
    """The ImageNet architectures: every measure at the small size (``cfg.big_models``), NaN/Inf and time at
    full size (also ``cfg.nan_models``)."""
    small, small_names = natural_images(cfg.small_n, cfg.small_size)
    big, big_names = natural_images(cfg.full_n, cfg.full_size)
    extra_nan = [m for m in cfg.nan_models if m not in cfg.big_models]
    for name in list(cfg.big_models) + extra_nan:
        bar.set_postfix_str(f"{name}: building")
        model = torchvision_model(name, cfg.seed)
        if name in cfg.big_models:
            case = photo_case(name, model, cfg, small, small_names)
            res, rel = measure_case(case, cfg, bar)
            got.results[name] = res
            got.sens_cases.append((case.label, small[0], {k: v[:1] for k, v in rel.items()}))
        got.full[name], rel_full = measure_full_size(name, model, cfg, big, bar)
        got.files[f"grid_{name}.png"] = grid_figure(  # two rows keep the committed PNG small
            big[:2],
            {k: v[:2] for k, v in rel_full.items()},
            big_names[:2],
            f"{name}, random weights, {cfg.full_size}²: predicted class explained",
        )
        del model


def run_study(
    out: Path, *, quick: bool = False, threads: int = 2, cache: Path | None = None, command: str | None = None
) -> Path:
    """Run the R-LRP study and write ``out/report.md``, ``out/results.json`` and the PNG figures."""
    start = time.perf_counter()
    cfg = Config.quick_config(threads) if quick else Config(threads=threads)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(out, cfg, cache, command, start)
    finally:
        torch.set_num_threads(previous_threads)


def _run(out: Path, cfg: Config, cache: Path | None, command: str | None, start: float) -> Path:
    out = Path(out)
    command = command or f"relprop study rlrp --out {shlex.quote(str(out))}" + (" --quick" if cfg.quick else "")
    total = 2 * 7 + len(cfg.big_models) * 7 + len(cfg.nan_models) * 2 + 1
    bar = tqdm(total=total, desc="R-LRP study", unit="stage", dynamic_ncols=True, file=sys.stderr)
    got = Collected()
    try:
        _measure_mnist(cfg, cache, bar, got)
        _measure_architectures(cfg, bar, got)
        bar.set_postfix_str("figures and report")
        got.files["curves.png"] = curves_figure(got.results)
        got.files["robustness.png"] = robustness_figure(got.results)
        got.files["sensitivity.png"] = sensitivity_figure(got.sens_cases)
        bar.update(1)
    finally:
        bar.close()
    for name, data in got.files.items():
        atomic_write_bytes(out / name, data)
    wall = time.perf_counter() - start
    payload = {
        "command": command,
        "wall_seconds": wall,
        "config": asdict(cfg),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "models": got.results,
        "full_size": got.full,
    }
    atomic_write_bytes(out / "results.json", json.dumps(json_safe(payload), indent=1).encode())
    grids = [n for n in got.files if n.startswith("grid_")]
    write_report(out, ReportData(got.results, got.full, cfg, command, wall, cpu_name(), grids))
    print(f"wrote {out / 'report.md'}, results.json and {len(got.files)} PNGs in {wall / 60:.1f} min")
    return out / "report.md"


__all__ = ["cpu_name", "json_safe", "run_study"]
