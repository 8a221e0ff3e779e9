"""Evaluation metrics for heatmaps: faithfulness (pixel flipping, region perturbation, AOPC), a model
randomisation sanity check, stability under input noise, and conservation.

Everything here works on batches and is vectorised: :func:`pixel_flipping` sorts the relevance of each
sample once, turns it into a rank per pixel (or region), and builds each perturbed input as
``where(rank < n_k, baseline, x)``. All B × (S+1) perturbed inputs are evaluated in chunks of
``batch_size`` under ``torch.no_grad()``, so a 20-step curve costs B·21 forward passes, batched, and
nothing per pixel runs in Python.

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
* **Randomisation check** (Adebayo et al. 2018, cascading): on a deep copy, the weighted layers
  (Linear/Conv) are re-initialised (``reset_parameters``) from the output towards the input, one at a time
  and cumulatively; after each, the Spearman rank correlation between |heatmap| and |original heatmap|
  (heatmap = relevance summed over channels).
* **Stability**: mean Pearson correlation between the heatmap of x and of ``x + noise·std(x)·N(0, 1)``
  (std per sample) over ``n`` draws.
* **Conservation error**: ``|Σ R_in − Σ R_out| / |Σ R_out|``.

Correlations of a constant map (e.g. all-zero relevance) are undefined and come out as NaN.

The models are used in the mode they are in (call ``model.eval()`` first); they are never modified.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..composites import Composite
from ..errors import InputError, TargetError
from ..explainer import Explainer, Explanation
from ..graph import LINEAR_MODULES
from ..rules import Rule

__all__ = [
    "PerturbationCurve",
    "aopc",
    "area_under_curve",
    "conservation_error",
    "heatmap_correlation",
    "pixel_flipping",
    "quantus_explain_func",
    "randomisation_check",
    "stability",
]

Baseline = Union[float, str, Tensor]
TargetLike = Union[int, str, Tensor]


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


# -- helpers ------------------------------------------------------------------------------------------
def _check_batch(x: Any, what: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor, not {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{what} has dtype {x.dtype}; a floating-point tensor is needed")
    if x.dim() < 2:
        raise InputError(f"{what} must be a batch of shape (B, ...), got shape {tuple(x.shape)}")
    return x


def _targets(target: TargetLike, b: int, device: torch.device, logits: Tensor | None = None) -> Tensor:
    """Target class per sample as a LongTensor (B,)."""
    if isinstance(target, str):
        if target != "predicted" or logits is None:
            raise TargetError(f"target={target!r}: use a class index, a LongTensor (B,) or 'predicted'")
        return logits.argmax(1)
    if isinstance(target, bool):
        raise TargetError("target must be a class index, not a bool")
    if isinstance(target, (int, np.integer)):
        return torch.full((b,), int(target), dtype=torch.long, device=device)
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(target)
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex():
            raise TargetError(f"target must hold class indices (an integer tensor), got dtype {target.dtype}")
        t = target.to(device=device, dtype=torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        if t.numel() != b:
            raise TargetError(f"target has {t.numel()} indices but the batch has {b} samples")
        return t
    raise TargetError(f"unsupported target {target!r}: use an int, a LongTensor (B,) or 'predicted'")


def _check_range(t: Tensor, c: int) -> None:
    bad = (t < 0) | (t >= c)
    if bool(bad.any()):
        raise TargetError(f"target class {int(t[bad][0])} is out of range: the model has {c} outputs (0..{c - 1})")


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    if not isinstance(out, Tensor) or out.dim() != 2:
        got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise InputError(f"the model returned {got}; metrics need logits of shape (B, C)")
    return out


def _warn_training(model: nn.Module, what: str, stacklevel: int = 3) -> None:
    if model.training:
        warnings.warn(
            f"{what}: the model is in training mode (dropout and batch statistics change the scores); "
            "call model.eval() first",
            stacklevel=stacklevel,
        )


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


# -- pixel flipping -----------------------------------------------------------------------------------
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
    x = _check_batch(x)
    relevance = _check_batch(relevance, "relevance")
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
    _warn_training(model, "pixel_flipping", stacklevel=4)  # under the no_grad decorator

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
        _targets(target, b, device, logits=x.new_zeros(b, 1))  # validates the string
        targets = torch.cat([_logits(model, x[i : i + batch_size]).argmax(1) for i in range(0, b, batch_size)])
    else:
        targets = _targets(target, b, device)
    chunks = range(0, pairs, batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"pixel flipping ({order})", unit="batch")
    for start in chunks:
        p = torch.arange(start, min(start + batch_size, pairs), device=device)
        bi, ki = p // (steps + 1), p % (steps + 1)
        mask = rank_el[bi] < n_k[ki].view(-1, *([1] * (x.dim() - 1)))
        xb = x[bi]
        xp = torch.where(mask, base if isinstance(base, float) else base[bi], xb)
        out = _logits(model, xp)
        _check_range(targets, out.shape[1])
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


# -- correlations ---------------------------------------------------------------------------------------
def _flat_heatmap(a: Tensor) -> Tensor:
    if a.dim() >= 3:
        a = a.sum(dim=1)
    return a.reshape(a.shape[0], -1)


def _average_ranks(v: Tensor) -> Tensor:
    """Ranks along dim 1 (0-based), ties get the mean of their positions (as scipy's rankdata)."""
    b, n = v.shape
    sorted_v, idx = torch.sort(v, dim=1, stable=True)
    new = torch.ones_like(sorted_v, dtype=torch.bool)
    new[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    group = torch.cumsum(new.long(), dim=1) - 1 + torch.arange(b, device=v.device).unsqueeze(1) * n
    pos = torch.arange(n, dtype=v.dtype, device=v.device).expand(b, n)
    total = torch.zeros(b * n, dtype=v.dtype, device=v.device).index_add_(0, group.reshape(-1), pos.reshape(-1))
    count = torch.zeros(b * n, dtype=v.dtype, device=v.device).index_add_(
        0, group.reshape(-1), torch.ones_like(pos).reshape(-1)
    )
    mean_pos = (total / count.clamp_min(1))[group]
    return torch.empty_like(mean_pos).scatter_(1, idx, mean_pos)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    return ((a * b).sum(dim=1) / denom).clamp(-1.0, 1.0)  # rounding can exceed 1; 0/0 -> NaN (constant maps)


def heatmap_correlation(a: Tensor, b: Tensor, method: str = "pearson") -> Tensor:
    """Correlation (B,) between two batches of heatmaps, on channel-summed, flattened maps (float64).

    Args:
        a, b: relevance of the same shape (B, C, ...) or (B, F).
        method: ``"pearson"`` or ``"spearman"`` (Pearson of average ranks, ties as in scipy).

    A constant map has no correlation: NaN.
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise InputError("heatmap_correlation needs two tensors")
    if a.shape != b.shape:
        raise InputError(f"heatmaps differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2:
        raise InputError(f"heatmaps must be batches (B, ...), got shape {tuple(a.shape)}")
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method={method!r}: use 'pearson' or 'spearman'")
    fa = _flat_heatmap(a.detach()).to(torch.float64)
    fb = _flat_heatmap(b.detach()).to(device=fa.device, dtype=torch.float64)
    if method == "spearman":
        fa, fb = _average_ranks(fa), _average_ranks(fb)
    return _pearson(fa, fb)


# -- randomisation sanity check ---------------------------------------------------------------------------
def randomisation_check(
    model: nn.Module,
    x: Tensor,
    target: TargetLike,
    composite: str | Composite | Rule,
    *,
    seed: int = 0,
) -> list[tuple[str, Tensor]]:
    """Cascading model-parameter randomisation (Adebayo et al. 2018) on a deep copy of ``model``.

    The weighted layers (Linear/Conv) of the copy are re-initialised with their ``reset_parameters``
    from the output towards the input, one at a time and cumulatively. After each, the heatmap is
    recomputed and compared with the original one: Spearman rank correlation of |channel-summed
    relevance|, per sample. A faithful method's similarity drops as layers are randomised.

    Args:
        model: the model; never modified (its copy is). ``target="predicted"`` is resolved once on the
            original model, so every heatmap explains the same class.
        x: input batch.
        target: class index, LongTensor (B,) or ``"predicted"``.
        composite: preset name, :class:`Composite` or rule used for all heatmaps.
        seed: seed of the re-initialisation (the global RNG state is left as it was).

    Returns:
        ``[(layer_name, similarity (B,)), ...]``, one entry per weighted layer, in the order randomised.
    """
    x = _check_batch(x)
    _warn_training(model, "randomisation_check")
    work = copy.deepcopy(model)
    explainer = Explainer(work, composite)
    first = explainer.explain(x, target if isinstance(target, str) else _targets(target, x.shape[0], x.device))
    targets = first.targets if first.targets is not None else target
    original = _flat_heatmap(first.relevance.detach()).abs()

    names = {id(m): n for n, m in work.named_modules()}
    layers: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    for step in explainer.graph.steps:
        m = step.module
        if step.kind == "linear" and isinstance(m, LINEAR_MODULES) and id(m) not in seen:
            seen.add(id(m))
            layers.append((names.get(id(m), step.name), m))
    results: list[tuple[str, Tensor]] = []
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name, module in reversed(layers):
            with torch.no_grad():
                module.reset_parameters()  # type: ignore[operator]
            explainer.clear_cache()
            r = explainer.explain(x, targets).relevance.detach()
            results.append((name, heatmap_correlation(original, _flat_heatmap(r).abs(), method="spearman")))
    return results


# -- stability -----------------------------------------------------------------------------------------
def stability(
    explain_fn: Callable[[Tensor, Any], Tensor],
    x: Tensor,
    target: Any,
    *,
    noise: float = 1e-3,
    n: int = 8,
    seed: int = 0,
) -> Tensor:
    """Heatmap stability under small input noise: mean Pearson correlation (B,) between the heatmap of x
    and the heatmaps of ``x + noise · std(x) · ε``, ε ~ N(0, 1), over ``n`` draws (std per sample).

    Args:
        explain_fn: ``explain_fn(x, target) -> relevance`` shaped like x (e.g. an :class:`Explainer`).
        x: input batch.
        target: passed to ``explain_fn`` unchanged (use class indices rather than ``"predicted"`` so that
            every draw explains the same class).
        noise: noise level relative to each sample's standard deviation (0 gives 1 for a deterministic
            explain_fn).
        n: number of noise draws.
        seed: seed of the noise (a private generator; the global RNG is untouched).
    """
    x = _check_batch(x)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    reference = explain_fn(x, target)
    if not isinstance(reference, Tensor) or reference.shape[0] != x.shape[0]:
        raise InputError("explain_fn(x, target) must return a tensor with one heatmap per sample")
    std = x.detach().flatten(1).std(dim=1).view(-1, *([1] * (x.dim() - 1)))
    gen = torch.Generator(device=x.device).manual_seed(seed)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(n):
        eps = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        r = explain_fn(x + noise * std * eps, target)
        total += heatmap_correlation(reference, r, method="pearson")
    return total / n


# -- conservation --------------------------------------------------------------------------------------
def conservation_error(explanation: Explanation) -> Tensor:
    """Per-sample ``|Σ R_in − Σ R_out| / |Σ R_out|`` (float64) from an :class:`Explanation`.

    For composites that rescale relevance per step (R-LRP), the unscaled input relevance
    ``relevance · exp(log_scale)`` is used (R-LRP conserves only up to a factor, so expect large values).
    """
    if not isinstance(explanation, Explanation):
        raise TypeError(
            f"conservation_error needs an Explanation (Explainer.explain), not {type(explanation).__name__}"
        )
    r_in = explanation.relevance.detach().to(torch.float64).flatten(1).sum(1)
    if explanation.log_scale is not None:
        r_in = r_in * torch.exp(explanation.log_scale.detach().to(torch.float64))
    r_out = explanation.output_relevance.detach().to(torch.float64).flatten(1).sum(1)
    return (r_in - r_out).abs() / r_out.abs()


# -- Quantus ---------------------------------------------------------------------------------------------
def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def quantus_explain_func(composite: str | Composite | Rule = "epsilon_plus_flat") -> Callable[..., np.ndarray]:
    """An ``explain_func(model, inputs, targets, **kwargs) -> np.ndarray`` for Quantus metrics.

    ``inputs`` may be a numpy array or a tensor (Quantus passes numpy, channel first); ``targets`` class
    indices (array, tensor or int). The relevance has the input's shape, float32. It runs on the model's
    device and dtype; Quantus's ``device=`` keyword is accepted and ignored, ``composite=`` overrides the
    default. A fresh :class:`Explainer` is built per call, because Quantus's randomisation metrics edit
    model weights between calls.

    Example::

        metric = quantus.PixelFlipping(features_in_step=28)
        metric(model=model, x_batch=x, y_batch=y, explain_func=relprop.evaluation.metrics.quantus_explain_func())
    """

    def explain_func(model: nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
        comp = kwargs.pop("composite", composite)
        kwargs.pop("device", None)
        if kwargs:
            raise TypeError(f"unexpected keyword arguments for relprop's explain_func: {sorted(kwargs)}")
        device, dtype = _model_device_dtype(model)
        x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, Tensor) else inputs)
        x = x.detach().to(device=device, dtype=dtype)
        t = _targets(targets if not isinstance(targets, (list, tuple)) else np.asarray(targets), x.shape[0], device)
        r = Explainer(model, comp)(x, t)
        return r.detach().cpu().numpy().astype(np.float32, copy=False)

    return explain_func
