"""ISNet: training classifiers to keep LRP relevance off the image background (Bassi et al., 2024)."""

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
    "stochastic_classes",
]  # fmt: skip
