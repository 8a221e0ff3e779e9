"""Training classifiers with the ISNet heatmap loss (or plain cross-entropy / RRR) on Lightning.

Batches are triples ``(x, mask, y)``: images (B, C, H, W) in [low, high], binary foreground masks
(B, 1, H, W) and int64 labels (B,), from any dataset whose items are ``(image, mask, label)``.

* :func:`isnet_step` is the loss of one batch, for users with their own training loop.
* :class:`ISNetModule` is the LightningModule (SGD with momentum, gradient-norm clipping, epoch metrics).
* :func:`fit` trains with a Lightning ``Trainer``, writes ``out_dir/last.ckpt`` (atomically) after every
  epoch, at the end and on SIGINT/SIGTERM, and ``out_dir/metrics.json`` after every epoch; with
  ``resume=True`` it continues exactly where an earlier run stopped (mid-epoch included: the shuffling
  depends only on (seed, epoch), and torch's RNG state travels in the checkpoint).
* :func:`load_checkpoint` rebuilds a trained model from ``last.ckpt``.

With several processes (DDP), ``batch_size`` is per process and each process reads every
``world_size``-th sample of the epoch's permutation (the semantics of ``DistributedSampler``), so a run
on 2 processes with batch size b sees the same global batches as one process with batch size 2b.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from .._io import atomic_torch_save, atomic_write_bytes, atomic_write_text
from ..errors import CheckpointError, InputError, TrainingInterrupted
from .loss import HeatmapLossConfig, isnet_loss
from .variants import VARIANTS, ISNetMaps, rrr_penalty

METHODS = ("plain", "rrr") + VARIANTS
SELECTIVE_CLASSES = ("lowest", "label", "predicted")
CHECKPOINT_NAME = "last.ckpt"
BEST_NAME = "best.ckpt"  #: the epoch with the lowest validation loss (ISNet training can diverge late)
METRICS_NAME = "metrics.json"
_FORMAT = 1


# -- configuration ---------------------------------------------------------------------------------------------


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
            raise ValueError(f"TrainConfig.method={self.method!r} is unknown; choose one of {', '.join(METHODS)}")
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("num_workers", self.num_workers, 0)
        _check_int("seed", self.seed, 0)
        if self.seed > 2**32 - 1:
            raise ValueError(f"TrainConfig.seed={self.seed}: must lie in [0, 2**32 - 1]")
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
                raise ValueError(f"TrainConfig.{name}={value!r}: must be a finite number")
        if not self.high > self.low:
            raise ValueError(f"TrainConfig.low={self.low}, high={self.high}: need high > low (the input data range)")
        if self.selective_class not in SELECTIVE_CLASSES:
            raise ValueError(
                f"TrainConfig.selective_class={self.selective_class!r}: choose one of {', '.join(SELECTIVE_CLASSES)}"
            )
        if isinstance(self.loss, Mapping):
            self.loss = _loss_config(self.loss)
        if not isinstance(self.loss, HeatmapLossConfig):
            raise ValueError(f"TrainConfig.loss must be a HeatmapLossConfig or a dict of its fields, got {self.loss!r}")
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
            raise ValueError(f"TrainConfig.from_dict needs a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig has no field(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
        kwargs = dict(d)
        if "loss" in kwargs and isinstance(kwargs["loss"], Mapping):
            kwargs["loss"] = _loss_config(kwargs["loss"])
        return cls(**kwargs)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"TrainConfig.{name}={value!r}: must be an integer >= {minimum}")


def _check_float(name: str, value: Any, positive: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ValueError(f"TrainConfig.{name}={value!r}: must be a finite number {'> 0' if positive else '>= 0'}")


def _loss_config(d: Mapping[str, Any]) -> HeatmapLossConfig:
    known = {f.name for f in fields(HeatmapLossConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"TrainConfig.loss has no field(s) {', '.join(map(repr, unknown))}; known: {sorted(known)}")
    return HeatmapLossConfig(**d)


def _normalise_p(P: Any) -> float | dict[int, float]:
    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"TrainConfig.P{where}={value!r}: P must be a number in [0, 1]")
        return float(value)

    if not isinstance(P, Mapping):
        return check(P, "")
    schedule: dict[int, float] = {}
    for key, value in P.items():
        try:
            epoch = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"TrainConfig.P schedule key {key!r} is not an epoch number") from None
        if epoch < 0 or str(epoch) != str(key).strip():
            raise ValueError(f"TrainConfig.P schedule key {key!r} must be an integer epoch >= 0")
        schedule[epoch] = check(value, f"[{key!r}]")
    if not schedule or min(schedule) != 0:
        raise ValueError(f"TrainConfig.P schedule {dict(P)!r} must have an entry for epoch 0 (its first epoch)")
    return dict(sorted(schedule.items()))


def p_at(config: TrainConfig, epoch: int) -> float:
    """The heatmap-loss weight P in ``epoch`` (0-based): the constant, or the schedule entry with the
    largest first epoch <= ``epoch``."""
    P = _normalise_p(config.P)
    if not isinstance(P, dict):
        return P
    return P[max(k for k in P if k <= max(epoch, 0))]


def _val_loss(entry: Mapping[str, Any], config: TrainConfig) -> float | None:
    """The validation loss of one history entry: (1 − P)·CE + P·L_H for ISNet variants, CE otherwise."""
    ce, heat = entry.get("val_ce"), entry.get("val_heatmap")
    if ce is None:
        return None
    if config.method in VARIANTS and heat is not None:
        P = p_at(config, int(entry.get("epoch", 0)))
        return (1 - P) * float(ce) + P * float(heat)
    return float(ce)


# -- one batch -------------------------------------------------------------------------------------------------


def _unpack(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
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
    y = y.reshape(-1) if y.dim() == 2 and y.shape[1] == 1 else y
    if y.dim() != 1 or y.shape[0] != b or y.is_floating_point() or y.is_complex():
        raise InputError(f"labels must be integer class indices of shape ({b},), got {y.dtype} {tuple(y.shape)}")
    return x, mask.to(x.dtype), y.long()


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
        raise ValueError(f"unknown method {config.method!r}; choose one of {', '.join(METHODS)}")
    x, mask, y = _unpack(batch)
    where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
    stats: dict[str, float] = {}
    if config.method == "plain":
        logits = model(x)
        loss = ce = F.cross_entropy(logits, y)
    elif config.method == "rrr":
        logits, penalty = rrr_penalty(model, x, mask, create_graph=create_graph)
        ce = F.cross_entropy(logits, y)
        loss = ce + config.rrr_lambda * penalty
        stats["rrr"] = float(penalty.detach())
    else:
        if maps is None:
            maps = _build_maps(model, config)
        elif maps.model is not model or maps.variant != config.method:
            raise ValueError(
                f"maps= was built for {type(maps.model).__name__} with variant {maps.variant!r}; this step trains "
                f"{type(model).__name__} with method {config.method!r}"
            )
        logits, heatmaps = maps(x, y, create_graph=create_graph, generator=generator)
        if not bool(torch.isfinite(heatmaps).all()):
            raise FloatingPointError(
                f"training diverged at {where} (method {config.method!r}): the relevance maps contain NaN or Inf; "
                "lower the learning rate or P, or check the inputs"
            )
        loss, ce, heat = isnet_loss(logits, y, heatmaps, mask, p_at(config, epoch), config.loss)
        stats["heatmap"] = float(heat.detach())
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(
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


def _build_maps(model: nn.Module, config: TrainConfig) -> ISNetMaps:
    return ISNetMaps(
        model,
        config.method,
        low=config.low,
        high=config.high,
        epsilon=config.epsilon,
        selective_class=config.selective_class,
    )


# -- data ------------------------------------------------------------------------------------------------------


def _mix(stream: int, seed: int, epoch: int) -> int:
    """A 64-bit generator seed unique per (stream, seed, epoch)."""
    return ((stream & 3) << 62) | ((seed & 0xFFFFFFFF) << 30) | (epoch & (2**30 - 1))


def _generator(stream: int, seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(stream, seed, epoch))


class EpochSampler(Sampler[int]):
    """The indices one process reads in one epoch: a permutation of ``range(n)`` that depends only on
    (seed, epoch), padded to a multiple of ``world_size`` by repeating its start and split as
    ``perm[rank::world_size]`` (``DistributedSampler`` semantics), from position ``start`` on (to resume
    mid-epoch). ``shuffle=False`` keeps the dataset order and does not pad."""

    def __init__(
        self,
        n: int,
        seed: int,
        epoch: int,
        *,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler(rank={rank}, world_size={world_size}): need 0 <= rank < world_size")
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle

    def indices(self) -> list[int]:
        """This process's indices of the whole epoch (before skipping ``start``)."""
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world_size))
        perm = torch.randperm(self.n, generator=_generator(0, self.seed, self.epoch)).tolist()
        per_rank = math.ceil(self.n / self.world_size)
        pad = per_rank * self.world_size - self.n
        perm += (perm * (pad // max(self.n, 1) + 1))[:pad]
        return perm[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        full = math.ceil(self.n / self.world_size) if self.shuffle else len(range(self.rank, self.n, self.world_size))
        return max(full - self.start, 0)


def _check_dataset(data: Any, name: str) -> None:
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise InputError(f"the {name} data must be a map-style Dataset with __len__, got {type(data).__name__}")
    if len(data) == 0:
        raise InputError(f"the {name} dataset is empty")
    item = data[0]
    if not isinstance(item, (tuple, list)) or len(item) != 3:
        found = f"a {type(item).__name__} of length {len(item)}" if isinstance(item, (tuple, list)) else type(item)
        raise InputError(f"{name} dataset items must be triples (image, mask, label); item 0 is {found}")
    image, mask, _ = item
    if not isinstance(image, Tensor) or image.dim() != 3:
        got = f"shape {tuple(image.shape)}" if isinstance(image, Tensor) else type(image).__name__
        raise InputError(f"{name} dataset item 0: the image must be a tensor (C, H, W), got {got}")
    if not isinstance(mask, Tensor) or tuple(mask.shape[-2:]) != tuple(image.shape[-2:]) or mask.dim() not in (2, 3):
        got = f"shape {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise InputError(
            f"{name} dataset item 0: the mask must be a tensor (1, H, W) of the image's size "
            f"{tuple(image.shape[-2:])}, got {got}"
        )


# -- checkpoints -----------------------------------------------------------------------------------------------


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints through relprop._io.atomic_torch_save (temporary file, fsync, os.replace): never half-written."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, path)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if state.get("numpy") is not None:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _clone_tensors(data: Any) -> Any:
    if isinstance(data, Tensor):
        return data.clone()
    if isinstance(data, Mapping):
        return {k: _clone_tensors(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(_clone_tensors(v) for v in data)
    return data


def _read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        found = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
        if found:
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain containers, which relprop does not "
                f"unpickle (torch.load(weights_only=True)): {found[0]}"
            ) from exc
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated?): {exc}") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} is not a Lightning checkpoint: it has no 'state_dict'")
    meta = ckpt.get("relprop")
    if not isinstance(meta, Mapping) or "config" not in meta:
        raise CheckpointError(
            f"{path} has no relprop metadata (checkpoint['relprop']['config']); it was not written by "
            "relprop.isnet.training (fit or ISNetModule)"
        )
    try:
        meta_config = TrainConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the stored training config is invalid: {exc}") from exc
    ckpt["relprop"] = {**meta, "config": meta_config}
    return ckpt


def _model_state(ckpt: Mapping[str, Any]) -> dict[str, Tensor]:
    return {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def load_checkpoint(
    path: str | Path, build: Callable[[Mapping[str, Any]], nn.Module]
) -> tuple[nn.Module, TrainConfig, dict[str, Any] | None]:
    """``(model, config, model_spec)`` from a checkpoint written by :func:`fit` or :class:`ISNetModule`:
    the model is ``build(model_spec)`` (``model_spec`` None if the run had none) with the trained weights
    loaded strictly, in the mode ``build`` left it in.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` for an unreadable one or one
    without relprop metadata."""
    ckpt = _read_checkpoint(path)
    meta = ckpt["relprop"]
    spec = meta.get("model_spec")
    model = build(spec)
    try:
        model.load_state_dict(_model_state(ckpt))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit the model built from {spec!r}: {exc}") from exc
    return model, meta["config"], (dict(spec) if spec is not None else None)


# -- the LightningModule ---------------------------------------------------------------------------------------

_SUM_KEYS = ("loss", "ce", "heatmap", "rrr", "acc")


@dataclass
class _Run:
    """What :func:`fit` hands to the module: data, output folder and the position to start from."""

    train: Any
    val: Any
    out_dir: Path
    start_epoch: int = 0
    start_batch: int = 0
    start_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    sums: list[float] | None = None
    elapsed: float = 0.0
    optimizer_state: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    world_size: int = 1


class ISNetModule(L.LightningModule):
    """LightningModule training ``model`` with :func:`isnet_step` (plain / rrr / ISNet variants).

    SGD(lr, momentum, weight_decay); clip gradients with ``Trainer(gradient_clip_val=config.clip,
    gradient_clip_algorithm="norm")`` (what :func:`fit` does). Logs per step ``loss``/``acc`` to the
    progress bar and per epoch ``train_loss``, ``train_ce``, ``train_heatmap``/``train_rrr``,
    ``train_acc`` and, with validation data, ``val_acc``, ``val_ce``, ``val_heatmap`` (ISNet variants).
    Validation computes the maps in the model's eval mode without a graph; it needs
    ``Trainer(inference_mode=False)``. Checkpoints carry ``checkpoint["relprop"] = {"config", "model_spec",
    "rng", ...}``; :func:`load_checkpoint` reads them.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, model_spec: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        config.validate()
        self.model = model
        self.config = config
        self.model_spec = dict(model_spec) if model_spec is not None else None
        self._maps: ISNetMaps | None = None
        self._run: _Run | None = None
        self._epoch = 0
        self._batch = 0
        self._step = 0
        self._saved_step = -1
        self._sums = [0.0] * (len(_SUM_KEYS) + 1)
        self._val_sums = [0.0] * 4
        self._val_generator: torch.Generator | None = None
        self._val_metrics: dict[str, Any] = {}
        self._epoch_started = 0.0
        self._elapsed = 0.0
        self._history: list[dict[str, Any]] = []
        self._stop_signal: int | None = None
        self._interrupted: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self._trained_here = False

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_maps"] = None  # rebuilt lazily (ddp_spawn pickles the module)
        state["_old_handlers"] = {}
        return state

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def _isnet_maps(self) -> ISNetMaps | None:
        if self.config.method in VARIANTS and self._maps is None:
            self._maps = _build_maps(self.model, self.config)
        return self._maps

    def _epoch_index(self) -> int:
        return self._epoch if self._run is not None else self.current_epoch

    # training ---------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self._run is not None:  # also inside processes that ddp_spawn starts
            for pattern in _QUIET:
                warnings.filterwarnings("ignore", message=pattern)

    def on_train_start(self) -> None:
        run = self._run
        if run is None:
            return
        if run.start_batch and run.world_size != self.trainer.world_size:
            raise ValueError(
                f"cannot resume mid-epoch on {self.trainer.world_size} processes: the checkpoint stopped inside "
                f"epoch {run.start_epoch} of a run on {run.world_size}; resume with devices={run.world_size}"
            )
        self._install_signal_handlers()
        connector = getattr(self.trainer, "_signal_connector", None)
        if connector is not None and hasattr(connector, "received_sigterm"):
            connector.received_sigterm = False  # a SIGTERM before this point also set our flag; Lightning's
            # own reaction (SIGTERMException inside the loop) would skip the checkpoint
        self._trained_here = True
        self._history = [dict(h) for h in run.history]
        self._step = run.start_step
        self._saved_step = run.start_step if run.optimizer_state is not None else -1
        if run.optimizer_state is not None:
            # cloned: with ddp_spawn on CPU every tensor handed to the processes lives in shared memory, and
            # two processes updating one momentum buffer in place would corrupt it
            self.trainer.optimizers[0].load_state_dict(_clone_tensors(run.optimizer_state))
        if run.rng is not None:
            _set_rng_state(run.rng)
        else:
            torch.manual_seed(self.config.seed)
        if self.trainer.is_global_zero:
            self._write_metrics(finished=False)

    def train_dataloader(self) -> DataLoader:
        run = self._run
        if run is None:
            raise RuntimeError("ISNetModule has no training data of its own: pass train_dataloaders to Trainer.fit")
        first = self.trainer.current_epoch == 0
        epoch = run.start_epoch + self.trainer.current_epoch
        start = run.start_batch * self.config.batch_size if first else 0
        sampler = EpochSampler(
            len(run.train),
            self.config.seed,
            epoch,
            start=start,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
        )
        return DataLoader(
            run.train,
            batch_sampler=BatchSampler(sampler, self.config.batch_size, drop_last=False),
            num_workers=self.config.num_workers,
            generator=_generator(2, self.config.seed, epoch),
        )

    def val_dataloader(self) -> DataLoader | list[Any]:
        run = self._run
        if run is None or run.val is None:
            return []
        sampler = EpochSampler(
            len(run.val),
            self.config.seed,
            0,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
            shuffle=False,
        )
        return DataLoader(
            run.val, batch_size=self.config.batch_size, sampler=sampler, num_workers=self.config.num_workers
        )

    def _batches_per_epoch(self) -> int:
        assert self._run is not None
        per_rank = math.ceil(len(self._run.train) / self.trainer.world_size)
        return math.ceil(per_rank / self.config.batch_size)

    def on_train_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()
        run = self._run
        if run is not None and self.trainer.current_epoch == 0 and run.start_batch > 0:
            self._epoch, self._batch = run.start_epoch, run.start_batch
            self._elapsed = run.elapsed
            self._sums = list(run.sums) if (run.sums is not None and self.trainer.is_global_zero) else self._zeros()
        else:
            self._epoch = (run.start_epoch if run is not None else 0) + self.trainer.current_epoch
            self._batch, self._elapsed, self._sums = 0, 0.0, self._zeros()

    def _zeros(self) -> list[float]:
        return [0.0] * (len(_SUM_KEYS) + 1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, stats = isnet_step(
            self.model, batch, self.config, maps=self._isnet_maps(), epoch=self._epoch_index(), step=self._step
        )
        b = int(batch[0].shape[0])
        for i, key in enumerate(_SUM_KEYS):
            self._sums[i] += stats.get(key, 0.0) * b
        self._sums[-1] += b
        self.log_dict(
            {"loss": stats["loss"], "acc": stats["acc"]}, prog_bar=True, on_step=True, on_epoch=False, batch_size=b
        )
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._step += 1
        self._batch += 1
        if self._run is None:
            return
        stop = self._agreed_stop()
        if stop is not None and self._batch < self._batches_per_epoch():
            self._interrupted = stop
            self._save(finished_epoch=False)
            self.trainer.should_stop = True

    def _agreed_stop(self) -> int | None:
        """The pending stop signal, agreed on by all processes (any process's signal stops all)."""
        signum = self._stop_signal or 0
        if self.trainer.world_size > 1:
            t = torch.tensor([float(signum)], device=self.device)
            signum = int(self.trainer.strategy.reduce(t, reduce_op="max").item())
        return signum or None

    def _reduce(self, values: list[float]) -> list[float]:
        if self.trainer.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.trainer.strategy.reduce(t, reduce_op="sum").tolist()

    def on_train_epoch_end(self) -> None:
        sums = self._reduce(self._sums)
        n = max(sums[-1], 1.0)
        train = {f"train_{k}": sums[i] / n for i, k in enumerate(_SUM_KEYS)}
        if self.config.method not in VARIANTS:
            train.pop("train_heatmap")
        if self.config.method != "rrr":
            train.pop("train_rrr")
        if self._interrupted is None:
            self.log_dict(train, on_step=False, on_epoch=True, prog_bar=False, sync_dist=False)
        if self._run is None or self._interrupted is not None:
            return
        if self._batch < self._batches_per_epoch():  # stopped early by max_steps
            return
        seconds = self._elapsed + time.perf_counter() - self._epoch_started
        entry: dict[str, Any] = {"epoch": self._epoch, **train}
        entry.setdefault("train_heatmap", None)
        entry.update(self._val_metrics if self._run.val is not None else {})
        for key in ("val_acc", "val_ce", "val_heatmap"):
            entry.setdefault(key, None)
        entry["seconds"] = seconds
        self._history.append(entry)
        self._epoch, self._batch, self._elapsed, self._sums = self._epoch + 1, 0, 0.0, self._zeros()
        stop = self._agreed_stop()
        if stop is not None and self._epoch < self.config.epochs:
            self._interrupted = stop
            self.trainer.should_stop = True
        self._save(finished_epoch=True)
        self._keep_if_best()

    def _keep_if_best(self) -> None:
        """Copy last.ckpt to best.ckpt when the epoch just finished has the lowest validation loss so far
        ((1 − P)·CE + P·L_H for ISNet variants, CE otherwise)."""
        assert self._run is not None
        losses = [_val_loss(h, self.config) for h in self._history]
        if not losses or losses[-1] is None or not self.trainer.is_global_zero:
            return
        if all(prev is None or losses[-1] < prev for prev in losses[:-1]):
            out = self._run.out_dir
            atomic_write_bytes(out / BEST_NAME, (out / CHECKPOINT_NAME).read_bytes())

    def on_train_end(self) -> None:
        if self._run is not None and self._saved_step != self._step:
            self._save(finished_epoch=False)
        self._restore_signal_handlers()

    # validation -------------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sums = [0.0] * 4
        self._val_generator = _generator(1, self.config.seed, self._epoch_index())

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self._interrupted is not None:
            return  # stopping: skip the work
        if torch.is_inference_mode_enabled():  # a user's Trainer(inference_mode=True): maps need autograd
            with torch.inference_mode(False):
                batch = [t.clone() if isinstance(t, Tensor) else t for t in batch]
        if self.config.method in VARIANTS:
            with torch.inference_mode(False), torch.enable_grad():
                _, stats = isnet_step(
                    self.model,
                    batch,
                    self.config,
                    maps=self._isnet_maps(),
                    epoch=self._epoch_index(),
                    generator=self._val_generator,
                    create_graph=False,
                )
        else:
            x, _, y = _unpack(batch)
            logits = self.model(x)
            stats = {
                "ce": float(F.cross_entropy(logits, y)),
                "acc": float((logits.argmax(1) == y).float().mean()),
            }
        b = int(batch[0].shape[0])
        self._val_sums[0] += stats["ce"] * b
        self._val_sums[1] += stats.get("heatmap", 0.0) * b
        self._val_sums[2] += stats["acc"] * b
        self._val_sums[3] += b

    def on_validation_epoch_end(self) -> None:
        if self._interrupted is not None:
            return
        ce, heat, acc, n = self._reduce(self._val_sums)
        n = max(n, 1.0)
        metrics: dict[str, Any] = {"val_acc": acc / n, "val_ce": ce / n}
        if self.config.method in VARIANTS:
            metrics["val_heatmap"] = heat / n
        self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)
        metrics.setdefault("val_heatmap", None)
        self._val_metrics = metrics

    # checkpoints ------------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sums = self._reduce(self._sums) if self._run is not None else list(self._sums)
        checkpoint["relprop"] = {
            "format": _FORMAT,
            "config": self.config.to_dict(),
            "model_spec": self.model_spec,
            "rng": _rng_state(),
            "epoch": self._epoch_index(),
            "batch": self._batch,
            "global_step": self._step,
            "world_size": self.trainer.world_size,
            "history": [dict(h) for h in self._history],
            "sums": sums,
            "elapsed": self._elapsed + (time.perf_counter() - self._epoch_started if self._batch else 0.0),
            "finished": self._epoch_index() >= self.config.epochs and self._batch == 0,
        }
        checkpoint["epoch"] = self._epoch_index()
        checkpoint["global_step"] = self._step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("relprop")
        if self._run is None and isinstance(meta, Mapping) and meta.get("rng") is not None:
            _set_rng_state(meta["rng"])  # resuming with a user's Trainer(ckpt_path=...)

    def _save(self, finished_epoch: bool) -> None:
        assert self._run is not None
        self._saved_step = self._step
        self.trainer.save_checkpoint(self._run.out_dir / CHECKPOINT_NAME, weights_only=False)
        if self.trainer.is_global_zero:
            self._write_metrics(finished=finished_epoch and self._epoch >= self.config.epochs)

    def _write_metrics(self, finished: bool) -> None:
        assert self._run is not None
        data = {
            "config": self.config.to_dict(),
            "model_spec": self.model_spec,
            "history": self._history,
            "finished": finished,
            "epoch": self._epoch,
            "global_step": self._step,
            "interrupted": signal.Signals(self._interrupted).name if self._interrupted else None,
        }
        _write_json(self._run.out_dir / METRICS_NAME, data)

    # signals ----------------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (the last checkpoint stays usable)
        self._stop_signal = signum

    def _install_signal_handlers(self) -> None:
        """Replaces Lightning's SIGTERM handler (which raises inside the loop) and SIGINT's with a flag
        that the module checks after every optimiser step."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._old_handlers = {}


# -- fit -------------------------------------------------------------------------------------------------------


class _ProgressBar(TQDMProgressBar):
    """Lightning's bar, labelled with the run's own epoch ("Epoch 3/10") also after resuming."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        module = trainer.lightning_module
        if isinstance(module, ISNetModule) and module._run is not None:
            epoch = module._run.start_epoch + trainer.current_epoch
            self.train_progress_bar.set_description(f"Epoch {epoch + 1}/{module.config.epochs}")


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    ``history``: one dict per completed epoch (``epoch`` from 0, ``train_loss``, ``train_ce``,
    ``train_heatmap``, ``train_acc``, ``val_acc``, ``val_ce``, ``val_heatmap``, ``seconds``; ``train_rrr``
    for rrr; metrics that do not apply (no validation data, no heatmap loss) are None).
    """

    history: list[dict[str, Any]]
    last_checkpoint: Path
    metrics_path: Path
    model: nn.Module
    finished: bool = False
    global_step: int = 0


_QUIET = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*in eval mode at the start of training.*",
    r".*sync_dist=True.*",
    r".*GPU available but not used.*",
    r".*LeafSpec.*is deprecated.*",
)


def fit(
    model: nn.Module,
    train: Dataset,
    val: Dataset | None = None,
    config: TrainConfig = TrainConfig(),  # noqa: B008 (a validated dataclass, never mutated)
    *,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    model_spec: Mapping[str, Any] | None = None,
    accelerator: str = "cpu",
    devices: int = 1,
    strategy: str = "auto",
    max_steps: int = -1,
) -> TrainResult:
    """Train ``model`` in place with a Lightning Trainer.

    Writes ``out_dir/last.ckpt`` (atomically: temporary file + os.replace) and ``out_dir/metrics.json``
    (``{"config", "model_spec", "history", "finished", ...}``) after every epoch, when training stops (end,
    ``max_steps`` global optimiser steps, SIGINT/SIGTERM). With validation data, ``out_dir/best.ckpt`` is a copy
    of the checkpoint of the epoch with the lowest validation loss (ISNet training can diverge late: keep it
    in mind before using the last epoch). With ``resume=True`` and an existing
    ``last.ckpt`` it continues exactly where that run stopped (weights, optimiser, RNG state, the position in
    the epoch's shuffled order); the checkpoint's config must equal ``config`` except for ``epochs``.

    On SIGINT/SIGTERM it finishes the current step, writes the checkpoint and metrics (``"finished":
    false``), restores the previous signal handlers and raises :class:`TrainingInterrupted` (a
    KeyboardInterrupt). A non-finite loss raises FloatingPointError naming the epoch, step and method.
    The model's train/eval modes and device are restored afterwards; no hooks are left on it.
    """
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_dataset(train, "train")
    if val is not None:
        _check_dataset(val, "validation")
    if model_spec is not None:
        try:
            json.dumps(dict(model_spec), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model_spec must be JSON-serialisable: {exc}") from None
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < -1:
        raise ValueError(f"fit(max_steps={max_steps!r}): use -1 (no limit) or a number of steps >= 0")

    run = _Run(train=train, val=val, out_dir=out)
    ckpt_path = out / CHECKPOINT_NAME
    if resume and ckpt_path.exists():
        _resume_from(ckpt_path, model, config, run)
    elif not resume:
        ckpt_path.unlink(missing_ok=True)  # start over: never resume into an older run's checkpoint later
        (out / BEST_NAME).unlink(missing_ok=True)
    metrics_path = out / METRICS_NAME
    remaining_steps = -1 if max_steps < 0 else max_steps - run.start_step
    if run.start_epoch >= config.epochs or remaining_steps == 0:
        finished = run.start_epoch >= config.epochs
        if not metrics_path.exists() or finished:
            _write_json(metrics_path, _metrics_doc(config, model_spec, run, finished))
        return TrainResult(run.history, ckpt_path, metrics_path, model, finished, run.start_step)

    L.seed_everything(config.seed, workers=True, verbose=False)
    modes = {name: m.training for name, m in model.named_modules()}
    device = next((p.device for p in model.parameters()), None)
    model.train()
    module = ISNetModule(model, config, model_spec)
    module._run = run
    if config.method in VARIANTS:
        module._maps = _build_maps(model, config)  # fails here, naming the module, if relprop cannot trace it
    # fit's own handlers cover the time before the module installs its handlers (Lightning's SIGTERM
    # handler, registered in between, chains to them)
    old = _install(module)
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:  # Lightning's INFO chatter (devices, tips); the progress bar and warnings stay
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            for pattern in _QUIET:
                warnings.filterwarnings("ignore", message=pattern)
            trainer = L.Trainer(
                accelerator=accelerator,
                devices=devices,
                strategy=strategy,
                max_epochs=config.epochs - run.start_epoch,
                max_steps=remaining_steps,
                gradient_clip_val=config.clip,
                gradient_clip_algorithm="norm" if config.clip is not None else None,
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=progress,
                num_sanity_val_steps=0,
                inference_mode=False,
                use_distributed_sampler=False,
                reload_dataloaders_every_n_epochs=1,
                limit_val_batches=None if val is not None else 0,
                default_root_dir=out,
                plugins=[_AtomicCheckpointIO()],
                callbacks=[_ProgressBar()] if progress else None,
            )
            trainer.fit(module)
    finally:
        _restore(old)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for name, m in model.named_modules():
            if name in modes:
                m.train(modes[name])
        if device is not None:
            model.to(device)
    if module._trained_here:
        history, step, epoch, interrupted = module._history, module._step, module._epoch, module._interrupted
        finished = epoch >= config.epochs
    else:  # ddp_spawn: the processes that trained are gone; rank 0's metrics file is the record
        doc = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        history, finished = doc.get("history", []), bool(doc.get("finished"))
        step, epoch = int(doc.get("global_step", run.start_step)), int(doc.get("epoch", run.start_epoch))
        interrupted = int(signal.Signals[doc["interrupted"]]) if doc.get("interrupted") else None
    if interrupted is not None:
        raise TrainingInterrupted(interrupted, ckpt_path, epoch, step)
    return TrainResult(history, ckpt_path, metrics_path, model, finished, step)


def _install(module: ISNetModule) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, module._on_signal)
    return old


def _restore(old: Mapping[int, Any]) -> None:
    for s, handler in old.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _metrics_doc(config: TrainConfig, spec: Mapping[str, Any] | None, run: _Run, finished: bool) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "model_spec": dict(spec) if spec is not None else None,
        "history": run.history,
        "finished": finished,
        "epoch": run.start_epoch,
        "global_step": run.start_step,
        "interrupted": None,
    }


def _resume_from(path: Path, model: nn.Module, config: TrainConfig, run: _Run) -> None:
    ckpt = _read_checkpoint(path)
    meta = ckpt["relprop"]
    saved: TrainConfig = meta["config"]
    a, b = saved.to_dict(), config.to_dict()
    differing = [k for k in a if k != "epochs" and a[k] != b[k]]
    if differing:
        detail = "; ".join(f"{k}: checkpoint {a[k]!r}, now {b[k]!r}" for k in differing)
        raise ValueError(
            f"cannot resume from {path}: its training config differs in {', '.join(differing)} ({detail}). "
            "Use the same config (only epochs may change), another out_dir, or resume=False to start over"
        )
    try:
        model.load_state_dict(_model_state(ckpt))
    except RuntimeError as exc:
        raise CheckpointError(f"cannot resume from {path}: its weights do not fit the model: {exc}") from exc
    run.start_epoch = int(meta["epoch"])
    run.start_batch = int(meta.get("batch", 0))
    run.start_step = int(meta["global_step"])
    run.history = list(meta.get("history", []))
    run.sums = list(meta["sums"]) if meta.get("sums") is not None else None
    run.elapsed = float(meta.get("elapsed", 0.0))
    run.rng = meta.get("rng")
    run.world_size = int(meta.get("world_size", 1))
    states = ckpt.get("optimizer_states") or []
    run.optimizer_state = states[0] if states else None
    if run.start_batch and run.start_epoch >= config.epochs:
        raise ValueError(f"cannot resume from {path}: it stopped inside epoch {run.start_epoch}, after config.epochs")
    if run.start_epoch > config.epochs:
        raise ValueError(
            f"cannot resume from {path}: it has trained {run.start_epoch} epochs, more than config.epochs="
            f"{config.epochs}"
        )


__all__ = [
    "METHODS", "CheckpointError", "EpochSampler", "ISNetModule", "TrainConfig", "TrainResult", "TrainingInterrupted",
    "fit", "isnet_step", "load_checkpoint", "p_at",
]  # fmt: skip
