"""The hyperparameters of an ISNet (or plain / RRR) training run: :class:`TrainConfig`, the P schedule and the
validation loss that ``best.ckpt`` minimises. Needs no ``lightning``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
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
MATCHES = ("relprop", "authors")  #: TrainConfig.match: relprop's relevance maps or the Faster ISNet code's
TUNE_ON = ("map", "foreground")  #: TrainConfig.tune_on: the totals C1/C2 tuning averages


@dataclass
class TrainConfig:
    """Hyperparameters of a training run (JSON-safe through :meth:`to_dict` / :meth:`from_dict`).

    Fields and defaults (``relprop train`` flags in brackets):

    - ``method="selective"`` [--method]: ``"plain"`` (cross-entropy only), ``"rrr"`` (CE + ``rrr_lambda``·RRR
      penalty) or an ISNet variant (``original``, ``dual``, ``selective``, ``stochastic``, ``grad_input``):
      (1 − P)·CE + P·L_H.
    - ``epochs=5`` [--epochs], ``batch_size=64`` (per process) [--batch-size], SGD ``lr=0.01`` [--lr],
      ``momentum=0.9`` [--momentum], ``weight_decay=0.0``; ``clip=1.0``: gradient-norm clipping, None = off
      [--clip, 0 = off].
    - ``P=0.7`` [--P]: a constant or a schedule ``{first_epoch: P}`` (epochs count from 0; the entry with the
      largest key <= epoch applies; it must start at epoch 0). A schedule with P = 0 first (plain epochs, then
      the ISNet) warns (:class:`~relprop.errors.RecipeWarning`): the shortcut learned in those epochs stays.
    - ``loss=HeatmapLossConfig()``: d, E, A, B, C1, C2, ``foreground`` ("hybrid" | "l2"), ``guard``
      [--d, --C1, --C2, --foreground, --guard].
    - ``rrr_lambda=10.0`` [--rrr-lambda]; ``low=0.0``, ``high=1.0``: the input data range (z^B rule);
      ``epsilon=0.01``: LRP-ε of hidden layers; ``selective_class="lowest"`` (lowest | label | predicted);
      ``seed=0`` [--seed]; ``num_workers=0``.
    - ``match="relprop"`` [--match]: ``"authors"`` makes the relevance maps the Faster ISNet code's
      (:class:`~relprop.isnet.ISNetMaps` ``match=``).
    - ``hidden_layers=()`` [--hidden-layers]: LRP deep supervision: module names (``model.named_modules()``)
      whose output relevance is penalised too; ``d_layers=0.8`` [--d-layers]: the GWRP decay that aggregates
      the layers' losses (the authors' ``dLoss``; :func:`~relprop.isnet.deep_supervision_loss`);
      ``hidden_bounds={}``: ``{layer: (C1, C2)}`` per hidden layer (layers without one use ``loss.C1/C2``).
    - ``tune_epochs=0`` [--tune-epochs]: > 0 tunes C1/C2 as the authors do (ISNet variants only; no effect
      for plain / rrr): :func:`~relprop.isnet.fit` first trains a separate copy of the initial model plainly for
      that many epochs (the authors use 5), takes the total |relevance| per sample of the variant's maps over
      its last epoch, sets C1 = max(μ/5, μ − 3σ), C2 = min(25·C1, μ + 3σ) (also per hidden layer), discards that
      network and trains the ISNet from the initial model with these values (they replace ``loss.C1/C2`` and
      ``hidden_bounds``). ``tune_on="map"`` [--tune-on]: the totals over the whole map (the authors' form) or
      ``"foreground"`` (Σ|H|·M).
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
    match: str = "relprop"
    hidden_layers: tuple[str, ...] = ()
    d_layers: float = 0.8
    hidden_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    tune_epochs: int = 0
    tune_on: str = "map"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (and normalise a P schedule's keys to int, hidden layers to a tuple); raises
        :class:`ConfigError` (a ValueError) naming the field."""
        if self.method not in METHODS:
            raise _bad("method", self.method, f"unknown method; choose one of {', '.join(METHODS)}")
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("num_workers", self.num_workers, 0)
        _check_int("seed", self.seed, 0)
        _check_int("tune_epochs", self.tune_epochs, 0)
        if self.seed > 2**32 - 1:
            raise _bad("seed", self.seed, "must lie in [0, 2**32 - 1]")
        _check_float("lr", self.lr, positive=True)
        _check_float("momentum", self.momentum)
        _check_float("weight_decay", self.weight_decay)
        _check_float("rrr_lambda", self.rrr_lambda)
        _check_float("epsilon", self.epsilon, positive=True)
        _check_float("d_layers", self.d_layers)
        if self.d_layers > 1:
            raise _bad("d_layers", self.d_layers, "the GWRP decay over layers must lie in [0, 1]")
        if self.clip is not None:
            _check_float("clip", self.clip, positive=True)
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _bad(name, value, "must be a finite number")
        if not self.high > self.low:
            raise _bad("high", self.high, f"need high > low={self.low} (the input data range)")
        if self.selective_class not in SELECTIVE_CLASSES:
            raise _bad("selective_class", self.selective_class, f"choose one of {', '.join(SELECTIVE_CLASSES)}")
        if self.match not in MATCHES:
            raise _bad("match", self.match, f"choose one of {', '.join(MATCHES)}")
        if self.tune_on not in TUNE_ON:
            raise _bad("tune_on", self.tune_on, f"choose one of {', '.join(TUNE_ON)}")
        if isinstance(self.loss, Mapping):
            self.loss = _loss_config(self.loss)
        if not isinstance(self.loss, HeatmapLossConfig):
            raise _bad("loss", self.loss, "must be a HeatmapLossConfig or a dict of its fields")
        self.P = _normalise_p(self.P)
        self.hidden_layers = _normalise_layers(self.hidden_layers)
        self.hidden_bounds = _normalise_bounds(self.hidden_bounds, self.hidden_layers)

    def hidden_loss_configs(self) -> dict[str, HeatmapLossConfig]:
        """The heatmap-loss config of each hidden layer: ``loss`` with that layer's (C1, C2) from
        ``hidden_bounds``, else ``loss`` itself."""
        out = {}
        for name in self.hidden_layers:
            c1, c2 = self.hidden_bounds.get(name, (self.loss.C1, self.loss.C2))
            out[name] = replace(self.loss, C1=c1, C2=c2)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (P schedule keys become strings) that :meth:`from_dict` turns back into this config."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["loss"] = asdict(self.loss)
        d["hidden_layers"] = list(self.hidden_layers)
        d["hidden_bounds"] = {k: [float(a), float(b)] for k, (a, b) in self.hidden_bounds.items()}
        if isinstance(self.P, dict):
            d["P"] = {str(k): float(v) for k, v in sorted(self.P.items())}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """The config from :meth:`to_dict`'s output (or parsed JSON); unknown keys are an error, missing ones
        take their defaults (a config written by an earlier relprop, without the newer fields, still loads)."""
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


def _bad(name: str, value: Any, reason: str) -> ConfigError:
    """A ConfigError about TrainConfig.<name>, with the parts a caller needs to restate it (CLI flags)."""
    return ConfigError(f"TrainConfig.{name}={value!r}: {reason}", field=name, value=value, reason=reason)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(name, value, f"must be an integer >= {minimum}")


def _check_float(name: str, value: Any, positive: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise _bad(name, value, f"must be a finite number {'> 0' if positive else '>= 0'}")


def _loss_config(d: Mapping[str, Any]) -> HeatmapLossConfig:
    known = {f.name for f in fields(HeatmapLossConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"TrainConfig.loss has no field(s) {', '.join(map(repr, unknown))}; known: {sorted(known)}")
    return HeatmapLossConfig(**d)


def _normalise_layers(layers: Any) -> tuple[str, ...]:
    if isinstance(layers, str) or not isinstance(layers, (tuple, list)):
        raise _bad("hidden_layers", layers, "must be a tuple of module names, e.g. ('layer1', 'layer2')")
    for name in layers:
        if not isinstance(name, str) or not name:
            raise _bad("hidden_layers", tuple(layers), f"{name!r} is not a module name (a non-empty string)")
    if len(set(layers)) != len(layers):
        raise _bad("hidden_layers", tuple(layers), "names a module twice")
    return tuple(layers)


def _normalise_bounds(bounds: Any, layers: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    if not isinstance(bounds, Mapping):
        raise _bad("hidden_bounds", bounds, "must be a dict {layer: (C1, C2)}")
    out: dict[str, tuple[float, float]] = {}
    for name, pair in bounds.items():
        if name not in layers:
            raise _bad("hidden_bounds", dict(bounds), f"{name!r} is not one of hidden_layers {layers}")
        ok = isinstance(pair, (tuple, list)) and len(pair) == 2
        ok = ok and all(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in pair)
        if not ok or not 0 < pair[0] <= pair[1]:
            raise _bad("hidden_bounds", dict(bounds), f"{name!r}: {pair!r} must be a pair (C1, C2) with 0 < C1 <= C2")
        out[name] = (float(pair[0]), float(pair[1]))
    return out


def _normalise_p(P: Any) -> float | dict[int, float]:
    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            reason = "P must be a number in [0, 1]" + (f" (schedule entry {where})" if where else "")
            raise ConfigError(f"TrainConfig.P{where}={value!r}: {reason}", field="P", value=P, reason=reason)
        return float(value)

    if not isinstance(P, Mapping):
        return check(P, "")
    schedule: dict[int, float] = {}
    for key, value in P.items():
        try:
            epoch = int(key)
        except (TypeError, ValueError):
            raise _bad("P", dict(P), f"P schedule key {key!r} is not an epoch number") from None
        if epoch < 0 or str(epoch) != str(key).strip():
            raise _bad("P", dict(P), f"P schedule key {key!r} must be an integer epoch >= 0")
        schedule[epoch] = check(value, f"[{key!r}]")
    if not schedule or min(schedule) != 0:
        raise _bad("P", dict(P), "the P schedule must have an entry for epoch 0 (its first epoch)")
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
    "MATCHES", "METHODS", "SELECTIVE_CLASSES", "TUNE_ON", "ConfigError", "ResumeConflict", "TrainConfig",
    "history_val_loss", "p_at", "resume_conflicts", "val_loss",
]  # fmt: skip
