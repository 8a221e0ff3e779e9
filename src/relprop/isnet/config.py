"""The hyperparameters of an ISNet (or plain / RRR) training run: :class:`TrainConfig`, the P schedule and the
validation loss that ``best.ckpt`` minimises. Needs no ``lightning``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .loss import ConfigError, HeatmapLossConfig
from .variants import VARIANTS


class ResumeConflict(UsageError):
    """A run cannot be resumed with this config: ``conflicts`` maps each differing field to (checkpoint, now)."""

    def __init__(self, path: Path, conflicts: Mapping[str, tuple[Any, Any]]) -> None:
        self.path = Path(path)
        self.conflicts = dict(conflicts)
        detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in self.conflicts.items())
        super().__init__(
            f"cannot resume from {path}: its training config differs in {', '.join(self.conflicts)} ({detail}). "
            "Use the same config (only epochs may change), another out_dir, or resume=False to start over"
        )

    def __reduce__(self) -> tuple[type[ResumeConflict], tuple[Path, dict[str, tuple[Any, Any]]]]:
        return type(self), (self.path, self.conflicts)


def resume_conflicts(saved: TrainConfig, config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The fields (all but ``epochs``) in which ``config`` differs from the ``saved`` config of a checkpoint, as
    ``{field: (saved value, new value)}`` (JSON forms); empty if ``config`` may resume it."""
    a, b = saved.to_dict(), config.to_dict()
    return {k: (a[k], b[k]) for k in a if k != "epochs" and a[k] != b[k]}


METHODS = ("plain", "rrr") + VARIANTS
SELECTIVE_CLASSES = ("lowest", "label", "predicted")


@dataclass
class TrainConfig:
    """Hyperparameters of a training run (JSON-safe through :meth:`to_dict` / :meth:`from_dict`).

    ``method``: ``"plain"`` (cross-entropy only), ``"rrr"`` (CE + ``rrr_lambda``·RRR penalty) or an ISNet
    variant (``original``, ``dual``, ``selective``, ``stochastic``, ``grad_input``): (1 − P)·CE + P·L_H.
    ``P`` is a constant or a schedule ``{first_epoch: P}`` (epochs count from 0; the entry with the largest
    key <= epoch applies, and the schedule must start at epoch 0). ``batch_size`` is per process.
    ``low``/``high`` are the input data range (z^B rule), ``epsilon`` the LRP-ε of hidden layers.
    """

    method: str = "selective"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip: float | None = 1.0
    P: float | dict[int, float] = 0.7
    loss: HeatmapLossConfig = HeatmapLossConfig()
    rrr_lambda: float = 10.0
    low: float = 0.0
    high: float = 1.0
    epsilon: float = 0.01
    selective_class: str = "lowest"
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (and normalise a P schedule's keys to int); raises ValueError naming the field."""
        if self.method not in METHODS:
            raise ConfigError(f"TrainConfig.method={self.method!r} is unknown; choose one of {', '.join(METHODS)}")
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("num_workers", self.num_workers, 0)
        _check_int("seed", self.seed, 0)
        if self.seed > 2**32 - 1:
            raise ConfigError(f"TrainConfig.seed={self.seed}: must lie in [0, 2**32 - 1]")
        _check_float("lr", self.lr, positive=True)
        _check_float("momentum", self.momentum)
        _check_float("weight_decay", self.weight_decay)
        _check_float("rrr_lambda", self.rrr_lambda)
        _check_float("epsilon", self.epsilon, positive=True)
        if self.clip is not None:
            _check_float("clip", self.clip, positive=True)
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"TrainConfig.{name}={value!r}: must be a finite number")
        if not self.high > self.low:
            raise ConfigError(f"TrainConfig.low={self.low}, high={self.high}: need high > low (the input data range)")
        if self.selective_class not in SELECTIVE_CLASSES:
            raise ConfigError(
                f"TrainConfig.selective_class={self.selective_class!r}: choose one of {', '.join(SELECTIVE_CLASSES)}"
            )
        if isinstance(self.loss, Mapping):
            self.loss = _loss_config(self.loss)
        if not isinstance(self.loss, HeatmapLossConfig):
            raise ConfigError(
                f"TrainConfig.loss must be a HeatmapLossConfig or a dict of its fields, got {self.loss!r}"
            )
        self.P = _normalise_p(self.P)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (P schedule keys become strings) that :meth:`from_dict` turns back into this config."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["loss"] = asdict(self.loss)
        if isinstance(self.P, dict):
            d["P"] = {str(k): float(v) for k, v in sorted(self.P.items())}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """The config from :meth:`to_dict`'s output (or parsed JSON); unknown keys are an error."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"TrainConfig.from_dict needs a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"TrainConfig has no field(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
        kwargs = dict(d)
        if "loss" in kwargs and isinstance(kwargs["loss"], Mapping):
            kwargs["loss"] = _loss_config(kwargs["loss"])
        return cls(**kwargs)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"TrainConfig.{name}={value!r}: must be an integer >= {minimum}")


def _check_float(name: str, value: Any, positive: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ConfigError(f"TrainConfig.{name}={value!r}: must be a finite number {'> 0' if positive else '>= 0'}")


def _loss_config(d: Mapping[str, Any]) -> HeatmapLossConfig:
    known = {f.name for f in fields(HeatmapLossConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"TrainConfig.loss has no field(s) {', '.join(map(repr, unknown))}; known: {sorted(known)}")
    return HeatmapLossConfig(**d)


def _normalise_p(P: Any) -> float | dict[int, float]:
    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"TrainConfig.P{where}={value!r}: P must be a number in [0, 1]")
        return float(value)

    if not isinstance(P, Mapping):
        return check(P, "")
    schedule: dict[int, float] = {}
    for key, value in P.items():
        try:
            epoch = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"TrainConfig.P schedule key {key!r} is not an epoch number") from None
        if epoch < 0 or str(epoch) != str(key).strip():
            raise ConfigError(f"TrainConfig.P schedule key {key!r} must be an integer epoch >= 0")
        schedule[epoch] = check(value, f"[{key!r}]")
    if not schedule or min(schedule) != 0:
        raise ConfigError(f"TrainConfig.P schedule {dict(P)!r} must have an entry for epoch 0 (its first epoch)")
    return dict(sorted(schedule.items()))


def p_at(config: TrainConfig, epoch: int) -> float:
    """The heatmap-loss weight P in ``epoch`` (0-based): the constant, or the schedule entry with the
    largest first epoch <= ``epoch``."""
    P = _normalise_p(config.P)
    if not isinstance(P, dict):
        return P
    return P[max(k for k in P if k <= max(epoch, 0))]


def val_loss(config: TrainConfig, epoch: int, ce: float, heatmap: float | None) -> float:
    """The validation loss that ``best.ckpt`` minimises: (1 − P)·CE + P·L_H for ISNet variants (P of ``epoch``),
    CE otherwise (and when there is no heatmap loss)."""
    if config.method in VARIANTS and heatmap is not None:
        P = p_at(config, epoch)
        return (1 - P) * float(ce) + P * float(heatmap)
    return float(ce)


def history_val_loss(entry: Mapping[str, Any], config: TrainConfig) -> float | None:
    """:func:`val_loss` of one history entry of :func:`~relprop.isnet.fit` (None without validation data)."""
    ce = entry.get("val_ce")
    if ce is None:
        return None
    return val_loss(config, int(entry.get("epoch", 0)), float(ce), entry.get("val_heatmap"))


__all__ = [
    "METHODS", "SELECTIVE_CLASSES", "ConfigError", "ResumeConflict", "TrainConfig", "history_val_loss", "p_at",
    "resume_conflicts", "val_loss",
]  # fmt: skip
