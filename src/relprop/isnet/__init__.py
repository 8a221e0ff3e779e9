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

__all__ = [
    "HeatmapLossConfig", "background_loss", "foreground_loss", "gwrp", "heatmap_loss", "isnet_loss",
    "prepare_mask", "tune_c1_c2",
]  # fmt: skip
