"""The CXR-style reproduction: does keeping relevance off the background help a classifier that meets a new
hospital, and how close does it come to a model that sees only the lungs?

Run ``python -m relprop.studies.cxr --out DIR`` (all options; ``relprop study cxr`` runs the same study with the
common options) or :func:`run_study` from Python. The data set is :func:`relprop.data.cxr.cxr_benchmark`:
stylised radiographs around real lung masks; hospital markers outside the lungs correlate with the class in the
training hospitals ``hospital_a`` and ``hospital_b``. Two external tests separate the two shifts:
``external_markers`` (``hospital_c``: only the markers differ, independent of the class) and
``external_acquisition`` (``hospital_d``: only the acquisition differs, a contrast change over the whole image,
lungs included, which no background loss can remove). The in-distribution test ``test_id`` is 20 % of the
training hospitals (stratified by class).

Methods: ``lung_only`` (the ceiling: a plain classifier trained and tested on masked inputs, background set to
0), ``plain``, ``rrr`` and the ISNet variants ``selective``, ``stochastic``, ``dual``, ``original``; backbones
``small_resnet`` (:class:`~relprop.models.SmallResNet`) and ``densenet121`` (torchvision, ``weights=None``,
1-channel input); seeds 0, 1, 2. An ablation set changes one recipe element at a time for one ISNet variant.
Every run lives in ``--work`` (``<backbone>/<method>[+<ablation>]-<recipe hash>-seed<k>``), resumes where it
stopped and is reused when finished; the report (``DIR/report.md``, ``DIR/results.json``, PNG figures) is
regenerated from the finished runs. ``--quick`` runs the pipeline on tiny sizes (for tests). ``--device cuda``
trains and evaluates on a GPU; ``--preset authors`` switches to the authors' X-ray settings (DenseNet121,
224 px, d = 0.996, hybrid foreground term, their LRP mode where the installed relprop has it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._io import atomic_write_text
from ..errors import UsageError
from .common import (
    discussion_link,
    fmt_mean_spread,
    machine,
    mean_spread,
    run_jobs,
    seconds_per_epoch,
    write_json,
)

SPLITS = ("test_id", "external_markers", "external_acquisition")
SPLIT_TITLES = {"test_id": "ID", "external_markers": "ext. markers", "external_acquisition": "ext. acquisition"}
EXTERNAL_SOURCES = {"external_markers": "hospital_c", "external_acquisition": "hospital_d"}
METRICS = ("accuracy", "f1", "auc", "background_share", "artefact_shown", "artefact_effect", "tiling", "evidence_share")
#: method name in the study → (TrainConfig.method, selective_class); lung_only is a plain run on masked inputs
METHODS: dict[str, tuple[str, str]] = {
    "lung_only": ("plain", "lowest"),
    "plain": ("plain", "lowest"),
    "rrr": ("rrr", "lowest"),
    "selective": ("selective", "label"),
    "stochastic": ("stochastic", "lowest"),
    "dual": ("dual", "lowest"),
    "original": ("original", "lowest"),
}
DEFAULT_METHODS = tuple(METHODS)
#: images enter ``artefact_shown`` when the markers raise their predicted logit by more than this (logit units;
#: a ratio over near-zero effects would be noise)
MIN_EFFECT = 0.1
ISNET_METHODS = ("selective", "stochastic", "dual", "original")
BACKBONES = ("small_resnet", "densenet121")
#: the methods run on each backbone by default (DenseNet121 costs about 4x per epoch on a CPU)
DEFAULT_BACKBONE_METHODS: dict[str, tuple[str, ...]] = {
    "small_resnet": DEFAULT_METHODS,
    "densenet121": ("lung_only", "plain", "selective"),
}
#: relative cost per epoch on a CPU (measured; for ordering the runs and the duration estimate)
COST = {"lung_only": 1.0, "plain": 1.0, "rrr": 2.6, "selective": 2.8, "stochastic": 2.7, "dual": 5.4, "original": 5.0}
BACKBONE_COST = {"small_resnet": 1.0, "densenet121": 4.0}


@dataclass(frozen=True)
class StudySettings:
    """The recipe and data settings shared by every run (an ablation overrides one field).

    ``foreground``: the ISNet foreground term, ``"hybrid"`` (relprop's and the authors' Lightning default) or
    ``"l2"`` (their MNIST scripts); ``match``: ``"relprop"`` or ``"authors"`` (their z^B first layer, BatchNorm and
    selective/stochastic details); ``tune_epochs``: C1/C2 from a separate plain run of that many epochs (0: the
    spec's C1 = 1, C2 = 25). ``"l2"`` and ``"authors"`` need a relprop whose TrainConfig has those fields.
    """

    epochs: int = 15
    batch_size: int = 32
    lr: float = 0.01
    P: float = 0.7
    d: float = 0.9
    foreground: str = "hybrid"
    match: str = "relprop"
    tune_epochs: int = 0
    rrr_lambda: float = 10.0
    width: int = 16
    size: int = 64
    n_train: int = 800
    n_external: int = 400
    n_masks: int | None = None
    evidence: float = 0.25
    acquisition: float = 0.9
    test_fraction: float = 0.2
    val_fraction: float = 0.15
    data_seed: int = 0


QUICK = StudySettings(epochs=1, width=4, size=32, n_train=40, n_external=20, n_masks=12)
#: the authors' X-ray recipe (DenseNet121 at 224 px, d = 0.996, hybrid, their LRP mode, tuned C1/C2)
AUTHORS: dict[str, Any] = {"size": 224, "d": 0.996, "foreground": "hybrid", "match": "authors", "tune_epochs": 5}

#: ablation name → the one settings field it changes (a callable of the base settings gives the value)
ABLATIONS: dict[str, tuple[str, Any]] = {
    "tuned_c1c2": ("tune_epochs", 3),
    "P0.5": ("P", 0.5),
    "epochs2x": ("epochs", lambda s: 2 * s.epochs),
    "lr0.03": ("lr", 0.03),
    "lr0.003": ("lr", 0.003),
    "d0.996": ("d", 0.996),
    "authors_mode": ("match", "authors"),
    "l2_foreground": ("foreground", "l2"),
}
DEFAULT_ABLATIONS = tuple(ABLATIONS)


@dataclass(frozen=True)
class RunSpec:
    """One training run: backbone, method, optional ablation, seed and the settings it trains with."""

    method: str
    backbone: str
    seed: int
    settings: StudySettings
    ablation: str = ""

    @property
    def label(self) -> str:
        return self.method + (f"+{self.ablation}" if self.ablation else "")

    def key(self) -> str:
        """Hash of everything that determines the run's result but the seed, the device and the number of
        epochs (a run asked for more epochs than it has resumes from its checkpoint and trains on)."""
        settings = {k: v for k, v in asdict(self.settings).items() if k != "epochs"}
        blob = json.dumps({"m": self.method, "b": self.backbone, "s": settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def folder(self, work: Path) -> Path:
        return work / self.backbone / f"{self.label}-{self.key()}-seed{self.seed}"


def ablated(settings: StudySettings, name: str) -> StudySettings:
    """``settings`` with the one field of ablation ``name`` changed."""
    key, value = ABLATIONS[name]
    return replace(settings, **{key: value(settings) if callable(value) else value})


# ----------------------------------------------------------------------------------------------------------------------
# Data


def data_config(s: StudySettings) -> Any:
    """The :class:`~relprop.data.cxr.CXRConfig` of the study's settings."""
    from ..data.cxr import CXRConfig, default_cxr_sources

    sources = default_cxr_sources(2, s.n_train, s.n_external, acquisition=s.acquisition)
    return CXRConfig(size=s.size, sources=sources, n_masks=s.n_masks, evidence=s.evidence)


@dataclass
class Split:
    """One split held in memory: images (N, 1, H, W), masks, labels, the image paths, the class names and the
    generator's ground truth (:func:`~relprop.data.cxr.load_cxr_annotations`): ``evidence`` and ``artefact``
    (bool (N, 1, H, W): the class evidence above 10 % of its nominal strength, the markers' pixels) and
    ``clean`` (the images without markers)."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    class_names: tuple[str, ...]
    evidence: torch.Tensor
    artefact: torch.Tensor
    clean: torch.Tensor

    def dataset(self, lung_only: bool = False) -> Any:
        from ..data import MaskedTensorDataset

        x = self.images * self.masks if lung_only else self.images
        return MaskedTensorDataset(x, self.masks, self.labels, self.class_names)


def load_splits(s: StudySettings, cache_dir: str = "") -> dict[str, Split]:
    """``train``, ``val``, ``test_id`` (training hospitals; disjoint, stratified by class) and the two external
    tests, read through :class:`~relprop.data.folders.MaskedImageFolder` (the loader real data sets use) and
    held in memory. Deterministic given the settings."""
    from ..data.cxr import cxr_benchmark, load_cxr_annotations
    from ..data.folders import MaskedImageFolder, split, split_by_source

    root = cxr_benchmark(data_config(s), cache_dir or None)
    ds = MaskedImageFolder(csv=root / "index.csv", channels=1)
    parts = split_by_source(ds, list(EXTERNAL_SOURCES.values()), val_fraction=0.0, seed=s.data_seed)
    pool = parts["train"]
    rest = 1.0 - s.test_fraction
    fractions = {"train": rest * (1 - s.val_fraction), "val": rest * s.val_fraction, "test_id": s.test_fraction}
    indices = {k: [pool.indices[i] for i in v.indices] for k, v in split(pool, fractions, seed=s.data_seed).items()}
    for name, source in EXTERNAL_SOURCES.items():
        indices[name] = [i for i in parts["external"].indices if ds.sources[i] == source]
    out = {}
    for name, idx in indices.items():
        items = [ds[i] for i in idx]
        paths = [ds.samples[i].image.relative_to(root).as_posix() for i in idx]
        truth = {k: torch.from_numpy(v)[:, None] for k, v in load_cxr_annotations(root, paths).items()}
        out[name] = Split(
            torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items]),
            torch.stack([it[2] for it in items]), paths, tuple(ds.class_names),
            truth["evidence"] > 0.1, truth["artefact"] > 0.1, truth["clean"],
        )  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Models and training


def model_spec(backbone: str, s: StudySettings) -> dict[str, Any]:
    """The JSON model spec of ``backbone`` (2 classes, 1 input channel)."""
    if backbone == "small_resnet":
        return {"name": "small_resnet", "num_classes": 2, "in_channels": 1, "width": s.width}
    if backbone == "densenet121":
        return {"name": "densenet121", "num_classes": 2, "in_channels": 1}
    raise UsageError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")


def build(spec: Mapping[str, Any]) -> nn.Module:
    """:func:`relprop.models.build_model`, with ``in_channels`` for torchvision architectures (their first
    convolution replaced by a freshly initialised one) where the installed build_model does not take it."""
    from ..errors import ModelLoadError
    from ..models import build_model

    try:
        return build_model(spec)
    except ModelLoadError:
        if "in_channels" not in spec or spec["name"] in ("small_resnet", "digits_cnn", "lenet5"):
            raise
    model = build_model({k: v for k, v in spec.items() if k != "in_channels"})
    path, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new = nn.Conv2d(
        int(spec["in_channels"]), conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
        conv.dilation, bias=conv.bias is not None,  # type: ignore[arg-type]
    )  # fmt: skip
    setattr(parent, attr, new)
    return model


def _train_fields() -> set[str]:
    from ..isnet import TrainConfig

    return {f.name for f in fields(TrainConfig)}


def _loss_fields() -> set[str]:
    from ..isnet import HeatmapLossConfig

    return {f.name for f in fields(HeatmapLossConfig)}


def unavailable(run: RunSpec) -> str:
    """Why this relprop cannot train ``run`` as asked ("" if it can)."""
    s = run.settings
    isnet = METHODS[run.method][0] in ISNET_METHODS
    if isnet and s.match != "relprop" and "match" not in _train_fields():
        return "needs TrainConfig.match (the authors' mode), not in this relprop yet"
    if isnet and s.foreground != "hybrid" and "foreground" not in _loss_fields():
        return "needs HeatmapLossConfig.foreground ('l2'), not in this relprop yet"
    return ""


def train_config(run: RunSpec, c1c2: tuple[float, float] | None = None) -> Any:
    """The :class:`~relprop.isnet.TrainConfig` of ``run`` (C1/C2 from tuning when given). The authors' mode
    (``match="authors"``) also switches on their loss guard (their clamp of the background term)."""
    from ..isnet import HeatmapLossConfig, TrainConfig

    s = run.settings
    kind, selective_class = METHODS[run.method]
    loss_kw: dict[str, Any] = {"d": s.d}
    if c1c2:
        loss_kw.update(C1=c1c2[0], C2=c1c2[1])
    if s.foreground != "hybrid":
        loss_kw["foreground"] = s.foreground
    if s.match == "authors" and "guard" in _loss_fields():
        loss_kw["guard"] = True
    loss = HeatmapLossConfig(**loss_kw)
    extra: dict[str, Any] = {}
    if s.match != "relprop" and "match" in _train_fields():
        extra["match"] = s.match
    return TrainConfig(
        method=kind, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, P=s.P, rrr_lambda=s.rrr_lambda,
        selective_class=selective_class, seed=run.seed, loss=loss, **extra,
    )  # fmt: skip


def _accelerator(device: str) -> str:
    return "gpu" if device.startswith("cuda") else "cpu"


def tune_c1c2(run: RunSpec, splits: Mapping[str, Split], run_dir: Path, device: str) -> tuple[float, float]:
    """C1/C2 the authors' way: a separate plain classifier trained ``tune_epochs`` epochs (seed of the run),
    the total |relevance| of its heatmaps (the run's ISNet variant, eval mode) over the training images, then
    ``tune_c1_c2``; the plain network is discarded. Cached in ``run_dir/tune.json``."""
    from ..isnet import ISNetMaps, fit, tune_c1_c2

    done = run_dir / "tune.json"
    if done.is_file():
        got = json.loads(done.read_text())
        return float(got["C1"]), float(got["C2"])
    s = run.settings
    plain = RunSpec("plain", run.backbone, run.seed, replace(s, epochs=s.tune_epochs, tune_epochs=0))
    spec = model_spec(run.backbone, s)
    torch.manual_seed(run.seed)
    model = build(spec)
    train = splits["train"].dataset()
    fit(model, train, None, train_config(plain), out_dir=run_dir / "tune", progress=False, model_spec=spec,
        accelerator=_accelerator(device))  # fmt: skip
    model.eval().to(device)
    kind, selective_class = METHODS[run.method]
    maps = ISNetMaps(model, kind, selective_class=selective_class)
    totals = []
    for start in range(0, len(train), 100):
        x = splits["train"].images[start : start + 100].to(device)
        y = splits["train"].labels[start : start + 100].to(device)
        _, heatmaps = maps(x, y, create_graph=False)
        totals.append(heatmaps.detach().abs().flatten(2).sum(2).flatten().cpu())
    c1, c2 = tune_c1_c2(torch.cat(totals))
    write_json(done, {"C1": c1, "C2": c2, "tune_epochs": s.tune_epochs, "n": len(train)})
    return c1, c2


def _nanmean(t: torch.Tensor) -> float:
    t = t[~torch.isnan(t)]
    return float(t.mean()) if len(t) else math.nan


def evaluate_model(model: nn.Module, split: Split, *, lung_only: bool, device: str, batch: int = 100) -> dict[str, Any]:
    """Metrics of ``model`` on ``split`` (masked inputs for ``lung_only``), with LRP heatmaps (ISNet rules) of the
    predicted class: accuracy, macro F1, ROC AUC, the mean background share, and from the generator's ground
    truth :func:`relprop.evaluation.artefact_effect` against the marker-free image (``artefact_shown``: Σ
    relevance on the markers / Σ their effect on the logit, over images whose logit they raise by more
    than :data:`MIN_EFFECT`;
    ``artefact_effect``: the mean effect; NaN for lung_only, whose input has no markers) and
    :func:`relprop.evaluation.mask_tiling` inside the lungs against the evidence map (``tiling``: 1 = relevance
    spread over the lungs regardless of the evidence, 0 = all on it; ``evidence_share``; opacity images only)."""
    from ..composites import isnet as isnet_composite
    from ..evaluation.artefact import artefact_effect
    from ..evaluation.background import background_share
    from ..evaluation.tiling import mask_tiling
    from ..explainer import Explainer

    model.eval().to(device)
    explainer = Explainer(model, isnet_composite(0.01, 0.0, 1.0))
    logits, shares, effects, shown, tilings, ev_shares = [], [], [], [], [], []
    x_all = split.images * split.masks if lung_only else split.images
    for start in range(0, len(x_all), batch):
        sl = slice(start, start + batch)
        x, m = x_all[sl].to(device), split.masks[sl].to(device)
        e = explainer.explain(x, "predicted")
        pred = e.logits.argmax(1)
        logits.append(e.logits.detach().cpu())
        shares.append(background_share(e.relevance, m).detach().cpu())
        if not lung_only:
            a = artefact_effect(model, x, split.clean[sl].to(device), split.artefact[sl].to(device), e.relevance,
                                target=pred, min_effect=MIN_EFFECT)  # fmt: skip
            effects.append(a.effect.cpu())
            shown.append(torch.where(a.affected, a.relevance, torch.nan).cpu())
        t = mask_tiling(e.relevance, m, split.evidence[sl].to(device))
        tilings.append(t.tiling)
        ev_shares.append(t.evidence_share)
    z, y, share = torch.cat(logits), split.labels, torch.cat(shares)
    artefact_shown = math.nan
    if effects:
        eff, rel = torch.cat(effects), torch.cat(shown)
        hit = ~torch.isnan(rel)
        artefact_shown = float(rel[hit].sum() / eff[hit].sum()) if bool(hit.any()) else math.nan
    return {
        "accuracy": float((z.argmax(1) == y).double().mean()),
        "f1": macro_f1(z.argmax(1), y, z.shape[1]),
        "auc": roc_auc(z.softmax(1)[:, 1], y),
        "background_share": _nanmean(share),
        "artefact_shown": artefact_shown,
        "artefact_effect": float(torch.cat(effects).mean()) if effects else math.nan,
        "tiling": _nanmean(torch.cat(tilings)),
        "evidence_share": _nanmean(torch.cat(ev_shares)),
        "n": len(y),
    }


#: which checkpoint of a run is evaluated: ``best.ckpt`` (lowest validation loss, as the authors) or ``last.ckpt``
CHECKPOINTS = ("best", "last")


def run_one(job: tuple[Any, ...]) -> dict[str, Any]:
    """Train (or resume) one run and evaluate its ``best`` (default) or ``last`` checkpoint; the record is cached
    in the run folder's evaluation.json (re-evaluated without training when another checkpoint is asked)."""
    _, run, work, cache_dir, device = job[:5]
    checkpoint = job[5] if len(job) > 5 else "best"
    torch.set_num_threads(1)
    from ..isnet import fit

    run_dir = run.folder(Path(work))
    done = run_dir / "evaluation.json"
    if done.is_file():
        record = dict(json.loads(done.read_text()))
        trained = int(record["settings"]["epochs"])
        if trained == run.settings.epochs and record.get("checkpoint", "last") == checkpoint:
            return record
        if trained > run.settings.epochs:
            raise UsageError(
                f"{run_dir} was trained for {trained} epochs, more than the {run.settings.epochs} asked: use "
                f"--epochs {trained} or more, or another --work folder"
            )
    base = {"method": run.method, "backbone": run.backbone, "ablation": run.ablation, "seed": run.seed,
            "label": run.label, "key": run.key(), "settings": asdict(run.settings)}  # fmt: skip
    reason = unavailable(run)
    if reason:
        return {**base, "unavailable": reason}
    splits = load_splits(run.settings, cache_dir)
    c1c2 = None
    if run.settings.tune_epochs and METHODS[run.method][0] in ISNET_METHODS:
        c1c2 = tune_c1c2(run, splits, run_dir, device)
    config = train_config(run, c1c2)
    spec = model_spec(run.backbone, run.settings)
    lung_only = run.method == "lung_only"
    torch.manual_seed(run.seed)
    model = build(spec)
    start = time.perf_counter()
    result = fit(model, splits["train"].dataset(lung_only), splits["val"].dataset(lung_only), config,
                 out_dir=run_dir, progress=False, model_spec=spec, accelerator=_accelerator(device))  # fmt: skip
    seconds = time.perf_counter() - start
    if len(result.history) > run.settings.epochs:
        raise UsageError(f"{run_dir} holds a run of {len(result.history)} epochs, more than the {run.settings.epochs} "
                         "asked: use more --epochs or another --work folder")  # fmt: skip
    if checkpoint == "best" and (run_dir / "best.ckpt").is_file():
        from ..isnet import load_checkpoint

        model = load_checkpoint(run_dir / "best.ckpt", build)[0]
    tests = {t: evaluate_model(model, splits[t], lung_only=lung_only, device=device) for t in SPLITS}
    record = {
        **base, "config": config.to_dict(), "model_spec": spec, "c1c2": c1c2, "tests": tests, "checkpoint": checkpoint,
        "history": result.history, "seconds": seconds, "device": device,
        "seconds_per_epoch": seconds_per_epoch(result.history, seconds),
    }  # fmt: skip
    write_json(done, record)
    return record


# ----------------------------------------------------------------------------------------------------------------------
# Metrics


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


# ----------------------------------------------------------------------------------------------------------------------
# Plan, aggregation, targets


@dataclass
class Plan:
    """Which runs the study makes."""

    backbones: dict[str, tuple[str, ...]]  # backbone → methods
    seeds: tuple[int, ...]
    settings: StudySettings
    ablations: tuple[str, ...] = ()
    ablation_method: str = "selective"
    ablation_backbone: str = "small_resnet"
    ablation_seeds: tuple[int, ...] = (0,)
    seeds_for: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def runs(self) -> list[RunSpec]:
        out = []
        for backbone, methods in self.backbones.items():
            for m in methods:
                for seed in self.seeds_for.get(m, self.seeds):
                    out.append(RunSpec(m, backbone, seed, self.settings))
        for name in self.ablations:
            for seed in self.ablation_seeds:
                s = ablated(self.settings, name)
                out.append(RunSpec(self.ablation_method, self.ablation_backbone, seed, s, name))
        return out


def cost(run: RunSpec) -> float:
    """Estimated CPU seconds of ``run`` relative to one small-ResNet plain epoch (times images / 1000)."""
    s = run.settings
    isnet = METHODS[run.method][0] in ISNET_METHODS
    tune = s.tune_epochs if isnet else 0
    per_epoch = COST[run.method] * BACKBONE_COST.get(run.backbone, 4.0) * (s.size / 64) ** 2
    return (per_epoch * s.epochs + tune * BACKBONE_COST.get(run.backbone, 4.0)) * 2 * s.n_train * 0.68 / 1000


def aggregate(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{backbone: {label: {seeds, "<split>/<metric>": {mean, std, values}, seconds_per_epoch}}}``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        if "tests" not in r:
            continue
        row = out.setdefault(r["backbone"], {}).setdefault(r["label"], {"seeds": [], "_runs": []})
        row["seeds"].append(r["seed"])
        row["_runs"].append(r)
    for rows in out.values():
        for row in rows.values():
            runs = row.pop("_runs")
            for t in SPLITS:
                for k in METRICS:
                    vals = [float(x["tests"][t][k]) for x in runs]
                    m, sd = mean_spread(vals)
                    row[f"{t}/{k}"] = {"mean": m, "std": sd, "values": vals}
            row["seconds_per_epoch"] = statistics.fmean(x["seconds_per_epoch"] for x in runs)
    return out


def target_check(agg: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Per backbone and ISNet variant: on ``external_markers``, is its mean accuracy above plain's by more
    than the larger seed std, and within 5 points of lung_only's?"""
    out = []
    key = "external_markers/accuracy"
    for backbone, rows in agg.items():
        plain, lung = rows.get("plain"), rows.get("lung_only")
        for method in ISNET_METHODS:
            row = rows.get(method)
            if row is None or plain is None or lung is None:
                continue
            acc = row[key]["mean"] * 100
            d_plain = acc - plain[key]["mean"] * 100
            spread = max(row[key]["std"], plain[key]["std"]) * 100
            gap = lung[key]["mean"] * 100 - acc
            above, close = d_plain > spread, gap <= 5.0
            out.append({
                "backbone": backbone, "method": method, "accuracy": acc, "vs_plain": d_plain, "spread": spread,
                "gap_to_lung_only": gap, "above_plain": above, "within_5_of_lung_only": close, "met": above and close,
                "seeds": len(row["seeds"]),
            })  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Report


def _cell(row: Mapping[str, Any], key: str) -> str:
    return fmt_mean_spread(row[key]["values"]) if key in row else "–"


def _main_table(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    head = [f"{m} {SPLIT_TITLES[t]}" for t in SPLITS for m in ("acc.", "F1", "AUC")]
    head += [f"bg share {SPLIT_TITLES[t]}" for t in SPLITS[:2]]
    lines = ["| method | seeds | " + " | ".join(f"{h} %" for h in head) + " | s / epoch |",
             "|---|---|" + "---|" * (len(head) + 1)]  # fmt: skip
    for label, row in rows.items():
        if "+" in label:
            continue
        cells = [_cell(row, f"{t}/{k}") for t in SPLITS for k in ("accuracy", "f1", "auc")]
        cells += [_cell(row, f"{t}/background_share") for t in SPLITS[:2]]
        lines.append(f"| {label} | {len(row['seeds'])} | " + " | ".join(cells) + f" | {row['seconds_per_epoch']:.1f} |")
    return lines


def _plain_cell(row: Mapping[str, Any], key: str) -> str:
    vals = [v for v in row[key]["values"] if not math.isnan(v)] if key in row else []
    if not vals:
        return "–"
    m, sd = mean_spread(vals)
    return f"{m:.2f} ± {sd:.2f}" + (f" ({len(vals)})" if len(vals) != len(row[key]["values"]) else "")


def _heatmap_table(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    cols = [("test_id/artefact_effect", "marker effect ID"), ("test_id/artefact_shown", "shown ID"),
            ("external_markers/artefact_effect", "marker effect ext. m."),
            ("external_markers/artefact_shown", "shown ext. m."), ("test_id/tiling", "tiling ID"),
            ("external_markers/tiling", "tiling ext. m."),
            ("external_markers/evidence_share", "evidence share ext. m.")]  # fmt: skip
    lines = ["| method | " + " | ".join(t for _, t in cols) + " |", "|---|" + "---|" * len(cols)]
    for label, row in rows.items():
        if "+" not in label:
            lines.append(f"| {label} | " + " | ".join(_plain_cell(row, k) for k, _ in cols) + " |")
    return lines


def _target_lines(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    if not checks:
        return ["No ISNet variant has both a plain and a lung-only reference on the same backbone yet.", ""]
    lines = [
        "Target (external_markers accuracy): above plain by more than the larger seed std, and within 5 points "
        "of lung_only.",
        "",
        "| backbone | method | ext. markers acc. % | vs plain (points) | larger std | gap to lung_only | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        parts = [("above plain" if c["above_plain"] else "NOT above plain"),
                 ("within 5 of lung_only" if c["within_5_of_lung_only"] else "NOT within 5 of lung_only")]  # fmt: skip
        verdict = ("**met**" if c["met"] else "not met") + f" ({', '.join(parts)})"
        lines.append(
            f"| {c['backbone']} | {c['method']} | {c['accuracy']:.1f} | {c['vs_plain']:+.1f} | {c['spread']:.1f} | "
            f"{c['gap_to_lung_only']:+.1f} | {verdict} |"
        )
    return lines + [""]


def _ablation_lines(agg: Mapping[str, Mapping[str, Mapping[str, Any]]], plan: Plan,
                    records: Sequence[Mapping[str, Any]]) -> list[str]:  # fmt: skip
    if not plan.ablations:
        return []
    rows = agg.get(plan.ablation_backbone, {})
    base = rows.get(plan.ablation_method)
    lung = rows.get("lung_only")
    key = "external_markers/accuracy"
    lines = [
        f"## Ablations: {plan.ablation_method} on {plan.ablation_backbone}, one recipe element at a time",
        "",
        f"Seeds {list(plan.ablation_seeds)}; Δ = change of the mean external-markers accuracy against the main "
        f"recipe's {plan.ablation_method} (its seeds as in the main table); gap = lung_only minus the run.",
        "",
        "| change | seeds | acc. ID % | acc. ext. markers % | acc. ext. acquisition % | bg share ext. markers % "
        "| Δ ext. markers | gap to lung_only |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if base is not None:
        lines.append(
            f"| main recipe | {len(base['seeds'])} | {_cell(base, 'test_id/accuracy')} | {_cell(base, key)} | "
            f"{_cell(base, 'external_acquisition/accuracy')} | {_cell(base, 'external_markers/background_share')} | "
            f"0 | {_gap(lung, base, key)} |"
        )
    skipped = {r["ablation"]: r["unavailable"] for r in records if r.get("ablation") and "unavailable" in r}
    for name in plan.ablations:
        field_name, _ = ABLATIONS[name]
        value = getattr(ablated(plan.settings, name), field_name)
        change = f"{name} ({field_name} = {value})"
        row = rows.get(f"{plan.ablation_method}+{name}")
        if row is None:
            why = skipped.get(name, "not run yet")
            lines.append(f"| {change} | 0 | – | – | – | – | {why} | – |")
            continue
        delta = (row[key]["mean"] - base[key]["mean"]) * 100 if base else math.nan
        lines.append(
            f"| {change} | {len(row['seeds'])} | {_cell(row, 'test_id/accuracy')} | {_cell(row, key)} | "
            f"{_cell(row, 'external_acquisition/accuracy')} | {_cell(row, 'external_markers/background_share')} | "
            f"{delta:+.1f} | {_gap(lung, row, key)} |"
        )
    return lines + [""]


def _gap(lung: Mapping[str, Any] | None, row: Mapping[str, Any], key: str) -> str:
    return f"{(lung[key]['mean'] - row[key]['mean']) * 100:+.1f}" if lung is not None else "–"


def _figure(out: Path, records: Sequence[Mapping[str, Any]], work: Path, cache_dir: str, device: str) -> list[str]:
    """``heatmaps_external_<backbone>.png``: external-markers images, LRP (ISNet rules, predicted class) of plain,
    the ISNet variants and lung_only (on the masked image), lowest seed, main recipe."""
    from ..composites import isnet as isnet_composite
    from ..explainer import Explainer
    from ..isnet import load_checkpoint
    from ..viz.heatmap import save_grid

    names = []
    main = [r for r in records if not r.get("ablation") and "tests" in r]
    for backbone in dict.fromkeys(r["backbone"] for r in main):
        rs = [r for r in main if r["backbone"] == backbone]
        seed = min(r["seed"] for r in rs)
        order = ["plain", *ISNET_METHODS, "lung_only"]
        chosen = [r for m in order for r in rs if r["method"] == m and r["seed"] == seed]
        if not chosen:
            continue
        settings = StudySettings(**chosen[0]["settings"])
        split = load_splits(settings, cache_dir)["external_markers"]
        labels = split.labels.tolist()
        idx = [i for c in (0, 1) for i in [k for k, y in enumerate(labels) if y == c][:2]]
        x, m = split.images[idx], split.masks[idx]
        heatmaps: dict[str, list[Any]] = {"mask": list(m)}
        preds: dict[str, list[int]] = {}
        for r in chosen:
            run = RunSpec(r["method"], backbone, seed, StudySettings(**r["settings"]))
            ckpt = run.folder(work) / f"{r.get('checkpoint', 'last')}.ckpt"
            ckpt = ckpt if ckpt.is_file() else run.folder(work) / "last.ckpt"
            if not ckpt.is_file():
                continue
            model = load_checkpoint(ckpt, build)[0].eval().to(device)
            inp = (x * m if r["method"] == "lung_only" else x).to(device)
            e = Explainer(model, isnet_composite(0.01, 0.0, 1.0)).explain(inp, "predicted")
            heatmaps[r["method"]] = list(e.relevance.detach().cpu())
            preds[r["method"]] = [int(p) for p in e.logits.argmax(1)]
        if len(heatmaps) == 1:
            continue
        cls = split.class_names
        rows = [f"{cls[labels[i]]}\n" + " ".join(f"{k[:3]}:{cls[p[j]][0]}" for k, p in preds.items())
                for j, i in enumerate(idx)]  # fmt: skip
        for k in list(heatmaps)[1:]:  # the column titles say which prediction is whose
            heatmaps[f"{k} ({k[:3]})"] = heatmaps.pop(k)
        name = f"heatmaps_external_{backbone}.png"
        title = (f"{backbone}, external_markers (hospital_c), seed {seed}: LRP of the predicted class\n"
                 "rows: true class, then each model's prediction (n = normal, o = opacity)")  # fmt: skip
        save_grid(out / name, list(x), heatmaps, row_titles=rows, title=title)
        names.append(name)
    return names


def _curves(out: Path, records: Sequence[Mapping[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._io import atomic_write_bytes

    main = [r for r in records if not r.get("ablation") and "tests" in r]
    backbones = list(dict.fromkeys(r["backbone"] for r in main))
    if not backbones:
        return []
    fig, axes = plt.subplots(1, len(backbones), figsize=(5 * len(backbones), 3.6), dpi=100, squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        for method in METHODS:
            rs = [r for r in main if r["backbone"] == backbone and r["method"] == method]
            if not rs:
                continue
            n = min(len(r["history"]) for r in rs)
            vals = [statistics.fmean(r["history"][e].get("val_acc") or math.nan for r in rs) for e in range(n)]
            ax.plot(range(1, n + 1), vals, marker="o", label=method)
        ax.set_title(f"{backbone}: validation accuracy (mean over seeds)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out / "curves.png", buf.getvalue())
    return ["curves.png"]


def _budget_lines(records: Sequence[Mapping[str, Any]], plan: Plan, jobs: int) -> list[str]:
    measured: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if "tests" in r and not r.get("ablation"):
            measured.setdefault((r["backbone"], r["method"]), []).append(r["seconds_per_epoch"])
    lines = ["## Compute", ""]
    s = plan.settings
    if measured:
        n = 2 * s.n_train * (1 - s.test_fraction) * (1 - s.val_fraction)
        lines += [f"Measured training seconds per epoch (median epoch of each run, mean over runs; one thread per run; "
                  f"{n:.0f} training images):", "", "| backbone | method | s / epoch |", "|---|---|---|"]  # fmt: skip
        for (b, m), v in measured.items():
            lines.append(f"| {b} | {m} | {statistics.fmean(v):.1f} |")
        lines.append("")
    total = sum(cost(r) for r in plan.runs())
    unit = _unit_seconds(records)
    if unit:
        lines.append(f"Estimated CPU time of the whole plan from these measurements: {total * unit / 3600:.1f} "
                     f"core-hours ({total * unit / 3600 / jobs:.1f} h with {jobs} parallel runs).")  # fmt: skip
        lines.append("")
    return lines


def _unit_seconds(records: Sequence[Mapping[str, Any]]) -> float | None:
    """Seconds of one cost unit (see :func:`cost`), fitted to the finished CPU runs (None without any)."""
    pairs = []
    for r in records:
        if "tests" in r and r.get("device", "cpu") == "cpu":
            run = RunSpec(r["method"], r["backbone"], r["seed"], StudySettings(**r["settings"]), r.get("ablation", ""))
            pairs.append((r["seconds"], cost(run)))
    if not pairs:
        return None
    return sum(a for a, _ in pairs) / sum(b for _, b in pairs)


def run_study(out: Path, *, methods: Sequence[str] = DEFAULT_METHODS, seeds: Sequence[int] = (0, 1, 2),
              settings: StudySettings = StudySettings(), work: Path, jobs: int = 2, cache_dir: str = "",  # noqa: B008
              command: str = "", seeds_for: Mapping[str, Sequence[int]] | None = None,
              backbones: Mapping[str, Sequence[str]] | None = None, ablations: Sequence[str] = (),
              ablation_method: str = "selective", ablation_seeds: Sequence[int] = (0,), device: str = "cpu",
              checkpoint: str = "best",
              ) -> dict[str, Any]:  # fmt: skip
    """Train and evaluate every run of the plan (reusing finished runs under ``work``), then write the report.

    ``backbones`` maps each backbone to its methods (default: ``{"small_resnet": methods}``); ``ablations``
    (names of :data:`ABLATIONS`) run ``ablation_method`` on ``small_resnet`` with ``ablation_seeds``;
    ``seeds_for`` overrides the seeds of some methods."""
    unknown = [m for ms in (backbones or {"": methods}).values() for m in ms if m not in METHODS]
    unknown += [a for a in ablations if a not in ABLATIONS]
    if unknown:
        raise UsageError(f"unknown method(s) or ablation(s) {', '.join(unknown)}; methods: {', '.join(METHODS)}; "
                         f"ablations: {', '.join(ABLATIONS)}")  # fmt: skip
    if ablations and ablation_method not in ISNET_METHODS:
        raise UsageError(f"--ablation-method {ablation_method}: choose one of {', '.join(ISNET_METHODS)}")
    plan = Plan(
        {b: tuple(ms) for b, ms in (backbones or {"small_resnet": methods}).items()}, tuple(seeds), settings,
        tuple(ablations), ablation_method, "small_resnet", tuple(ablation_seeds),
        {m: tuple(v) for m, v in (seeds_for or {}).items()},
    )  # fmt: skip
    for b in plan.backbones:
        model_spec(b, settings)  # unknown backbone: a clear error before anything runs
    start = time.perf_counter()
    load_splits(settings, cache_dir)  # build the benchmark once, before the workers start
    runs = plan.runs()
    if checkpoint not in CHECKPOINTS:
        raise UsageError(f"checkpoint={checkpoint!r}: choose one of {', '.join(CHECKPOINTS)}")
    todo = [(r.method, r, str(work), cache_dir, device, checkpoint) for r in runs]
    seed_rank = {seed: i for i, seed in enumerate(dict.fromkeys(r.seed for r in runs))}
    todo.sort(key=lambda j: (seed_rank[j[1].seed], -cost(j[1])))  # the first seed of everything first
    records = run_jobs(run_one, todo, jobs, "cxr study")
    order = {(r.backbone, r.label, r.seed): i for i, r in enumerate(runs)}
    records.sort(key=lambda r: order.get((r["backbone"], r["label"], r["seed"]), 0))
    agg = aggregate(records)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figure(out, records, work, cache_dir, device) + _curves(out, records)
    results = {
        "command": command, "settings": asdict(settings), "plan": {
            "backbones": {b: list(m) for b, m in plan.backbones.items()}, "seeds": list(seeds),
            "ablations": list(ablations), "ablation_method": ablation_method, "ablation_seeds": list(ablation_seeds),
        },
        "aggregate": agg, "targets": target_check(agg), "runs": records, "device": device, "checkpoint": checkpoint,
        "wall_seconds": time.perf_counter() - start, "machine": machine(),
    }  # fmt: skip
    write_json(out / "results.json", results)
    _write_report(out, results, plan, records, figures, jobs)
    return results


def _write_report(out: Path, results: Mapping[str, Any], plan: Plan, records: Sequence[Mapping[str, Any]],
                  figures: Sequence[str], jobs: int) -> None:  # fmt: skip
    s = plan.settings
    n_train = 2 * s.n_train * (1 - s.test_fraction) * (1 - s.val_fraction)
    lines = [
        "# CXR-style reproduction: ISNet against hospital markers, with a lung-only ceiling",
        "",
        f"Regenerate: `{results['command']}`" if results["command"] else "",
        "",
        *discussion_link(out),
        "## Set-up",
        "",
        f"- Data (`relprop.data.cxr.cxr_benchmark`, {s.size}×{s.size} grey, normal/opacity, evidence "
        f"{s.evidence} inside real lung masks): {s.n_train} images from each training hospital (hospital_a, "
        "hospital_b; the PORTABLE tag, a border frame and a laterality letter outside the lungs correlate with the "
        f"class), split per class into test_id ({s.test_fraction:.0%}), val and train (≈{n_train:.0f} images). "
        f"Two external hospitals of {s.n_external} images each, on held-out lung masks: **external_markers** "
        "(hospital_c) differs only in its markers (rates independent of the class, a new letter position); "
        f"**external_acquisition** (hospital_d) differs only in its acquisition (contrast ×{s.acquisition} over the "
        "whole image, lungs included; markers at the training rates, no letter). The data are written as an "
        "image + mask folder and read with `MaskedImageFolder`, the loader for real data sets.",
        f"- Models: small_resnet = SmallResNet width {s.width}; densenet121 = torchvision DenseNet121, weights=None, "
        "first convolution with 1 input channel. SGD momentum 0.9, gradient-norm clipping 1, "
        f"lr {s.lr}, batch {s.batch_size}, {s.epochs} epochs, one thread per run; each run is evaluated at its "
        f"{results['checkpoint']} checkpoint"
        + (" (lowest validation loss)." if results["checkpoint"] == "best" else "."),
        "- Methods: **lung_only** = plain classifier trained and tested on masked inputs (background 0): the "
        f"ceiling; **plain**; **rrr** (λ = {s.rrr_lambda}); ISNet **selective** (log-odds of the true class), "
        f"**stochastic**, **dual**, **original**, with P = {s.P}, d = {s.d}, foreground term '{s.foreground}', "
        f"mode '{s.match}', "
        + (f"C1/C2 tuned by a separate {s.tune_epochs}-epoch plain run." if s.tune_epochs else "C1 = 1, C2 = 25.")
        + "",
        "- Metrics: accuracy, macro F1, ROC AUC (softmax probability of opacity) and the background share "
        "Σ_bg |R| / Σ |R| of LRP heatmaps (ISNet rules: z^B input, ε = 0.01, predicted class), mean over test "
        "images; mean ± std over seeds.",
        "",
        "## Results",
        "",
    ]
    agg = results["aggregate"]
    for backbone, rows in agg.items():
        lines += [f"### {backbone}", "", *_main_table(rows), ""]
    lines += [
        "### What the heatmaps show of the markers and of the evidence",
        "",
        "From the generator's ground truth (`relprop.data.cxr.render_cxr_layers`). *Marker effect*: mean rise of "
        "the predicted logit from the markers (image minus the same image without markers, logit units). *Shown*: "
        "`relprop.evaluation.artefact_effect`, Σ LRP relevance on the markers' pixels / Σ that rise, over the "
        f"images whose logit the markers raise by more than {MIN_EFFECT} (1 = the heatmap accounts for the whole "
        "effect, 0 = the effect is invisible). *Tiling*: `relprop.evaluation.mask_tiling` inside the lungs of "
        "opacity images, (1 − evidence share) / (1 − evidence area share): 0 = all lung relevance on the "
        "opacities, 1 = spread over the lungs as if the evidence did not matter. *Evidence share*: fraction of the"
        " lung relevance on the opacities. lung_only sees no markers (–). Mean ± std over seeds (runs with a "
        "defined value in brackets when fewer).",
        "",
    ]
    for backbone, rows in agg.items():
        lines += [f"{backbone}:", "", *_heatmap_table(rows), ""]
    lines += ["## Target check", "", *_target_lines(results["targets"])]
    lines += _ablation_lines(agg, plan, records)
    for name in figures:
        lines += [f"![{name}]({name})", ""]
    lines += _budget_lines(records, plan, jobs)
    lines += [
        "## The authors' settings",
        "",
        "`--preset authors --device cuda` trains DenseNet121 at 224 px with d = 0.996, the hybrid foreground "
        "term, the authors' LRP mode (`match='authors'`, where this relprop has it) and C1/C2 tuned by a separate "
        "5-epoch plain run; each of these can also be set alone (`--backbones`, `--size`, `--d`, `--foreground`, "
        "`--match`, `--tune-epochs`). The authors also start from ImageNet weights, which cannot be downloaded "
        "here (weights=None throughout). At 224 px an epoch costs about 12× the 64-px one, which is why the CPU "
        "defaults use 64 px.",
        "",
        f"Wall time of this invocation: {results['wall_seconds'] / 60:.1f} min (finished runs under the work "
        "folder are reused, so a regenerated report can take less).",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The study's options (also for ``relprop study cxr``)."""
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for report.md, results.json, PNGs")
    p.add_argument("--work", type=Path, default=Path(".cache/relprop/cxr-study"), metavar="DIR",
                   help="folder for the training runs (resumable; default .cache/relprop/cxr-study)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test; numbers not meaningful)")
    p.add_argument("--preset", choices=["authors"], help="the authors' X-ray settings (DenseNet121, 224 px, "
                   "d = 0.996, hybrid, authors' mode, tuned C1/C2); other options override it")
    p.add_argument("--backbones", nargs="+", choices=BACKBONES, metavar="B",
                   help=f"backbones (default {' '.join(BACKBONES)}; each with its default methods)")
    p.add_argument("--methods", nargs="+", metavar="M", help=f"methods on every backbone (default: small_resnet "
                   f"all of {', '.join(METHODS)}; densenet121 {', '.join(DEFAULT_BACKBONE_METHODS['densenet121'])})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="S", help="seeds (default 0 1 2)")
    p.add_argument("--costly-seeds", nargs="+", type=int, metavar="S", help="seeds for dual and original only")
    p.add_argument("--ablations", nargs="*", metavar="A", help=f"ablations (default all: {' '.join(ABLATIONS)}; "
                   "none: --ablations with no name)")
    p.add_argument("--ablation-method", default="selective", help="ISNet variant of the ablations (selective)")
    p.add_argument("--ablation-seeds", nargs="+", type=int, default=[0], metavar="S", help="their seeds (0)")
    for name, kind in (("epochs", int), ("lr", float), ("P", float), ("d", float), ("size", int), ("width", int),
                       ("n_train", int), ("n_external", int), ("evidence", float), ("tune_epochs", int),
                       ("batch_size", int)):  # fmt: skip
        p.add_argument(f"--{name.replace('_', '-')}", dest=f"set_{name}", type=kind, metavar="X",
                       help=f"settings.{name} (default {getattr(StudySettings(), name)})")
    p.add_argument("--foreground", dest="set_foreground", choices=["hybrid", "l2"], help="ISNet foreground term")
    p.add_argument("--match", dest="set_match", choices=["relprop", "authors"], help="LRP/variant details")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best",
                   help="evaluate each run's lowest-validation-loss (best, default) or last checkpoint")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each (default 2)")
    p.add_argument("--data-cache", default="", help=argparse.SUPPRESS)


def run_cli(args: argparse.Namespace, command: str) -> int:
    """Run the study from parsed :func:`add_arguments` options."""
    settings = QUICK if args.quick else StudySettings()
    if args.preset == "authors":
        preset = dict(AUTHORS)
        if args.quick:  # tiny sizes still
            preset.update(size=settings.size, tune_epochs=1)
        settings = replace(settings, **preset)
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("set_") and v is not None}
    settings = replace(settings, **overrides)
    if settings.epochs < 1 or args.jobs < 1:
        raise UsageError("--epochs and --jobs must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
    backbones_list = args.backbones or (["densenet121"] if args.preset == "authors" else list(BACKBONES))
    if args.quick and not args.backbones:
        backbones_list = ["small_resnet"]
    backbones = {b: tuple(args.methods or DEFAULT_BACKBONE_METHODS[b]) for b in backbones_list}
    ablations = DEFAULT_ABLATIONS if args.ablations is None else tuple(args.ablations)
    if args.quick and args.ablations is None:
        ablations = ()
    seeds_for = {m: tuple(args.costly_seeds) for m in ("dual", "original")} if args.costly_seeds else None
    try:
        run_study(args.out, seeds=args.seeds, settings=settings, work=args.work, jobs=args.jobs,
                  cache_dir=args.data_cache, command=command, seeds_for=seeds_for, backbones=backbones,
                  ablations=ablations, ablation_method=args.ablation_method, ablation_seeds=args.ablation_seeds,
                  device=args.device, checkpoint=args.checkpoint)  # fmt: skip
    except KeyboardInterrupt:
        raise KeyboardInterrupt("finished runs are kept under --work and reused next time") from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m relprop.studies.cxr``: the study with every option; exit status 2 on a usage error."""
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m relprop.studies.cxr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    args = parser.parse_args(argv)
    command = "python -m relprop.studies.cxr " + " ".join(shlex.quote(a) for a in argv)
    try:
        return run_cli(args, command)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
