"""Model-parameter randomisation sanity check (Adebayo et al. 2018, cascading).

On a deep copy, the weighted layers (Linear/Conv) are re-initialised (``reset_parameters``) from the output
towards the input, one at a time and cumulatively; after each, the Spearman rank correlation between
|heatmap| and |original heatmap| (heatmap = relevance summed over channels).
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch
import torch.nn as nn
from torch import Tensor

from ..composites import Composite
from ..explainer import Explainer
from ..graph import LINEAR_MODULES
from ..rules import Rule
from ._common import TargetLike, check_batch, targets_of, warn_training
from .similarity import flat_heatmap, heatmap_correlation

__all__ = ["randomisation_check"]


class _Resettable(Protocol):
    def reset_parameters(self) -> None: ...


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
    x = check_batch(x)
    warn_training(model, "randomisation_check")
    work = copy.deepcopy(model)
    explainer = Explainer(work, composite)
    first = explainer.explain(x, target if isinstance(target, str) else targets_of(target, x.shape[0], x.device))
    targets = first.targets if first.targets is not None else target
    original = flat_heatmap(first.relevance.detach()).abs()

    names = {id(m): n for n, m in work.named_modules()}
    layers: list[tuple[str, _Resettable]] = []
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
                module.reset_parameters()
            explainer.clear_cache()
            r = explainer.explain(x, targets).relevance.detach()
            results.append((name, heatmap_correlation(original, flat_heatmap(r).abs(), method="spearman")))
    return results
