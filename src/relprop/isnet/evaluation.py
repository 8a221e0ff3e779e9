"""Evaluating background-bias mitigation: accuracy per test split and the share of relevance on the
background, Σ_bg |R| / Σ |R| (:func:`relprop.evaluation.background_share`), of LRP heatmaps (the ISNet
rules: z^B at the input, ε = 0.01 in hidden layers, LRP-0 at the classifier layer) for the predicted class."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence, Sized
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..composites import isnet as isnet_composite
from ..errors import InputError
from ..evaluation.artefact import ArtefactEffect, artefact_effect
from ..evaluation.background import background_share
from ..evaluation.tiling import MaskTiling, evidence_from_input, mask_tiling
from ..explainer import Explainer
from ..viz.heatmap import save_grid


def _batches(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def evaluate(
    model: nn.Module,
    splits: Mapping[str, Dataset],
    *,
    batch_size: int = 250,
    low: float = 0.0,
    high: float = 1.0,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Accuracy and mean background relevance share on each split of (image, mask, label) items.

    The model is evaluated in eval mode (its mode is restored afterwards); returns
    ``{split: {"accuracy", "background_share", "background_share_undefined", "n"}}``. The share is the mean
    over the images with relevance; images whose relevance is 0 everywhere (a collapsed model, constant logits)
    have no share: they are counted in ``background_share_undefined``, with a warning, and a split without any
    image with relevance has ``background_share`` NaN (undefined, never 0: that would read as perfect)."""
    was_training = model.training
    model.eval()
    explainer = Explainer(model, isnet_composite(0.01, low, high))
    results: dict[str, dict[str, float]] = {}
    try:
        for name, dataset in splits.items():
            correct, shares, n = 0, [], 0
            loader = _batches(dataset, batch_size)
            for x, mask, y in tqdm(loader, desc=f"evaluating {name}", unit="batch", disable=not progress, leave=False):
                e = explainer.explain(x, "predicted")
                correct += int((e.logits.argmax(1) == y).sum())
                shares.append(background_share(e.relevance, mask))
                n += len(y)
            if n == 0:
                raise InputError(f"split {name!r} is empty")
            share = torch.cat(shares)
            undefined = int(torch.isnan(share).sum())
            if undefined:
                warnings.warn(
                    f"split {name!r}: {undefined} of {n} images have no relevance at all (Σ|R| = 0: constant logits, a "
                    "collapsed model?); their background share is undefined"
                    + ("" if undefined < n else ", and so is the split's")
                    + ", not 0",
                    stacklevel=2,
                )
            results[name] = {
                "accuracy": correct / n,
                "background_share": float(share.nanmean()) if undefined < n else float("nan"),
                "background_share_undefined": float(undefined),
                "n": float(n),
            }
    finally:
        model.train(was_training)
    return results


def _len(dataset: Dataset, what: str) -> int:
    if not isinstance(dataset, Sized):
        raise InputError(f"{what} ({type(dataset).__name__}) has no len(): give a map-style data set")
    return len(dataset)


def shortcut_measures(
    model: nn.Module,
    with_artefact: Dataset,
    without: Dataset,
    artefact: Tensor,
    *,
    evidence: Tensor | None = None,
    evidence_threshold: float = 0.5,
    batch_size: int = 250,
    low: float = 0.0,
    high: float = 1.0,
    progress: bool = True,
) -> dict[str, float]:
    """Whether a shortcut hides from the heatmap, and whether the heatmap tiles the mask.

    ``with_artefact`` and ``without`` hold the same images, item by item, with and without the artefact
    (``artefact``: bool (N, 1, H, W), where it is). With the ISNet rules' heatmaps of the predicted class on the
    images with the artefact: :func:`relprop.evaluation.artefact_effect` (``artefact_shown``: Σ relevance on
    the artefact / Σ its counterfactual effect on the logit, over the images whose logit it raises;
    ``artefact_correlation``; ``artefact_effect``: the mean effect) and :func:`relprop.evaluation.mask_tiling`
    inside the foreground mask (``tiling``, ``spread``, ``evidence_share``), the evidence being ``evidence``
    (N, 1, H, W) or, by default, the pixels of the image without the artefact brighter than
    ``evidence_threshold`` inside the mask (digit strokes). The model is evaluated in eval mode (restored after).
    """
    n, m = _len(with_artefact, "with_artefact"), _len(without, "without")
    if m != n or artefact.shape[0] != n:
        raise InputError(
            f"with_artefact has {n} items, without {m} and artefact {artefact.shape[0]} masks: "
            "give the same images with and without the artefact, and one artefact mask per image"
        )
    if evidence is not None and evidence.shape[0] != n:
        raise InputError(f"evidence has {evidence.shape[0]} maps but the data sets have {n} images")
    was_training = model.training
    model.eval()
    explainer = Explainer(model, isnet_composite(0.01, low, high))
    effects, tilings = [], []
    try:
        pairs = zip(_batches(with_artefact, batch_size), _batches(without, batch_size), strict=True)
        start = 0
        for (x, mask, _), (x0, _, _) in tqdm(pairs, desc="shortcut measures", unit="batch", disable=not progress,
                                             leave=False, total=-(-n // batch_size)):  # fmt: skip
            stop = start + len(x)
            e = explainer.explain(x, "predicted")
            effects.append(artefact_effect(model, x, x0, artefact[start:stop], e.relevance,
                                           target=e.logits.argmax(1)))
            ev = evidence[start:stop] if evidence is not None else evidence_from_input(x0, mask, evidence_threshold)
            tilings.append(mask_tiling(e.relevance, mask, ev))
            start = stop
    finally:
        model.train(was_training)
    def cat(parts: Sequence[object], field: str) -> Tensor:
        return torch.cat([getattr(p, field) for p in parts])

    effect = ArtefactEffect(cat(effects, "effect"), cat(effects, "relevance"), cat(effects, "logit"),
                            cat(effects, "targets"))  # fmt: skip
    tiling = MaskTiling(cat(tilings, "evidence_share"), cat(tilings, "area_share"), cat(tilings, "tiling"),
                        cat(tilings, "spread"))  # fmt: skip
    a, t = effect.summary(), tiling.summary()
    return {
        "artefact_shown": a["shown"], "artefact_correlation": a["correlation"], "artefact_effect": a["mean_effect"],
        "artefact_relevance": a["mean_relevance"], "artefact_affected": a["affected"], "tiling": t["tiling"],
        "spread": t["spread"], "evidence_share": t["evidence_share"], "tiling_undefined": t["tiling_undefined"],
    }  # fmt: skip


def heatmap_figure(
    models: Mapping[str, nn.Module],
    dataset: Dataset,
    path: str | Path,
    *,
    indices: Sequence[int] | None = None,
    low: float = 0.0,
    high: float = 1.0,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """A PNG grid: one row per image (default: the first of each class), columns input, mask and each
    model's LRP heatmap for its predicted class (the prediction is in the column's row label)."""
    if indices is None:
        if not isinstance(dataset, Sized):
            raise InputError(f"{type(dataset).__name__} has no len(): pass indices= to choose the images")
        labels = [int(dataset[i][2]) for i in range(len(dataset))]
        seen: dict[int, int] = {}
        for i, c in enumerate(labels):
            seen.setdefault(c, i)
        indices = [seen[c] for c in sorted(seen)]
    items = [dataset[i] for i in indices]
    x = torch.stack([it[0] for it in items])
    mask = torch.stack([it[1] for it in items])
    y = [int(it[2]) for it in items]
    names = class_names or [str(c) for c in range(max(y) + 1)]
    heatmaps: dict[str, list[Tensor]] = {"mask": list(mask)}
    predictions: dict[str, list[int]] = {}
    for label, model in models.items():
        was_training = model.training
        model.eval()
        try:
            e = Explainer(model, isnet_composite(0.01, low, high)).explain(x, "predicted")
        finally:
            model.train(was_training)
        heatmaps[label] = list(e.relevance)
        predictions[label] = [int(p) for p in e.logits.argmax(1)]
    rows = []
    for k, c in enumerate(y):
        preds = ", ".join(f"{label.split()[-1][:8]}: {names[p[k]]}" for label, p in predictions.items())
        rows.append(f"{names[c]} ({preds})" if len(models) <= 2 else names[c])
    return save_grid(path, list(x), heatmaps, row_titles=rows, title=title)


__all__ = ["background_share", "evaluate", "heatmap_figure", "shortcut_measures"]
