"""The LightningModule that trains a classifier with :func:`~relprop.isnet.isnet_step` (needs ``lightning``).

It works with any Trainer (give it dataloaders of ``(image, mask, label)`` batches) and is what
:func:`~relprop.isnet.fit` runs. Lightning restores weights, optimiser, loop position and callbacks from a
checkpoint; the module adds what Lightning's checkpoint lacks, in ``checkpoint["relprop"]``: the config, the
model spec, the RNG states, the history of finished epochs and the running sums of the current epoch.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from ..errors import UsageError
from .checkpoints import FORMAT, rng_state, set_rng_state
from .config import TrainConfig, val_loss
from .sampling import EpochBatches, EpochSampler, ResumableLoader, epoch_generator
from .step import TUNING_INPUT, build_maps, isnet_step, tuning_step, unpack_batch
from .variants import VARIANTS, ISNetMaps

_SUM_KEYS = ("loss", "ce", "heatmap", "rrr", "acc")

#: Lightning warnings that say nothing about a relprop run (fit filters them, also in spawned processes)
QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*in eval mode at the start of training.*",
    r".*sync_dist=True.*",
    r".*GPU available but not used.*",
    r".*LeafSpec.*is deprecated.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*callbacks used to create the checkpoint need to be provided.*",  # fit warns in its own words
)


@dataclass
class RunData:
    """The datasets :func:`~relprop.isnet.fit` hands the module; it builds its own loaders from them."""

    train: Any
    val: Any


class ISNetModule(L.LightningModule):
    """LightningModule training ``model`` with :func:`~relprop.isnet.isnet_step` (plain / rrr / ISNet variants).

    SGD(lr, momentum, weight_decay); clip gradients with ``Trainer(gradient_clip_val=config.clip,
    gradient_clip_algorithm="norm")`` (what :func:`~relprop.isnet.fit` does). Logs per step ``loss``/``acc`` to
    the progress bar and per epoch ``train_loss``, ``train_ce``, ``train_heatmap``/``train_rrr``, ``train_acc``
    and, with validation data, ``val_acc``, ``val_ce``, ``val_heatmap`` (ISNet variants) and ``val_loss``
    ((1 − P)·CE + P·L_H for ISNet variants, CE otherwise: what ``best.ckpt`` minimises). Validation computes
    the maps in the model's eval mode without a graph; it works under ``Trainer(inference_mode=True)`` too.
    Checkpoints carry ``checkpoint["relprop"] = {"config", "model_spec", "rng", "history", ...}``;
    :func:`~relprop.isnet.load_checkpoint` reads them, and ``Trainer.fit(ckpt_path=...)`` resumes with the RNG
    states restored.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, model_spec: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        config.validate()
        self.model = model
        self.config = config
        self.model_spec = dict(model_spec) if model_spec is not None else None
        self._maps: ISNetMaps | None = None
        self._data: RunData | None = None  # set by fit: the module then builds its own dataloaders
        self._history: list[dict[str, Any]] = []
        self._epochs_done = 0
        self._batch = 0  # batches this process has trained on in the current epoch
        self._sums = _zeros()
        self._val_sums = [0.0] * 4
        self._val_generator: torch.Generator | None = None
        self._val_metrics: dict[str, Any] = {}
        self._epoch_started = 0.0
        self._elapsed = 0.0
        self._resumed: dict[str, Any] | None = None  # checkpoint["relprop"] of the checkpoint resumed from
        self._trained_here = False
        # a C1/C2 tuning run (set by fit): the ISNet config whose relevance totals the last epoch records
        self._tuning: TrainConfig | None = None
        self._tuning_maps: ISNetMaps | None = None
        self._totals: dict[str, list[Tensor]] = {}  # per layer; after a gather, rank 0 holds all processes'

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_maps"] = None  # rebuilt lazily (ddp_spawn pickles the module)
        state["_tuning_maps"] = None
        return state

    # what the run has done -----------------------------------------------------------------------------------
    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per finished epoch (see :class:`~relprop.isnet.TrainResult`)."""
        return self._history

    @property
    def epochs_done(self) -> int:
        """Finished epochs (the one that just ended included, once ``on_train_epoch_end`` has run)."""
        return self._epochs_done

    @property
    def batches_done(self) -> int:
        """Batches this process has trained on in the current epoch (0 after a finished epoch)."""
        return self._batch

    @property
    def finished_epoch(self) -> bool:
        """Whether the epoch Lightning is in has been trained to its end and recorded (false when training
        stops inside it: a signal or ``max_steps``); checkpoint callbacks save at epoch end only then."""
        return self._epochs_done > self.current_epoch

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    @property
    def tuning_totals(self) -> dict[str, Tensor]:
        """A tuning run's recorded total |relevance| per sample of its last epoch, per layer (``"input"``: the
        input heatmap), float64 on the CPU: all processes' after that epoch (on rank 0), {} outside tuning runs."""
        return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64) for k, v in self._totals.items()}

    def _recording(self) -> bool:
        return self._tuning is not None and self.current_epoch == self.config.epochs - 1

    def _gather_totals(self) -> None:
        """Every process's totals to rank 0 (a collective when world_size > 1); the others keep none."""
        if self._tuning is None or self.trainer.world_size == 1:
            return
        gathered: dict[str, list[Tensor]] = {}
        for name in sorted(set(self._totals) | {TUNING_INPUT, *self._tuning.hidden_layers}):
            t = torch.cat(self._totals[name]) if self._totals.get(name) else torch.zeros(0, dtype=torch.float64)
            n = cast(Tensor, self.all_gather(torch.tensor([t.numel()], device=self.device)))
            padded = torch.full((max(int(n.max()), 1),), float("nan"), dtype=torch.float64, device=self.device)
            padded[: t.numel()] = t.to(self.device)
            every = cast(Tensor, self.all_gather(padded)).reshape(-1).cpu()
            gathered[name] = [every[~torch.isnan(every)]] if self.trainer.is_global_zero else []
        self._totals = gathered

    def _isnet_maps(self) -> ISNetMaps | None:
        if self.config.method in VARIANTS and self._maps is None:
            self._maps = build_maps(self.model, self.config)
        return self._maps

    # data (only when fit gave the module its datasets) ---------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self._data is not None:  # also inside processes that ddp_spawn starts
            for pattern in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)

    def train_dataloader(self) -> DataLoader:
        """This epoch's batches of this process (:class:`~relprop.isnet.sampling.ResumableLoader`: Lightning
        saves its position and restores it when resuming mid-epoch)."""
        if self._data is None:
            raise RuntimeError("ISNetModule has no training data of its own: pass train_dataloaders to Trainer.fit")
        epoch, c = self.current_epoch, self.config
        sampler = EpochSampler(
            len(self._data.train), c.seed, epoch, rank=self.trainer.global_rank, world_size=self.trainer.world_size
        )
        return ResumableLoader(
            self._data.train,
            EpochBatches(sampler, c.batch_size),
            lambda: self._batch,
            num_workers=c.num_workers,
            generator=epoch_generator(2, c.seed, epoch),
        )

    def val_dataloader(self) -> DataLoader | list[Any]:
        if self._data is None or self._data.val is None:
            return []
        c = self.config
        sampler = EpochSampler(
            len(self._data.val),
            c.seed,
            0,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
            shuffle=False,
        )
        return DataLoader(
            self._data.val,
            batch_size=c.batch_size,
            sampler=sampler,
            num_workers=c.num_workers,
            generator=epoch_generator(3, c.seed, 0),  # not torch's global RNG: validation must not move it
        )

    # training ---------------------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        meta = self._resumed
        self._trained_here = True
        if meta is None:
            if self._data is not None:
                torch.manual_seed(self.config.seed)
            return
        batch = int(meta.get("batch", 0))
        saved_world = int(meta.get("world_size", 1))
        if batch and saved_world != self.trainer.world_size:
            raise UsageError(
                f"cannot resume mid-epoch on {self.trainer.world_size} processes: the checkpoint stopped inside "
                f"epoch {meta.get('epoch')} of a run on {saved_world}; resume with devices={saved_world}"
            )
        totals = meta.get("tuning_totals")
        if self._tuning is not None and totals and self.trainer.is_global_zero:
            self._totals = {k: [v.to(torch.float64).cpu()] for k, v in totals.items()}
        if batch:  # Lightning does not call on_train_epoch_start for the epoch it resumes inside
            self._batch, self._elapsed = batch, float(meta.get("elapsed", 0.0))
            sums = meta.get("sums")
            self._sums = [float(s) for s in sums] if sums is not None and self.trainer.is_global_zero else _zeros()
            self._epoch_started = time.perf_counter()
        if meta.get("rng") is not None:
            set_rng_state(meta["rng"])  # last: nothing between here and the next step draws random numbers
        self._resumed = None

    def on_train_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()
        self._epochs_done = self.current_epoch
        self._batch, self._elapsed, self._sums = 0, 0.0, _zeros()
        if self._recording():
            self._totals = {}

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self._recording():
            assert self._tuning is not None
            if self._tuning_maps is None:
                self._tuning_maps = build_maps(self.model, self._tuning)
            loss, stats, totals = tuning_step(
                self.model, batch, self._tuning, self._tuning_maps, epoch=self.current_epoch, step=self.global_step
            )
            for name, t in totals.items():
                self._totals.setdefault(name, []).append(t)
        else:
            loss, stats = isnet_step(
                self.model, batch, self.config, maps=self._isnet_maps(), epoch=self.current_epoch,
                step=self.global_step,
            )  # fmt: skip
        b = int(batch[0].shape[0])
        for i, key in enumerate(_SUM_KEYS):
            self._sums[i] += stats.get(key, 0.0) * b
        self._sums[-1] += b
        self._batch = batch_idx + 1  # Lightning's batch_idx counts on across a mid-epoch resume
        self.log_dict(
            {"loss": stats["loss"], "acc": stats["acc"]}, prog_bar=True, on_step=True, on_epoch=False, batch_size=b
        )
        return loss

    def _reduce(self, values: list[float]) -> list[float]:
        """Sums over all processes (a collective: every process calls it at the same point)."""
        if self.trainer.world_size == 1:
            return list(values)
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
        self.log_dict(train, on_step=False, on_epoch=True, prog_bar=False, sync_dist=False)
        if self._batch < self.trainer.num_training_batches:  # stopped inside the epoch (signal, max_steps)
            return
        if self._recording():
            self._gather_totals()
        entry: dict[str, Any] = {"epoch": self.current_epoch, **train}
        entry.setdefault("train_heatmap", None)
        if self._data is None or self._data.val is not None:
            entry.update(self._val_metrics)
        for key in ("val_acc", "val_ce", "val_heatmap"):
            entry.setdefault(key, None)
        entry.pop("val_loss", None)
        entry["seconds"] = self._elapsed + time.perf_counter() - self._epoch_started
        self._history.append(entry)
        self._epochs_done = self.current_epoch + 1
        self._batch, self._elapsed, self._sums = 0, 0.0, _zeros()

    # validation -------------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sums = [0.0] * 4
        self._val_generator = epoch_generator(1, self.config.seed, self.current_epoch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
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
                    epoch=self.current_epoch,
                    generator=self._val_generator,
                    create_graph=False,
                )
        else:
            x, _, y = unpack_batch(batch)
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
        ce, heat, acc, n = self._reduce(self._val_sums)
        n = max(n, 1.0)
        metrics: dict[str, Any] = {"val_acc": acc / n, "val_ce": ce / n}
        if self.config.method in VARIANTS:
            metrics["val_heatmap"] = heat / n
        metrics["val_loss"] = val_loss(self.config, self.current_epoch, metrics["val_ce"], metrics.get("val_heatmap"))
        self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)
        metrics.setdefault("val_heatmap", None)
        self._val_metrics = metrics

    # checkpoints ------------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["relprop"] = {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "model_spec": self.model_spec,
            "rng": rng_state(),
            "epoch": self._epochs_done,
            "batch": self._batch,
            "global_step": self.global_step,
            "world_size": self.trainer.world_size,
            "history": [dict(h) for h in self._history],
            "sums": self._reduce(self._sums),
            "elapsed": self._elapsed + (time.perf_counter() - self._epoch_started if self._batch else 0.0),
            "finished": self._epochs_done >= self.config.epochs and self._batch == 0,
        }
        if self._tuning is not None:  # all processes' totals so far (rank 0 writes the checkpoint)
            if self._recording():
                self._gather_totals()
            checkpoint["relprop"]["tuning_totals"] = self.tuning_totals

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("relprop")
        if not isinstance(meta, Mapping):
            return
        self._resumed = dict(meta)  # the rest is restored in on_train_start, once the Trainer is set up
        self._history = [dict(h) for h in meta.get("history", [])]
        self._epochs_done = int(meta.get("epoch", 0))


def _zeros() -> list[float]:
    return [0.0] * (len(_SUM_KEYS) + 1)


__all__ = ["ISNetModule", "QUIET_WARNINGS", "RunData"]
