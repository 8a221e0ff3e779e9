"""Compatibility re-exports: ISNet training now lives in one module per concept (needs ``lightning``).

:mod:`.config` (TrainConfig, P schedule), :mod:`.step` (isnet_step), :mod:`.sampling` (EpochSampler, the
resumable loader), :mod:`.checkpoints` (run files, load_checkpoint), :mod:`.module` (ISNetModule) and
:mod:`.fitting` (fit, TrainResult). Import these names from :mod:`relprop.isnet`.
"""

from __future__ import annotations

from ..errors import CheckpointError, TrainingInterrupted
from .checkpoints import BEST_NAME, CHECKPOINT_NAME, METRICS_NAME, load_checkpoint
from .config import METHODS, SELECTIVE_CLASSES, TrainConfig, p_at
from .fitting import TrainResult, fit
from .module import ISNetModule
from .sampling import EpochSampler
from .step import isnet_step

__all__ = [
    "BEST_NAME", "CHECKPOINT_NAME", "METHODS", "METRICS_NAME", "SELECTIVE_CLASSES", "CheckpointError", "EpochSampler",
    "ISNetModule", "TrainConfig", "TrainResult", "TrainingInterrupted", "fit", "isnet_step", "load_checkpoint", "p_at",
]  # fmt: skip
