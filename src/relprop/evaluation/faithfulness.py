"""Faithfulness: pixel flipping and region perturbation curves, AOPC and the area under the curve.

:func:`pixel_flipping` is vectorised over the batch: it sorts the relevance of each sample once, turns it
into a rank per pixel (or region), and builds each perturbed input as ``where(rank < n_k, baseline, x)``.
All B × (S+1) perturbed inputs are evaluated in chunks of ``batch_size`` under ``torch.no_grad()``, so a
20-step curve costs B·21 forward passes, batched, and nothing per pixel runs in Python.

Definitions
-----------
* **Pixel flipping / region perturbation** (Bach et al. 2015; Samek et al. 2017). The input is split
  into regions: non-overlapping ``patch × patch`` squares of the spatial dimensions, each spanning all
  channels (``patch=1``: single pixels, all channels; inputs of shape (B, F): single features). A region's
  relevance is the sum of the relevance in it. Regions are ordered by relevance, most relevant first
  (``"morf"``) or least relevant first (``"lerf"``), ties broken by region index. After step k of S,
  the first ``n_k = ceil(k·N/S)`` regions of that order hold the baseline, and the model's score for the
  target is recorded. ``fractions[k] = n_k / N``.
* **AOPC** (Samek et al. 2017): ``1/(S+1) Σ_{k=0..S} (f(x⁽⁰⁾) − f(x⁽ᵏ⁾))``. Higher is better for MoRF.
* **Area under the curve**: trapezoidal area of the score over the perturbed fraction (x axis in [0, 1]);
  lower is better for MoRF, higher for LeRF. (Quantus's ``calculate_auc`` integrates over the step index
  with ``dx=1`` instead, and its curve omits the unperturbed point.)

The model is used in the mode it is in (call ``model.eval()`` first); it is never modified.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import InputError
from ._common import TargetLike, check_batch, check_range, logits_of, targets_of, warn_training

__all__ = ["Baseline", "PerturbationCurve", "aopc", "area_under_curve", "pixel_flipping"]

Baseline: TypeAlias = float | str | Tensor
"""What perturbed regions hold: a value, ``"mean"`` (per-image channel mean) or a tensor like x."""


@dataclass
class PerturbationCurve:
    """Result of :func:`pixel_flipping`.

    Attributes:
        fractions: (S+1,) fraction of the input perturbed after each step, from 0 to 1.
        scores: (B, S+1) model score for the target after each step (``scores[:, 0]``: unperturbed input).
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
    """

    fractions: Tensor
    scores: Tensor
    order: str

    @property
    def steps(self) -> int:
        return self.scores.shape[1] - 1


def _region_index(shape: tuple[int, ...], patch: int, device: torch.device) -> tuple[Tensor, int]:
    """Region id of every element of one sample of ``shape`` (without batch), and the number of regions.

    (F,): every feature is a region. (C, *spatial): non-overlapping patch^d blocks of the spatial
    dimensions, each spanning all channels."""
    if len(shape) == 1:
        if patch != 1:
            raise InputError(f"patch={patch} needs inputs with spatial dimensions (B, C, ...), got (B, {shape[0]})")
        return torch.arange(shape[0], device=device), shape[0]
    spatial = shape[1:]
    bad = [s for s in spatial if s % patch]
    if bad:
        raise InputError(
            f"patch={patch} does not divide the input's spatial size {tuple(spatial)}; "
            "region perturbation needs non-overlapping patches that tile the input"
        )
    grid = [s // patch for s in spatial]
    n = math.prod(grid)
    ids = torch.arange(n, device=device).view(grid)
    for d in range(len(grid)):
        ids = ids.repeat_interleave(patch, dim=d)
    return ids.unsqueeze(0).expand(shape).reshape(-1), n


def _baseline(baseline: Baseline, x: Tensor) -> Tensor | float:
    if isinstance(baseline, bool):
        raise InputError("baseline must be a float, 'mean' or a tensor, not a bool")
    if isinstance(baseline, (int, float)):
        return float(baseline)
    if isinstance(baseline, str):
        if baseline != "mean":
            raise InputError(f"baseline={baseline!r}: the only string baseline is 'mean' (per-image channel mean)")
        if x.dim() < 3:
            return x.mean(dim=1, keepdim=True).expand_as(x)
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True).expand_as(x)
    if isinstance(baseline, Tensor):
        try:
            return baseline.to(x).broadcast_to(x.shape)
        except RuntimeError as exc:
            raise InputError(
                f"baseline tensor of shape {tuple(baseline.shape)} cannot be broadcast to the input's "
                f"shape {tuple(x.shape)}"
            ) from exc
    raise InputError(f"unsupported baseline {baseline!r}: use a float, 'mean' or a tensor like x")


@torch.no_grad()
def pixel_flipping(
    model: nn.Module,
    x: Tensor,
    relevance: Tensor,
    target: TargetLike,
    *,
    order: str = "morf",
    steps: int = 20,
    patch: int = 1,
    baseline: Baseline = 0.0,
    score: str = "logit",
    batch_size: int = 64,
    progress: bool = False,
) -> PerturbationCurve:
    """Pixel flipping (``patch=1``) or region perturbation (``patch > 1``) for a batch.

    Args:
        model: maps x to logits (B, C); used as it is (call ``model.eval()`` first).
        x: input batch (B, ...); images (B, C, H, W).
        relevance: relevance shaped like ``x``, or channel-summed (B, 1, *spatial).
        target: class index, LongTensor (B,), or ``"predicted"`` (arg-max on the unperturbed input).
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
        steps: number S of perturbation steps; after step k, ``ceil(k·N/S)`` of the N regions hold the
            baseline (1 ≤ S ≤ N).
        patch: side of the square regions (all channels); must divide the spatial size.
        baseline: value the perturbed regions take: a float, ``"mean"`` (per-image channel mean), or a
            tensor broadcastable to x.
        score: ``"logit"`` or ``"probability"`` (softmax) of the target class.
        batch_size: perturbed inputs per forward pass.
        progress: show a tqdm progress bar over the forward passes.

    Returns:
        a :class:`PerturbationCurve` with ``fractions`` (S+1,) and ``scores`` (B, S+1).
    """
    x = check_batch(x)
    relevance = check_batch(relevance, "relevance")
    if order not in ("morf", "lerf"):
        raise ValueError(f"order={order!r}: use 'morf' (most relevant first) or 'lerf' (least relevant first)")
    if score not in ("logit", "probability"):
        raise ValueError(f"score={score!r}: use 'logit' or 'probability'")
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise ValueError(f"patch must be a positive integer, got {patch!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    b = x.shape[0]
    summed_shape = (b, 1, *x.shape[2:]) if x.dim() >= 3 else None
    if relevance.shape != x.shape and relevance.shape != summed_shape:
        allowed = f"{tuple(x.shape)}" + (f" or channel-summed {summed_shape}" if summed_shape else "")
        raise InputError(f"relevance has shape {tuple(relevance.shape)} but x has shape {allowed}")
    if not bool(torch.isfinite(relevance).all()):
        raise InputError("relevance contains NaN or Inf values; the perturbation order is undefined")
    warn_training(model, "pixel_flipping", stacklevel=4)  # under the no_grad decorator

    device = x.device
    region_of, n_regions = _region_index(tuple(x.shape[1:]), patch, device)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n_regions:
        raise ValueError(f"steps must be an integer between 1 and the number of regions ({n_regions}), got {steps!r}")

    # relevance per region, then the rank of each region in the perturbation order
    r = relevance.to(device=device, dtype=torch.float64)
    if r.shape != x.shape:
        r = r.expand(x.shape)
    r_region = torch.zeros(b, n_regions, dtype=torch.float64, device=device)
    r_region.index_add_(1, region_of, r.reshape(b, -1))
    ordering = torch.sort(r_region, dim=1, descending=order == "morf", stable=True).indices
    rank = torch.empty_like(ordering)
    rank.scatter_(1, ordering, torch.arange(n_regions, device=device).expand(b, -1))
    rank_el = rank[:, region_of].view(x.shape)  # rank of the region each element belongs to

    k = torch.arange(steps + 1, device=device)
    n_k = torch.div(k * n_regions + steps - 1, steps, rounding_mode="floor")  # ceil(k N / S)
    fractions = n_k.to(torch.float64) / n_regions
    base = _baseline(baseline, x)

    pairs = b * (steps + 1)
    scores = torch.empty(pairs, dtype=torch.float64, device=device)
    if isinstance(target, str):
        targets_of(target, b, device, logits=x.new_zeros(b, 1))  # validates the string
        targets = torch.cat([logits_of(model, x[i : i + batch_size]).argmax(1) for i in range(0, b, batch_size)])
    else:
        targets = targets_of(target, b, device)
    chunks: Iterable[int] = range(0, pairs, batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"pixel flipping ({order})", unit="batch")
    for start in chunks:
        p = torch.arange(start, min(start + batch_size, pairs), device=device)
        bi, ki = p // (steps + 1), p % (steps + 1)
        mask = rank_el[bi] < n_k[ki].view(-1, *([1] * (x.dim() - 1)))
        xb = x[bi]
        xp = torch.where(mask, base if isinstance(base, float) else base[bi], xb)
        out = logits_of(model, xp)
        check_range(targets, out.shape[1])
        if score == "probability":
            out = torch.softmax(out.double(), dim=1)
        scores[p] = out.gather(1, targets[bi].unsqueeze(1)).squeeze(1).to(torch.float64)
    return PerturbationCurve(fractions, scores.view(b, steps + 1).to(x.dtype), order)


def aopc(curve: PerturbationCurve) -> Tensor:
    """Area over the perturbation curve (B,): mean over k = 0..S of ``scores[:, 0] − scores[:, k]``."""
    s = curve.scores
    return (s[:, :1] - s).mean(dim=1)


def area_under_curve(curve: PerturbationCurve) -> Tensor:
    """Trapezoidal area (B,) of the scores over the perturbed fraction (x from 0 to 1)."""
    return torch.trapezoid(curve.scores, curve.fractions.to(curve.scores), dim=1)
