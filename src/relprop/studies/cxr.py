"""The ISNet study on the chest-X-ray-style shortcut benchmark: does keeping relevance off the background help
a classifier that meets a new hospital?

Run ``relprop study cxr --out DIR`` (or :func:`run_study` from Python). The data set is
:func:`relprop.data.cxr.cxr_benchmark` (stylised radiographs around real lung masks; hospital markers outside the
lungs correlate with the class in the training hospitals ``hospital_a`` and ``hospital_b`` and not in the external
``hospital_c``). For every method and seed it trains a :class:`~relprop.models.SmallResNet` on the training
hospitals, then measures accuracy, macro F1, ROC AUC and the share of LRP relevance outside the lungs on a
held-out in-distribution test (``test_id``, 20 % of the training hospitals, stratified by class) and on the
external hospital. It writes ``DIR/report.md``, ``DIR/results.json`` and PNG figures. Training runs live under
``--work`` and resume; finished runs are reused. ``--quick`` runs the pipeline on tiny sizes (for tests).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_text
from .common import (
    aggregate_runs,
    by_cost,
    check_methods,
    discussion_link,
    fit_run,
    fmt_mean_spread,
    in_method_order,
    machine,
    run_jobs,
    seconds_per_epoch,
    seed0_models,
    wall_time_lines,
    write_curves,
    write_json,
)

SPLITS = ("test_id", "external")
METRICS = ("accuracy", "f1", "auc", "background_share")
#: method name in the study → (TrainConfig.method, selective_class)
METHODS: dict[str, tuple[str, str]] = {
    "plain": ("plain", "lowest"),
    "rrr": ("rrr", "lowest"),
    "selective": ("selective", "label"),
    "stochastic": ("stochastic", "lowest"),
    "dual": ("dual", "lowest"),
    "original": ("original", "lowest"),
}
DEFAULT_METHODS = tuple(METHODS)


@dataclass(frozen=True)
class StudySettings:
    """Training and data settings shared by every run of the study."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.01
    P: float = 0.7
    rrr_lambda: float = 10.0
    width: int = 16
    size: int = 64
    n_train: int = 800
    n_external: int = 400
    n_masks: int | None = None
    test_fraction: float = 0.2
    val_fraction: float = 0.15
    data_seed: int = 0


QUICK = StudySettings(epochs=1, width=4, size=32, n_train=40, n_external=20, n_masks=12)


def _data_config(s: StudySettings) -> Any:
    from ..data.cxr import CXRConfig, default_cxr_sources

    return CXRConfig(size=s.size, sources=default_cxr_sources(2, s.n_train, s.n_external), n_masks=s.n_masks)


def load_splits(s: StudySettings, cache_dir: str = "") -> dict[str, Any]:
    """``train``, ``val``, ``test_id`` (hospitals a and b; disjoint, stratified by class) and ``external``
    (hospital c) of the benchmark, deterministic given the settings."""
    from ..data.cxr import cxr_benchmark
    from ..data.folders import LabelledSubset, MaskedImageFolder, split, split_by_source

    root = cxr_benchmark(_data_config(s), cache_dir or None)
    ds = MaskedImageFolder(csv=root / "index.csv", channels=1)
    parts = split_by_source(ds, ["hospital_c", "hospital_d"], val_fraction=0.0, seed=s.data_seed)
    pool = parts["train"]  # every image of the training hospitals
    rest = 1.0 - s.test_fraction
    fractions = {"train": rest * (1 - s.val_fraction), "val": rest * s.val_fraction, "test_id": s.test_fraction}
    inner = split(pool, fractions, seed=s.data_seed)
    out: dict[str, Any] = {k: LabelledSubset(ds, [pool.indices[i] for i in v.indices]) for k, v in inner.items()}
    ext = parts["external"]
    out["external"] = LabelledSubset(ds, [i for i in ext.indices if ds.sources[i] == "hospital_c"])
    return out


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Binary ROC AUC from ranks (Mann-Whitney U; tied scores get their average rank, i.e. a tie counts 1/2).
    NaN when one class is absent."""
    s = scores.detach().double().flatten()
    y = labels.flatten().bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = torch.argsort(s)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    i, n = 0, len(s)
    while i < n:  # average rank (1-based) over each run of equal scores
        j = i
        while j + 1 < n and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def macro_f1(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Unweighted mean over classes of 2·TP / (2·TP + FP + FN) (0 for a class never present nor predicted)."""
    scores = []
    for c in range(num_classes):
        tp = int(((pred == c) & (labels == c)).sum())
        denom = int((pred == c).sum()) + int((labels == c).sum())
        scores.append(2 * tp / denom if denom else 0.0)
    return statistics.fmean(scores)


def classification_metrics(model: torch.nn.Module, dataset: Any, batch_size: int = 250) -> dict[str, float]:
    """Macro F1 and ROC AUC (softmax probability of class 1) of ``model`` in eval mode on (image, mask, label)."""
    from torch.utils.data import DataLoader

    logits, labels = [], []
    model.eval()
    with torch.no_grad():
        for x, _, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            logits.append(model(x))
            labels.append(y)
    z, y = torch.cat(logits), torch.cat(labels)
    return {"f1": macro_f1(z.argmax(1), y, z.shape[1]), "auc": roc_auc(z.softmax(1)[:, 1], y)}


def run_one(job: tuple[str, int, StudySettings, str, str]) -> dict[str, Any]:
    """Train (or resume) one method with one seed and evaluate it; cached in ``work/<method>-seed<seed>``."""
    method, seed, s, work, cache_dir = job
    torch.set_num_threads(1)
    from ..isnet import evaluate

    run_dir = Path(work) / f"{method}-seed{seed}"
    done = run_dir / "evaluation.json"
    if done.is_file():
        return dict(json.loads(done.read_text()))
    splits = load_splits(s, cache_dir)
    spec = {"name": "small_resnet", "num_classes": 2, "in_channels": 1, "width": s.width}
    fitted = fit_run(*METHODS[method], seed, s, spec, splits, run_dir)
    tests = evaluate(fitted.model, {t: splits[t] for t in SPLITS}, progress=False)
    for t in SPLITS:
        tests[t].update(classification_metrics(fitted.model, splits[t]))
    record = {
        "method": method, "seed": seed, "config": fitted.config, "model_spec": spec, "tests": tests,
        "history": fitted.history, "seconds": fitted.seconds,
        "seconds_per_epoch": seconds_per_epoch(fitted.history, fitted.seconds),
    }  # fmt: skip
    write_json(done, record)
    return record


def aggregate(records: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: mean, std and values over seeds of every metric on every split."""
    return aggregate_runs(records, methods, SPLITS, METRICS)


def _table(agg: Mapping[str, Mapping[str, Any]]) -> list[str]:
    head = [f"{m} {'ID' if t == 'test_id' else 'ext.'}" for t in SPLITS for m in ("acc.", "F1", "AUC")]
    lines = [
        "| method | " + " | ".join(f"{h} %" for h in head) + " | bg share ID % | bg share ext. % | s / epoch |",
        "|---|" + "---|" * (len(head) + 3),
    ]
    for method, row in agg.items():
        cells = [fmt_mean_spread(row[f"{t}/{k}"]["values"]) for t in SPLITS for k in ("accuracy", "f1", "auc")]
        cells += [fmt_mean_spread(row[f"{t}/background_share"]["values"]) for t in SPLITS]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {row['seconds_per_epoch']:.1f} |")
    return lines


def _discussion(agg: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Statements computed from the numbers: each method's drop from the in-distribution test to the external
    hospital, and its external accuracy and AUC against the plain classifier's."""
    lines = ["## What the numbers say", ""]
    plain = agg.get("plain")
    for method, row in agg.items():
        acc_id, acc_ext = (row[f"{t}/accuracy"]["mean"] * 100 for t in SPLITS)
        auc_id, auc_ext = (row[f"{t}/auc"]["mean"] * 100 for t in SPLITS)
        bg = row["external/background_share"]["mean"] * 100
        text = (
            f"- **{method}**: accuracy {acc_id:.1f} % in distribution → {acc_ext:.1f} % external "
            f"(drop {acc_id - acc_ext:+.1f} points); AUC {auc_id:.1f} → {auc_ext:.1f} (drop {auc_id - auc_ext:+.1f}); "
            f"{bg:.1f} % of the external relevance outside the lungs"
        )
        if plain is not None and method != "plain":
            d_acc = acc_ext - plain["external/accuracy"]["mean"] * 100
            d_auc = auc_ext - plain["external/auc"]["mean"] * 100
            sd = max(row["external/accuracy"]["std"], plain["external/accuracy"]["std"]) * 100
            verdict = "within the seed spread of" if abs(d_acc) <= sd else ("above" if d_acc > 0 else "below")
            text += (
                f"; external accuracy {d_acc:+.1f} points vs plain ({verdict} plain, larger std {sd:.1f}), "
                f"external AUC {d_auc:+.1f} points"
            )
        lines.append(text + ".")
    return lines + [""]


def _figures(out: Path, records: Sequence[Mapping[str, Any]], methods: Sequence[str], s: StudySettings,
             work: Path, cache_dir: str) -> list[str]:  # fmt: skip
    from ..isnet import heatmap_figure

    names: list[str] = []
    models = seed0_models(records, methods, work)
    if models:
        seed = min(r["seed"] for r in records)
        external = load_splits(s, cache_dir)["external"]
        labels = external.labels.tolist()
        indices = [i for c in sorted(set(labels)) for i in [k for k, y in enumerate(labels) if y == c][:2]]
        heatmap_figure(
            models, external, out / "heatmaps_external.png", indices=indices, class_names=external.class_names,
            title=f"external hospital: LRP (ISNet rules) of the predicted class, seed {seed}",
        )  # fmt: skip
        names.append("heatmaps_external.png")
    names.append(write_curves(out, records, methods, "validation accuracy (training hospitals), mean over seeds"))
    return names


def run_study(out: Path, *, methods: Sequence[str], seeds: Sequence[int], settings: StudySettings, work: Path,
              jobs: int, cache_dir: str, command: str, seeds_for: Mapping[str, Sequence[int]] | None = None,
              ) -> dict[str, Any]:  # fmt: skip
    """Train and evaluate every (method, seed) (reusing finished runs under ``work``), then write the report.
    ``seeds_for`` overrides the seeds of some methods (e.g. fewer seeds for the expensive ones)."""
    check_methods(methods, METHODS)
    seeds_for = dict(seeds_for or {})
    start = time.perf_counter()
    load_splits(settings, cache_dir)  # build the benchmark once, before the workers start
    todo = [(m, seed, settings, str(work), cache_dir) for m in methods for seed in seeds_for.get(m, seeds)]
    records = in_method_order(run_jobs(run_one, by_cost(todo), jobs, "cxr study"), methods)
    agg = aggregate(records, methods)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(out, records, methods, settings, work, cache_dir)
    results = {
        "command": command, "settings": asdict(settings), "methods": list(methods), "seeds": list(seeds),
        "seeds_for": {m: list(v) for m, v in seeds_for.items()}, "aggregate": agg, "runs": records,
        "wall_seconds": time.perf_counter() - start,
        "machine": machine(),
    }  # fmt: skip
    write_json(out / "results.json", results)
    _write_report(out, results, figures)
    return results


def _write_report(out: Path, results: Mapping[str, Any], figures: Sequence[str]) -> None:
    s = results["settings"]
    fewer = ", ".join(f"{m}: seeds {v}" for m, v in results["seeds_for"].items() if m in results["methods"])
    lines = [
        "# ISNet on a chest-X-ray-style benchmark with hospital shortcuts",
        "",
        f"Regenerate: `{results['command']}`",
        "",
        *discussion_link(out),
        "## Set-up",
        "",
        f"- Data (`relprop.data.cxr.cxr_benchmark`, {s['size']}×{s['size']} grey, 2 classes normal/opacity): "
        f"{s['n_train']} images from each training hospital (hospital_a, hospital_b; markers outside the lungs "
        f"correlate with the class), {s['n_external']} from the external hospital_c (markers independent of the "
        f"class, held-out lung masks). The training hospitals are split per class into test_id "
        f"({s['test_fraction']:.0%}), val ({(1 - s['test_fraction']) * s['val_fraction']:.0%}) and train; "
        "mask = the lungs.",
        f"- Model: SmallResNet width {s['width']} (stem + 3 basic residual blocks, strides 1, 2, 2, global "
        f"average pooling, linear head). SGD lr {s['lr']}, momentum 0.9, batch {s['batch_size']}, "
        f"{s['epochs']} epochs, gradient-norm clipping at 1, one thread per run.",
        f"- ISNet loss: P = {s['P']} (spec defaults otherwise); RRR: λ = {s['rrr_lambda']}. `selective` explains "
        "the log-odds of the true class; `original` explains both classes (C = 2).",
        "- Metrics: accuracy, macro F1, ROC AUC (softmax probability of opacity, rank-based), and background "
        "share Σ_bg |R| / Σ |R| of an LRP heatmap with the ISNet rules for the predicted class (bg = outside the "
        "lungs), averaged over the test images.",
        f"- Seeds {results['seeds']}{f' ({fewer})' if fewer else ''} (initialisation and batch order; the data "
        "set is fixed); mean ± standard deviation over seeds.",
        "",
        "## Results",
        "",
        *_table(results["aggregate"]),
        "",
        *_discussion(results["aggregate"]),
    ]
    for name in figures:
        lines += [f"![{name}]({name})", ""]
    lines += wall_time_lines(results["wall_seconds"])
    atomic_write_text(out / "report.md", "\n".join(lines))
