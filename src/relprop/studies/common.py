"""What the training studies (:mod:`.isnet`, :mod:`.cxr`) share: running (method, seed) jobs in a worker pool,
training one run, loading finished runs, aggregating over seeds, mean ± spread formatting, the training-curves
figure and the report's common lines."""

from __future__ import annotations

import io
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .._io import atomic_write_bytes, atomic_write_json
from ..errors import UsageError

#: relative cost per epoch of a training method, to start the longest runs first (1 if not listed)
COST: dict[str, float] = {
    "original": 10, "dual": 3, "selective": 2, "selective-label": 2, "stochastic": 2, "grad_input": 1.5,
}  # fmt: skip


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return atomic_write_json(path, data)


def check_methods(methods: Sequence[str], known: Mapping[str, Any]) -> None:
    """Raise :class:`~relprop.errors.UsageError` naming every method of ``methods`` not in ``known``."""
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}")


def by_cost(jobs: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``jobs`` (tuples starting with the method name) with the most expensive methods first."""
    return sorted(jobs, key=lambda j: -COST.get(j[0], 1))


def in_method_order(records: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Run records sorted by the order of ``methods``, then by seed."""
    order = {m: i for i, m in enumerate(methods)}
    return sorted(records, key=lambda r: (order[r["method"]], r["seed"]))


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_mean_spread(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``"mean ± std"`` of ``values · scale`` (percent by default)."""
    m, s = mean_spread([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def aggregate_runs(
    records: Sequence[Mapping[str, Any]], methods: Sequence[str], splits: Sequence[str], metrics: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per method with runs: its seeds, mean, std and values over seeds of every metric on every test split,
    and the mean seconds per epoch."""
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        rs = [r for r in records if r["method"] == method]
        if not rs:
            continue
        row: dict[str, Any] = {"seeds": [r["seed"] for r in rs]}
        for t in splits:
            for key in metrics:
                vals = [r["tests"][t][key] for r in rs]
                m, sd = mean_spread(vals)
                row[f"{t}/{key}"] = {"mean": m, "std": sd, "values": vals}
        row["seconds_per_epoch"] = statistics.fmean(r["seconds_per_epoch"] for r in rs)
        out[method] = row
    return out


class FinishedFit(NamedTuple):
    """A trained model (in eval mode), its training config as a dict, its history and its training seconds."""

    model: torch.nn.Module
    config: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float


def fit_run(
    kind: str, selective_class: str, seed: int, settings: Any, spec: Mapping[str, Any], splits: Mapping[str, Any],
    run_dir: Path, *, config: Any = None, device: str = "cpu",
) -> FinishedFit:  # fmt: skip
    """Train (or resume in ``run_dir``) a model built from ``spec`` with the training method ``kind`` and the
    study ``settings`` (epochs, batch_size, lr, P, rrr_lambda) on ``splits["train"]``, validated on
    ``splits["val"]``; the seed sets the initialisation and the batch order. A ready ``config`` (a
    :class:`~relprop.isnet.TrainConfig`) replaces the one built from ``kind``, ``settings`` and the seed.
    ``device``: ``"cpu"`` or ``"cuda"`` / ``"cuda:N"`` (the returned model is on the CPU either way)."""
    from ..isnet import TrainConfig, fit
    from ..models import build_model

    if config is None:
        config = TrainConfig(
            method=kind, epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, P=settings.P,
            rrr_lambda=settings.rrr_lambda, selective_class=selective_class, seed=seed,
        )  # fmt: skip
    accelerator, devices = accelerator_of(device)
    torch.manual_seed(seed)
    model = build_model(spec)
    start = time.perf_counter()
    result = fit(model, splits["train"], splits["val"], config, out_dir=run_dir, progress=False, model_spec=spec,
                 accelerator=accelerator, devices=devices)  # fmt: skip
    seconds = time.perf_counter() - start
    return FinishedFit(model.eval(), config.to_dict(), result.history, seconds)


def accelerator_of(device: str) -> tuple[str, Any]:
    """Lightning's ``(accelerator, devices)`` for a study's ``--device``: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    d = str(device).strip().lower()
    if d == "cpu":
        return "cpu", 1
    if d == "cuda":
        return "gpu", 1
    if d.startswith("cuda:") and d[5:].isdigit():
        return "gpu", [int(d[5:])]
    raise UsageError(f"--device {device!r}: use cpu, cuda or cuda:N")


def seconds_per_epoch(history: Sequence[Mapping[str, Any]], seconds: float) -> float:
    """Median training seconds per epoch of a run's history (its total ``seconds`` if none were recorded)."""
    return statistics.median([h["seconds"] for h in history if h.get("seconds")] or [seconds])


def load_run_model(run: Path) -> torch.nn.Module:
    """The model of the training run folder ``run`` (its ``last.ckpt``) in eval mode."""
    from ..isnet import load_checkpoint
    from ..models import build_model

    model: torch.nn.Module = load_checkpoint(run / "last.ckpt", build_model)[0]
    return model.eval()


def seed0_models(records: Sequence[Mapping[str, Any]], methods: Sequence[str], work: Path) -> dict[str, Any]:
    """The trained model of each method for the lowest seed, where its checkpoint exists."""
    seed = min(r["seed"] for r in records)
    runs = {m: work / f"{m}-seed{seed}" for m in methods}
    return {m: load_run_model(run) for m, run in runs.items() if (run / "last.ckpt").is_file()}


def write_curves(
    out: Path, records: Sequence[Mapping[str, Any]], methods: Sequence[str], val_title: str, name: str = "curves.png"
) -> str:
    """``out/NAME`` (default ``curves.png``): validation accuracy and training loss per epoch, mean over seeds,
    per method; returns ``NAME``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for method in methods:
        rs = [r for r in records if r["method"] == method]
        if not rs:
            continue
        epochs = range(1, min(len(r["history"]) for r in rs) + 1)
        for ax, key in zip(axes, ("val_acc", "train_loss")):
            vals = [[r["history"][e - 1].get(key) or math.nan for e in epochs] for r in rs]
            mean = [statistics.fmean(v[i] for v in vals) for i in range(len(epochs))]
            ax.plot(list(epochs), mean, marker="o", label=method)
    axes[0].set_title(val_title)
    axes[1].set_title("training loss, mean over seeds")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out / name, buf.getvalue())
    return name


def run_jobs(fn: Callable[[Any], dict[str, Any]], todo: Sequence[Any], jobs: int, desc: str) -> list[dict[str, Any]]:
    """``fn`` on every job with a progress bar; with ``jobs`` > 1 in a pool of spawned one-thread workers
    (``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP barriers slow shared cores down)."""
    from tqdm import tqdm

    records: list[dict[str, Any]] = []
    with tqdm(total=len(todo), desc=desc, unit="run") as bar:
        if jobs > 1:
            import multiprocessing as mp

            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            with mp.get_context("spawn").Pool(jobs) as pool:
                for rec in pool.imap_unordered(fn, todo):
                    records.append(rec)
                    bar.set_postfix_str(f"{rec['method']} seed {rec['seed']}")
                    bar.update()
        else:
            for job in todo:
                records.append(fn(job))
                bar.update()
    return records


def machine() -> dict[str, Any]:
    """Python and torch versions and the CPU count, for a study's results.json."""
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()}


def discussion_link(out: Path) -> list[str]:
    """The report's link to a hand-written ``discussion.md`` next to it (no lines when there is none)."""
    if (out / "discussion.md").is_file():
        return ["Discussion (written by hand against these numbers): [discussion.md](discussion.md)", ""]
    return []


def wall_time_lines(seconds: float) -> list[str]:
    """The report's closing line on the study's wall time."""
    return [
        f"Wall time of this study: {seconds / 60:.1f} min (runs already finished under the work "
        "folder are reused, so a regenerated report can take less).",
        "",
    ]


__all__ = [
    "COST", "FinishedFit", "accelerator_of", "aggregate_runs", "by_cost", "check_methods", "discussion_link", "fit_run",
    "fmt_mean_spread", "in_method_order", "load_run_model", "machine", "mean_spread", "run_jobs",
    "seconds_per_epoch", "seed0_models", "wall_time_lines", "write_curves", "write_json",
]  # fmt: skip
