"""ISNet: training classifiers to keep LRP relevance off the image background (Bassi et al., 2024).

- :mod:`.loss`: the heatmap loss (GWRP background term, C1/C2 foreground term) and ``isnet_loss``.
- :mod:`.variants`: ``ISNetMaps`` (original, dual, selective, stochastic, grad_input) and ``rrr_penalty``.
- :mod:`.training` (needs ``lightning``: ``pip install relprop[train]``): ``TrainConfig``, ``isnet_step`` for
  your own loop, ``ISNetModule`` (a LightningModule), ``fit`` and ``load_checkpoint``.
- :mod:`.evaluation`: accuracy per test split, background relevance share, heatmap figures.
"""

from typing import Any

from .loss import (
    HeatmapLossConfig,
    background_loss,
    foreground_loss,
    gwrp,
    heatmap_loss,
    isnet_loss,
    prepare_mask,
    tune_c1_c2,
)
from .variants import VARIANTS, ISNetMaps, log_odds_gradient, maps_per_image, rrr_penalty, stochastic_classes

__all__ = [
    "HeatmapLossConfig", "background_loss", "foreground_loss", "gwrp", "heatmap_loss", "isnet_loss",
    "prepare_mask", "tune_c1_c2", "VARIANTS", "ISNetMaps", "log_odds_gradient", "maps_per_image", "rrr_penalty",
    "stochastic_classes", "TrainConfig", "ISNetModule", "TrainResult", "TrainingInterrupted", "fit", "isnet_step",
    "load_checkpoint", "METHODS", "evaluate", "background_share", "heatmap_figure",
]  # fmt: skip

_TRAINING = {"TrainConfig", "ISNetModule", "TrainResult", "TrainingInterrupted", "fit", "isnet_step", "load_checkpoint",
             "METHODS"}  # fmt: skip
_EVALUATION = {"evaluate", "background_share", "heatmap_figure"}


def __getattr__(name: str) -> Any:  # lazy: lightning is imported only when training is used
    if name in _TRAINING:
        from . import training

        return getattr(training, name)
    if name in _EVALUATION:
        from . import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'relprop.isnet' has no attribute {name!r}")
