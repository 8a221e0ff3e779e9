"""ISNet: training classifiers to keep LRP relevance off the image background (Bassi et al., 2024).

- :mod:`.loss`: the heatmap loss (GWRP background term, C1/C2 foreground term) and ``isnet_loss``.
- :mod:`.variants`: ``ISNetMaps`` (original, dual, selective, stochastic, grad_input) and ``rrr_penalty``.
- :mod:`.config`: ``TrainConfig`` (hyperparameters, P schedule, the authors' mode, LRP deep supervision, C1/C2
  tuning); :mod:`.step`: ``isnet_step``, the loss of one batch for your own loop; :mod:`.sampling`:
  ``EpochSampler``; :mod:`.checkpoints`: ``load_checkpoint``, ``load_weights`` and the run's file names. None of
  these needs ``lightning``.
- :mod:`.module` and :mod:`.fitting` (need ``lightning``: ``pip install relprop[train]``; imported on first
  use): ``ISNetModule`` (a LightningModule), ``fit`` and ``TrainResult``.
- :mod:`.evaluation`: accuracy per test split, background relevance share, heatmap figures.
"""

from typing import TYPE_CHECKING, Any

from ..errors import TrainingInterrupted
from .checkpoints import BEST_NAME, CHECKPOINT_NAME, METRICS_NAME, TUNING_NAME, load_checkpoint, load_weights
from .config import METHODS, TrainConfig, p_at
from .loss import (
    HeatmapLossConfig,
    background_loss,
    deep_supervision_loss,
    foreground_loss,
    gwrp,
    heatmap_loss,
    isnet_loss,
    prepare_mask,
    relevance_totals,
    tune_c1_c2,
)
from .sampling import EpochSampler
from .step import isnet_step
from .variants import VARIANTS, ISNetMaps, log_odds_gradient, maps_per_image, rrr_penalty, stochastic_classes

if TYPE_CHECKING:  # imported on first use (__getattr__): module and fitting need the optional lightning
    from .evaluation import background_share, evaluate, heatmap_figure
    from .fitting import TrainResult, fit
    from .module import ISNetModule

__all__ = [
    "HeatmapLossConfig", "background_loss", "foreground_loss", "gwrp", "heatmap_loss", "isnet_loss",
    "deep_supervision_loss", "relevance_totals", "prepare_mask", "tune_c1_c2", "VARIANTS", "ISNetMaps",
    "log_odds_gradient", "maps_per_image", "rrr_penalty",
    "stochastic_classes", "TrainConfig", "ISNetModule", "TrainResult", "TrainingInterrupted", "fit", "isnet_step",
    "load_checkpoint", "load_weights", "TUNING_NAME", "METHODS", "p_at", "EpochSampler", "CHECKPOINT_NAME",
    "BEST_NAME", "METRICS_NAME",
    "evaluate", "background_share", "heatmap_figure",
]  # fmt: skip

_LAZY = {
    "ISNetModule": "module",
    "TrainResult": "fitting",
    "fit": "fitting",
    "evaluate": "evaluation",
    "background_share": "evaluation",
    "heatmap_figure": "evaluation",
}


def __getattr__(name: str) -> Any:  # lazy: lightning is imported only when training is used
    if name in _LAZY:
        from importlib import import_module

        try:
            module = import_module(f".{_LAZY[name]}", __name__)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] != "lightning":
                raise
            raise ModuleNotFoundError(
                f"relprop.isnet.{name} needs lightning, which is not installed: pip install 'relprop[train]'",
                name=exc.name,
            ) from exc
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'relprop.isnet' has no attribute {name!r}")
