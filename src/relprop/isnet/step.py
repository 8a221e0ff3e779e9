"""The loss of one training batch (:func:`isnet_step`) for plain CE, RRR and the ISNet variants, and the batch
checks. Needs no ``lightning``: users with their own loop call it and do ``loss.backward()`` themselves.

Batches are triples ``(x, mask, y)``: images (B, C, H, W) in [low, high], binary foreground masks
(B, 1, H, W) (or (B, H, W)) and integer labels (B,).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, RelpropError
from .config import METHODS, TrainConfig, p_at
from .loss import ConfigError, check_labels, check_mask, isnet_loss, relevance_totals
from .variants import ISNetMaps, rrr_penalty


class TrainingDiverged(RelpropError, FloatingPointError):
    """The loss or the relevance maps of a training step are not finite; the message names the epoch, step and
    method and what to lower. (A ``FloatingPointError`` too.)"""


def unpack_batch(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
    """``(images, masks (B, 1, H, W) in the images' dtype, labels int64 (B,))`` of a batch triple; raises
    :class:`~relprop.errors.InputError` naming what does not fit."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        found = f"a {type(batch).__name__} of length {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch)
        raise InputError(f"a batch must be a triple (images, masks, labels); got {found}")
    x, mask, y = batch
    for name, value in (("images", x), ("masks", mask), ("labels", y)):
        if not isinstance(value, Tensor):
            raise InputError(f"batch {name} must be a tensor, got {type(value).__name__}")
    if x.dim() != 4 or not x.is_floating_point():
        raise InputError(f"images must be a float tensor (B, C, H, W), got {x.dtype} of shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if tuple(mask.shape) != (b, 1, h, w):
        raise InputError(
            f"masks have shape {tuple(mask.shape)} but the images have shape {tuple(x.shape)}: "
            f"expected masks of shape ({b}, 1, {h}, {w})"
        )
    mask = check_mask(mask, batch=b, size=(h, w), what="masks")
    y = y.reshape(-1) if y.dim() == 2 and y.shape[1] == 1 else y
    if y.dim() != 1 or y.shape[0] != b or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputError(f"labels must be integer class indices of shape ({b},), got {y.dtype} {tuple(y.shape)}")
    if bool((y < 0).any()):
        raise InputError(f"labels must be class indices >= 0, got {int(y[y < 0][0])}")
    return x, mask.to(x.dtype), y.long()


def _checked_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """``logits`` if they are (B, C) and every label is a class 0..C-1; an InputError otherwise."""
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        got = f"shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__
        raise InputError(f"the model must return logits of shape (B, C), got {got}")
    check_labels(labels, logits.shape[1])
    return logits


def build_maps(model: nn.Module, config: TrainConfig) -> ISNetMaps:
    """The :class:`~relprop.isnet.ISNetMaps` of ``config.method`` (an ISNet variant) for ``model`` with the
    config's data range, ε, selective class, ``match`` and ``hidden_layers``; fails with a TracingError naming
    the module if relprop cannot trace it."""
    return ISNetMaps(
        model,
        config.method,
        low=config.low,
        high=config.high,
        epsilon=config.epsilon,
        selective_class=config.selective_class,
        match=config.match,
        hidden_layers=config.hidden_layers,
    )


def _variant_maps(
    maps: ISNetMaps, x: Tensor, y: Tensor, config: TrainConfig, create_graph: bool, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(logits, input maps, {hidden layer: maps}) of one forward; the dict is empty without hidden layers."""
    if config.hidden_layers:
        logits, heatmaps, hidden = maps.maps_and_hidden(x, y, create_graph=create_graph, generator=generator)
        return logits, heatmaps, dict(hidden)
    logits, heatmaps = maps(x, y, create_graph=create_graph, generator=generator)
    return logits, heatmaps, {}


def _check_maps(maps: ISNetMaps, model: nn.Module, config: TrainConfig) -> None:
    if maps.model is not model or maps.variant != config.method:
        raise InputError(
            f"maps= was built for {type(maps.model).__name__} with variant {maps.variant!r}; this step trains "
            f"{type(model).__name__} with method {config.method!r}"
        )
    if maps.match != config.match or tuple(maps.hidden_layers) != config.hidden_layers:
        raise InputError(
            f"maps= was built with match={maps.match!r}, hidden_layers={tuple(maps.hidden_layers)}; the config has "
            f"match={config.match!r}, hidden_layers={config.hidden_layers}: build it with build_maps(model, config)"
        )


def _check_finite(heatmaps: Tensor, hidden: Mapping[str, Tensor], where: str, config: TrainConfig) -> None:
    for name, t in (("the relevance maps", heatmaps), *((f"the relevance at {k!r}", v) for k, v in hidden.items())):
        if not bool(torch.isfinite(t).all()):
            raise TrainingDiverged(
                f"training diverged at {where} (method {config.method!r}): {name} contain NaN or Inf; "
                "lower the learning rate or P, or check the inputs"
            )


def isnet_step(
    model: nn.Module,
    batch: Sequence[Tensor],
    config: TrainConfig,
    *,
    maps: ISNetMaps | None = None,
    epoch: int = 0,
    step: int | None = None,
    generator: torch.Generator | None = None,
    create_graph: bool = True,
) -> tuple[Tensor, dict[str, float]]:
    """Loss of one batch for users with their own loop (they call ``loss.backward()`` and the optimiser).

    ``plain``: CE; ``rrr``: CE + λ·penalty (:func:`~relprop.isnet.variants.rrr_penalty`); ISNet variants:
    :func:`~relprop.isnet.isnet_loss` with logits and maps from ONE forward through
    ``ISNetMaps(model, variant, low=, high=, epsilon=, selective_class=)`` (build it once and pass it as
    ``maps=`` for speed). ``epoch`` selects P from a schedule and, with ``step``, names the place of a
    non-finite loss in the error. ``generator`` draws the stochastic variant's classes (default: torch's
    global RNG). ``create_graph=False`` gives a loss without gradients through the maps (evaluation).

    Returns ``(loss, {"loss", "ce", "heatmap" (ISNet), "rrr" (rrr), "acc"})``.
    """
    if config.method not in METHODS:
        raise ConfigError(f"unknown method {config.method!r}; choose one of {', '.join(METHODS)}")
    x, mask, y = unpack_batch(batch)
    where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
    stats: dict[str, float] = {}
    if config.method == "plain":
        logits = _checked_logits(model(x), y)
        loss = ce = F.cross_entropy(logits, y)
    elif config.method == "rrr":
        logits, penalty = rrr_penalty(model, x, mask, create_graph=create_graph)
        ce = F.cross_entropy(_checked_logits(logits, y), y)
        loss = ce + config.rrr_lambda * penalty
        stats["rrr"] = float(penalty.detach())
    else:
        if maps is None:
            maps = build_maps(model, config)
        else:
            _check_maps(maps, model, config)
        logits, heatmaps, hidden = _variant_maps(maps, x, y, config, create_graph, generator)
        _checked_logits(logits, y)
        _check_finite(heatmaps, hidden, where, config)
        loss, ce, heat = isnet_loss(
            logits, y, heatmaps, mask, p_at(config, epoch), config.loss,
            hidden=hidden, hidden_config=config.hidden_loss_configs(), d_layers=config.d_layers,
        )  # fmt: skip
        stats["heatmap"] = float(heat.detach())
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"training diverged at {where} (method {config.method!r}): the loss is {value} (CE "
            f"{float(ce.detach())}); lower the learning rate or check the inputs"
        )
    stats = {
        "loss": value,
        "ce": float(ce.detach()),
        **stats,
        "acc": float((logits.detach().argmax(1) == y).float().mean()),
    }
    return loss, stats


def tuning_step(
    model: nn.Module,
    batch: Sequence[Tensor],
    config: TrainConfig,
    maps: ISNetMaps,
    *,
    epoch: int = 0,
    step: int | None = None,
) -> tuple[Tensor, dict[str, float], dict[str, Tensor]]:
    """One step of the last epoch of a C1/C2 tuning run (the authors' ``tuneCut``): CE of the logits of ONE
    forward that also yields ``config``'s relevance maps (ISNet variant ``config.method``), and the total
    |relevance| per sample of every map (:func:`~relprop.isnet.loss.relevance_totals`: whole map for
    ``tune_on="map"``, foreground for ``"foreground"``): ``(loss, stats, {"input" / hidden layer: (B,) float64})``.
    The heatmap loss is not trained on."""
    x, mask, y = unpack_batch(batch)
    _check_maps(maps, model, config)
    logits, heatmaps, hidden = _variant_maps(maps, x, y, config, True, None)
    ce = F.cross_entropy(_checked_logits(logits, y), y)
    where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
    value = float(ce.detach())
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"the C1/C2 tuning run diverged at {where}: the loss is {value}; lower the learning rate or check the "
            "inputs"
        )
    _check_finite(heatmaps, hidden, where, config)
    fg = mask if config.tune_on == "foreground" else None
    totals = {TUNING_INPUT: relevance_totals(heatmaps, fg, config.method).cpu()}
    for name, relevance in hidden.items():
        totals[name] = relevance_totals(relevance, fg, config.method).cpu()
    stats = {"loss": value, "ce": value, "acc": float((logits.detach().argmax(1) == y).float().mean())}
    return ce, stats, totals


TUNING_INPUT = "input"  #: the key of the input heatmap's totals in a tuning run (the authors' name)

__all__ = ["TUNING_INPUT", "TrainingDiverged", "build_maps", "isnet_step", "tuning_step", "unpack_batch"]
