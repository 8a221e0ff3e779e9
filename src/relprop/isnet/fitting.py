"""``fit``: train a classifier with a Lightning Trainer, checkpointing through Lightning's own machinery.

Files in ``out_dir``:

* ``last.ckpt``: a ``ModelCheckpoint`` after every epoch and, when training stops inside an epoch (SIGINT,
  SIGTERM, ``max_steps``), after the current optimiser step. Never on an exception (no ``save_on_exception``,
  not even for Lightning's own ``SIGTERMException``): an exception comes in the middle of a step (a non-finite
  loss) or, Lightning's, possibly in the middle of validation, where no exact resume is possible; the previous
  checkpoint stays the valid one.
* ``best.ckpt`` (with validation data): the epoch with the lowest (1 − P)·CE + P·L_H (CE for plain / rrr), a
  byte copy of that epoch's ``last.ckpt``. At an epoch end :class:`_BestCheckpoint` first decides whether the
  epoch is the best so far (its state, the best epoch and score, goes into every checkpoint), then last.ckpt is
  written, then copied to best.ckpt (atomically, :func:`_write_best`). So last.ckpt always records which epoch
  best.ckpt must hold, and best.ckpt never holds an epoch that last.ckpt has not reached. A kill between the
  write and the copy leaves best.ckpt one best epoch behind; resuming checks best.ckpt's epoch against the one
  last.ckpt records and repairs it from last.ckpt, which is exactly that epoch (:func:`_check_best`).
* ``metrics.json``: config, model spec, history, finished / interrupted (:class:`_MetricsFile`), and the C1/C2
  tuning record (``"tuning"``) when the run tuned them.
* With ``TrainConfig.tune_epochs > 0`` (ISNet variants): ``tuning/`` (the separate plain tuning run: its own
  ``last.ckpt``, ``metrics.json`` and ``totals.pt``, the total |relevance| per sample of its last epoch per layer)
  and ``tuning.json`` (the config it was tuned for, C1, C2, μ, σ, n, per hidden layer too). The ISNet run does
  not use the tuning network's weights; ``tuning/last.ckpt`` is kept only as the record of that run.

Every file is written atomically (temporary file, fsync, ``os.replace``): checkpoints through the checkpoint IO
plugin :class:`_AtomicCheckpointIO`. The temporary files a killed write leaves (``.last.ckpt.XXXXXXXX.tmp`` and the
like, for the run's own files only) are removed when the next run in ``out_dir`` starts.

Resuming is ``Trainer.fit(ckpt_path=last.ckpt)``: Lightning restores weights, optimiser, loop position (epoch,
batch in the epoch, global step), the callbacks' state (the best score) and the training loader's position
(:class:`~relprop.isnet.sampling.ResumableLoader`); :class:`~relprop.isnet.ISNetModule` restores what Lightning
does not save: RNG states, history, the running sums of the epoch.

With several processes (DDP), ``batch_size`` is per process and each process reads every ``world_size``-th
sample of the epoch's permutation (the semantics of ``DistributedSampler``), so a run on 2 processes with batch
size b sees the same global batches as one process with batch size 2b.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import signal
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torch.utils.data import Dataset

from .._io import atomic_torch_save, atomic_write
from ..errors import CheckpointError, InputError, RecipeWarning, TrainingInterrupted, UsageError
from .checkpoints import (
    BEST_NAME,
    CHECKPOINT_NAME,
    FORMAT,
    METRICS_NAME,
    TUNING_NAME,
    checkpoint_origin,
    model_state,
    read_checkpoint,
    remove_stale_temporaries,
    write_json,
)
from .config import ResumeConflict, TrainConfig, resume_conflicts
from .loss import tune_c1_c2
from .module import QUIET_WARNINGS, ISNetModule, RunData
from .sampling import check_dataset
from .step import TUNING_INPUT, build_maps
from .variants import VARIANTS


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, writing through relprop._io (temporary file, fsync, os.replace): a
    checkpoint file is never half-written."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, path)


class _Stop(Callback):
    """Stops training after an optimiser step: on SIGINT / SIGTERM (then fit raises TrainingInterrupted) and at
    ``max_steps``. Inside an epoch it sets ``stop_here``, and last.ckpt is written right after that step.

    Hand-written, because Lightning's own handling does not give these guarantees:

    * Ctrl-C: Lightning turns the KeyboardInterrupt (raised wherever Python is, in the middle of a step
      included) into ``sys.exit(1)``, without a checkpoint.
    * SIGTERM: Lightning's handler makes the loops raise ``SIGTERMException`` at their next check, which can be
      in the middle of validation; a checkpoint there holds part of an epoch's validation, which Lightning's
      resume does not replay exactly (the module's validation sums, the stochastic variant's generator).
    * ``Trainer(max_steps=)`` makes Lightning's loops "iteration-based": resuming from an epoch-end checkpoint
      then replays that epoch's end and loses optimiser steps (Lightning 2.6), so fit leaves the Trainer's
      max_steps at -1 and stops here.

    Both signals set a flag, read after every optimiser step and at every epoch end (after validation) and
    agreed on by all processes (one process's signal stops all). A second Ctrl-C raises KeyboardInterrupt at
    once. Lightning registers its SIGTERM handler just before training starts, chained to the handler it finds
    (this one, installed by fit); ``on_train_start`` puts this one back in its place, since Lightning has no
    public switch to leave its handler out. A SIGTERM in between reaches both: Lightning raises
    ``SIGTERMException`` after the first step (last.ckpt is written here just before) or, if that step ends the
    epoch, in the middle of its validation (last.ckpt stays the previous one); fit reports both as
    TrainingInterrupted.
    """

    def __init__(self, max_steps: int = -1) -> None:
        self.max_steps = max_steps
        self.pending: int | None = None  # a signal received in this process
        self.signum: int | None = None  # the signal training stopped on (agreed by all processes)
        self.stop_here = False  # training stops inside the epoch after this step: write last.ckpt now
        self._previous: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_previous": {}}  # handlers stay in the process that installed them

    def handle(self, signum: int, frame: Any) -> None:
        if self.pending is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (the last checkpoint stays usable)
        self.pending = signum

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self.handle)

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _agreed(self, trainer: L.Trainer, module: L.LightningModule) -> int | None:
        signum = self.pending or 0
        if trainer.world_size > 1:  # a collective: every process calls it at the same point
            t = torch.tensor([float(signum)], device=module.device)
            signum = int(trainer.strategy.reduce(t, reduce_op="max").item())
        return signum or None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        assert isinstance(pl_module, ISNetModule)
        stop = self._agreed(trainer, pl_module)
        at_max_steps = 0 <= self.max_steps <= trainer.global_step
        if at_max_steps:
            trainer.should_stop = True
        if pl_module.batches_done >= trainer.num_training_batches:
            return  # the epoch's last batch: validation runs, then on_train_epoch_end decides about a signal
        if stop is not None:
            self.signum = stop
            trainer.should_stop = True
        self.stop_here = stop is not None or at_max_steps
        if self.stop_here:
            # Lightning validates when should_stop is set (early stopping); not after part of an epoch
            trainer.limit_val_batches = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stop = self._agreed(trainer, pl_module)
        if self.signum is None and stop is not None and trainer.current_epoch + 1 < (trainer.max_epochs or 0):
            self.signum = stop
            trainer.should_stop = True


class _EpochEndCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that saves at epoch end only after a whole epoch: Lightning also calls
    ``on_train_epoch_end`` when training stops inside an epoch, and a checkpoint saved there would resume as if
    the epoch had ended."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, ISNetModule) or pl_module.finished_epoch:
            super().on_train_epoch_end(trainer, pl_module)


BEST_STATE_KEY = "relprop.best"  #: the state of :class:`_BestCheckpoint` in checkpoint["callbacks"]


class _BestCheckpoint(Checkpoint):
    """Decides at each finished epoch's end whether it is the best so far (lowest ``val_loss``); its state, the
    best epoch (epochs done) and score, is saved in every checkpoint. A ``Checkpoint`` so that Lightning calls
    it after the module's ``on_train_epoch_end`` (which records the epoch) and, listed first, before
    :class:`_LastCheckpoint`, which writes last.ckpt with this decision in it and then copies it to best.ckpt."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.score: float | None = None
        self.epoch: int | None = None
        self.pending = False  # this epoch is the new best: copy last.ckpt once it is written

    @property
    def state_key(self) -> str:
        return BEST_STATE_KEY

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": "val_loss", "score": self.score, "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        score, epoch = state_dict.get("score"), state_dict.get("epoch")
        self.score = float(score) if score is not None else None
        self.epoch = int(epoch) if epoch is not None else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pending = False
        if not isinstance(pl_module, ISNetModule) or not pl_module.finished_epoch:
            return
        value = trainer.callback_metrics.get("val_loss")
        if value is None:
            return
        score = float(value)
        if math.isfinite(score) and (self.score is None or score < self.score):
            self.score, self.epoch, self.pending = score, pl_module.epochs_done, True


def _write_best(last: Path, best: Path) -> None:
    """Copy last.ckpt to best.ckpt atomically (the copy step; last.ckpt holds the new best epoch)."""
    with open(last, "rb") as src:
        atomic_write(best, lambda f: shutil.copyfileobj(src, f))


class _LastCheckpoint(_EpochEndCheckpoint):
    """last.ckpt: every epoch end (ModelCheckpoint) and after the step at which training stops inside an
    epoch; at an epoch end that :class:`_BestCheckpoint` found best, it is then copied to best.ckpt."""

    def __init__(self, out_dir: Path, stop: _Stop, best: _BestCheckpoint | None = None) -> None:
        super().__init__(
            dirpath=out_dir,
            filename=Path(CHECKPOINT_NAME).stem,
            save_top_k=1,
            every_n_epochs=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self.stop = stop
        self.best = best
        self.saved_step = -1

    @property
    def path(self) -> str:
        return self.format_checkpoint_name({})

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        best = self.best
        if best is None or not best.pending:
            return
        best.pending = False
        if self._last_global_step_saved != trainer.global_step:  # last.ckpt does not hold this epoch's end
            raise CheckpointError(
                f"{self.path} was not written at the end of epoch {best.epoch}; best.ckpt not updated"
            )
        if trainer.is_global_zero:
            _write_best(Path(self.path), best.path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        if self.stop.stop_here and self.saved_step != trainer.global_step:
            trainer.save_checkpoint(self.path)  # inside on_train_batch_end: Lightning resumes after this batch
            self.saved_step = trainer.global_step


class _MetricsFile(Checkpoint):
    """metrics.json after last.ckpt (a ``Checkpoint`` callback listed after it, so Lightning calls it after the
    checkpoint callbacks): at the start, after every epoch and when training stops. Not a Lightning logger: it
    is the run's record (config, model spec, history with validation, finished / interrupted) and must agree
    with last.ckpt, while a logger receives the epoch's metrics only after the checkpoints are written.

    ``epoch`` / ``step``: epochs done and optimiser steps at the last write, i.e. at the state last.ckpt holds.
    """

    def __init__(
        self, path: Path, stop: _Stop, epoch: int = 0, step: int = 0, tuning: Mapping[str, Any] | None = None
    ) -> None:
        self.path, self.stop = path, stop
        self.epoch, self.step = epoch, step  # a resumed run starts where last.ckpt stands
        self.tuning = tuning

    def write(self, trainer: L.Trainer, module: L.LightningModule, consistent: bool = True) -> None:
        """Write the file; ``consistent=False`` keeps the position of the last write (training stopped at a
        point that no checkpoint holds)."""
        assert isinstance(module, ISNetModule)
        if consistent:
            self.epoch, self.step = module.epochs_done, trainer.global_step
        if not trainer.is_global_zero:
            return
        finished = module.epochs_done >= module.config.epochs and module.batches_done == 0
        doc = _metrics_doc(
            module.config, module.model_spec, module.history, finished, self.epoch, self.step, self.tuning
        )
        doc["interrupted"] = signal.Signals(self.stop.signum).name if self.stop.signum else None
        write_json(self.path, doc)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.stop.stop_here:
            self.write(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(pl_module, ISNetModule) and pl_module.finished_epoch:
            self.write(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):  # Lightning's own SIGTERM path (see _Stop)
            self.stop.signum = self.stop.signum or signal.SIGTERM
            self.write(trainer, pl_module, consistent=False)  # the position last.ckpt holds


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
    tuning: dict[str, Any] | None = None  #: the C1/C2 tuning record (``tuning.json``) when tune_epochs > 0


@dataclass
class _Start:
    """Where a run starts: nothing done, or what last.ckpt records."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False


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

    C1/C2 tuning (``config.tune_epochs > 0``, ISNet variants), the authors' recipe: first a *separate* copy of
    ``model`` (its initial weights) is trained plainly (CE only) for ``tune_epochs`` epochs in
    ``out_dir/tuning/`` (its own resumable run, no validation); in its last epoch every step's forward also
    yields the variant's relevance maps (train mode), and the total |relevance| of each sample is recorded
    (``config.tune_on``: the whole map, the authors' form, or the foreground; per hidden layer too). C1 =
    max(μ/5, μ − 3σ), C2 = min(25·C1, μ + 3σ) (:func:`~relprop.isnet.tune_c1_c2`) go into
    ``out_dir/tuning.json`` (with μ, σ, n; the totals in ``tuning/totals.pt``), that network is discarded, and
    ``model`` trains as an ISNet from its initial weights with ``loss.C1/C2`` (and ``hidden_bounds``) replaced
    by the tuned values: the config in the checkpoints and ``metrics.json`` is that one, and ``metrics.json``
    has a ``"tuning"`` entry. A resumed run reads ``tuning.json`` instead of tuning again (its config must
    equal ``config`` but for ``epochs``). ``max_steps`` counts the ISNet run's steps only.

    Warns (:class:`~relprop.errors.RecipeWarning`) when ISNet training would start from a network that
    already learned the shortcut: a P schedule with P = 0 first, or a model whose weights
    :func:`~relprop.isnet.load_checkpoint` / :func:`~relprop.isnet.checkpoints.load_weights` took from a
    plain or RRR run.
    """
    config.validate()
    out = Path(out_dir)
    _check_args(out, train, val, model_spec, accelerator, devices, max_steps)
    ckpt_path = out / CHECKPOINT_NAME
    resumes = resume and ckpt_path.exists()
    _warn_recipe(model, config, resumes)
    if config.method not in VARIANTS or config.tune_epochs == 0:
        return _fit(model, train, val, config, out_dir=out, resume=resume, progress=progress, model_spec=model_spec,
                    accelerator=accelerator, devices=devices, strategy=strategy, max_steps=max_steps)  # fmt: skip
    tuning_path = out / TUNING_NAME
    record = _read_tuning(tuning_path, config) if resume else None
    if record is None and resumes:
        _refuse_untuned_resume(ckpt_path, tuning_path, config)
    if not resume and _rank_zero():  # start over, tuning included
        for path in (ckpt_path, out / BEST_NAME, tuning_path):
            path.unlink(missing_ok=True)
    if record is None:
        record = _tune(copy.deepcopy(model), train, config, out, resume=resume, progress=progress,
                       model_spec=model_spec, accelerator=accelerator, devices=devices, strategy=strategy)  # fmt: skip
    result = _fit(model, train, val, tuned_config(config, record), out_dir=out, resume=resume, progress=progress,
                  model_spec=model_spec, accelerator=accelerator, devices=devices, strategy=strategy,
                  max_steps=max_steps, tuning_record=record)  # fmt: skip
    result.tuning = record
    return result


def _check_args(
    out: Path, train: Dataset, val: Dataset | None, model_spec: Mapping[str, Any] | None, accelerator: str,
    devices: Any, max_steps: Any,
) -> None:  # fmt: skip
    if out.exists() and not out.is_dir():
        raise UsageError(f"out_dir {out} is an existing file, not a folder: pass a folder for the run's files")
    _check_accelerator(accelerator, devices)
    check_dataset(train, "train")
    if val is not None:
        check_dataset(val, "validation")
    if model_spec is not None:
        try:
            json.dumps(dict(model_spec), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InputError(f"model_spec must be JSON-serialisable: {exc}") from None
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < -1:
        raise InputError(f"fit(max_steps={max_steps!r}): use -1 (no limit) or a number of steps >= 0")


#: what was measured (biased digits, small CNN, 3000 digits), said by every RecipeWarning
SHORTCUT_MEASURED = (
    "after 3 plain epochs on the same model, 10 ISNet epochs left the shortcut in place on biased digits "
    "(selective-label deceiving 0.0 %, stochastic 17.5 %) against 89.5 % / 74.7 % when the ISNet trains from the "
    "start: once learned, the shortcut hides from the heatmap; the authors tune C1/C2 on a separate plain run and "
    "discard it (tune_epochs)"
)


def _warn_recipe(model: nn.Module, config: TrainConfig, resumes: bool) -> None:
    """RecipeWarning when ISNet training starts from a network that already learned the shortcut."""
    if config.method not in VARIANTS:
        return
    if isinstance(config.P, dict) and config.P.get(0) == 0.0:
        first = min((k for k, v in config.P.items() if v > 0), default=None)
        plain = f"epochs 0..{first - 1}" if first is not None else "every epoch"
        warnings.warn(
            f"the P schedule {config.P} trains plainly (P = 0) in {plain} before the ISNet loss starts: "
            f"{SHORTCUT_MEASURED}. Use a constant P (and tune_epochs for C1/C2) instead",
            RecipeWarning,
            stacklevel=3,
        )
    origin = checkpoint_origin(model)
    if origin is not None and not resumes and origin[1].method in ("plain", "rrr"):
        warnings.warn(
            f"ISNet training (method {config.method!r}) starts from the weights of a {origin[1].method} run "
            f"({origin[0]}): {SHORTCUT_MEASURED}. Start from the initial (or a pretrained, not task-trained) model",
            RecipeWarning,
            stacklevel=3,
        )


TUNING_DIR = "tuning"  #: the C1/C2 tuning run's folder in out_dir
TOTALS_NAME = "totals.pt"  #: in TUNING_DIR: the recorded totals per sample, {layer: float64 tensor}


def tuned_config(config: TrainConfig, record: Mapping[str, Any]) -> TrainConfig:
    """``config`` with ``loss.C1/C2`` and ``hidden_bounds`` from a tuning record (``tuning.json``)."""
    layers = record.get("layers", {})
    bounds = {name: (float(v["C1"]), float(v["C2"])) for name, v in layers.items()}
    loss = replace(config.loss, C1=float(record["C1"]), C2=float(record["C2"]))
    return replace(config, loss=loss, hidden_bounds=bounds)


def _read_tuning(path: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The tuning record at ``path`` if there is one; ResumeConflict if it was tuned for another config."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        saved = TrainConfig.from_dict(record["config"])
        float(record["C1"]), float(record["C2"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable C1/C2 tuning record ({exc}); delete it to tune again, or use resume=False "
            "to start over"
        ) from exc
    conflicts = resume_conflicts(saved, config)
    if conflicts:
        raise ResumeConflict(path, conflicts)
    return dict(record)


def _refuse_untuned_resume(ckpt_path: Path, tuning_path: Path, config: TrainConfig) -> None:
    """last.ckpt exists but tuning.json does not: the run was trained without tuning, or the record is lost."""
    saved = read_checkpoint(ckpt_path)["relprop"]["config"]
    if saved.tune_epochs != config.tune_epochs:
        raise ResumeConflict(ckpt_path, {"tune_epochs": (saved.tune_epochs, config.tune_epochs)})
    raise CheckpointError(
        f"cannot resume from {ckpt_path}: its C1/C2 tuning record {tuning_path} is missing; use resume=False to "
        "start over (tuning included), or another out_dir"
    )


def _tune(
    model: nn.Module, train: Dataset, config: TrainConfig, out: Path, *, resume: bool, progress: bool,
    model_spec: Mapping[str, Any] | None, accelerator: str, devices: Any, strategy: str,
) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) the tuning run on ``model`` (a copy), write tuning/totals.pt and tuning.json."""
    folder = out / TUNING_DIR
    plain = replace(config, method="plain", epochs=config.tune_epochs, tune_epochs=0, P=0.7, hidden_layers=(),
                    hidden_bounds={})  # fmt: skip
    _fit(model, train, None, plain, out_dir=folder, resume=resume, progress=progress, model_spec=model_spec,
         accelerator=accelerator, devices=devices, strategy=strategy, max_steps=-1, tuning=config)  # fmt: skip
    meta = read_checkpoint(folder / CHECKPOINT_NAME)["relprop"]
    totals = {k: v.to(torch.float64) for k, v in (meta.get("tuning_totals") or {}).items()}
    if TUNING_INPUT not in totals or totals[TUNING_INPUT].numel() < 2:
        raise CheckpointError(
            f"{folder / CHECKPOINT_NAME} holds no relevance totals of its last epoch; use resume=False to tune again"
        )
    zero = _rank_zero()  # every DDP process holds the same gathered totals; the first one writes them
    if zero:
        atomic_torch_save(totals, folder / TOTALS_NAME)
    record: dict[str, Any] = {
        "config": config.to_dict(),
        "tune_epochs": config.tune_epochs,
        "tune_on": config.tune_on,
        **_bounds(totals[TUNING_INPUT]),
        "layers": {name: _bounds(totals[name]) for name in config.hidden_layers},
        "run": TUNING_DIR,
        "totals": f"{TUNING_DIR}/{TOTALS_NAME}",
    }
    if zero:
        write_json(out / TUNING_NAME, record)
    return record


def _bounds(totals: Tensor) -> dict[str, Any]:
    """C1, C2 (tune_c1_c2) with the mean, sample standard deviation and count of ``totals``."""
    c1, c2 = tune_c1_c2(totals)
    t = totals.double()
    return {"C1": c1, "C2": c2, "mean": float(t.mean()), "std": float(t.std()), "n": int(t.numel())}


def _fit(
    model: nn.Module,
    train: Dataset,
    val: Dataset | None,
    config: TrainConfig,
    *,
    out_dir: str | Path,
    resume: bool,
    progress: bool,
    model_spec: Mapping[str, Any] | None,
    accelerator: str,
    devices: int,
    strategy: str,
    max_steps: int,
    tuning: TrainConfig | None = None,
    tuning_record: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place with a Lightning Trainer (:func:`fit` without C1/C2 tuning). ``tuning``: this
    is a tuning run recording the relevance totals of that ISNet config in its last epoch; ``tuning_record``:
    the record metrics.json shows.

    Writes ``out_dir/last.ckpt`` and ``out_dir/metrics.json`` (``{"config", "model_spec", "history",
    "finished", ...}``) after every epoch and when training stops (end, ``max_steps`` global optimiser steps,
    SIGINT/SIGTERM), atomically. With validation data, ``out_dir/best.ckpt`` is the checkpoint of the epoch with
    the lowest validation loss (ISNet training can diverge late: keep it in mind before using the last epoch).
    With ``resume=True`` and an existing ``last.ckpt`` it continues exactly where that run stopped (weights,
    optimiser, RNG state, the position in the epoch's shuffled order); the checkpoint's config must equal
    ``config`` except for ``epochs``. ``resume=False`` deletes an earlier run's checkpoints first.

    On SIGINT/SIGTERM it finishes the current step, writes the checkpoint and metrics (``"finished":
    false``), restores the previous signal handlers and raises :class:`~relprop.errors.TrainingInterrupted` (a
    KeyboardInterrupt). A signal that arrives too late to stop training (in its last epoch's last step or after)
    is delivered again once the previous handlers are back. A non-finite loss raises FloatingPointError naming
    the epoch, step and method. The model's train/eval modes and device are restored afterwards; no hooks are
    left on it.
    """
    config.validate()
    out = Path(out_dir)
    ckpt_path, metrics_path = out / CHECKPOINT_NAME, out / METRICS_NAME
    best_path = out / BEST_NAME
    resumed = resume and ckpt_path.exists()
    start, best_state = _resume_point(ckpt_path, model, config, val is not None) if resumed else (_Start(), None)
    # from here on the run is accepted: only now are files of out_dir touched
    out.mkdir(parents=True, exist_ok=True)
    # Under strategy="ddp" every process runs this before the Trainer exists: only the first one touches files
    # (two processes cleaning up and writing the same metrics.json would delete each other's temporaries).
    zero = _rank_zero()
    if zero:
        remove_stale_temporaries(out, (CHECKPOINT_NAME, BEST_NAME, METRICS_NAME))
    if not resume and zero:  # start over: never resume into an older run's checkpoints later
        ckpt_path.unlink(missing_ok=True)
        best_path.unlink(missing_ok=True)
    if resumed:
        _check_best(ckpt_path, best_path, start, best_state)
    if start.epoch >= config.epochs or 0 <= max_steps <= start.step:
        finished = start.epoch >= config.epochs
        if zero and (not metrics_path.exists() or finished):
            doc = _metrics_doc(config, model_spec, start.history, finished, start.epoch, start.step, tuning_record)
            write_json(metrics_path, {**doc, "interrupted": None})
        return TrainResult(start.history, ckpt_path, metrics_path, model, finished, start.step)

    L.seed_everything(config.seed, workers=True, verbose=False)
    modes = {name: m.training for name, m in model.named_modules()}
    device = next((p.device for p in model.parameters()), None)
    model.train()
    module = ISNetModule(model, config, model_spec)
    module._data = RunData(train, val)
    module._tuning = tuning
    if config.method in VARIANTS or tuning is not None:  # fails here, naming the module, if relprop cannot trace it
        maps = build_maps(model, tuning or config)
        if tuning is None:
            module._maps = maps
        else:
            module._tuning_maps = maps
    stop = _Stop(max_steps)
    callbacks: list[Callback] = [stop]
    best: _BestCheckpoint | None = None
    if val is not None:  # before last: see the module docstring
        best = _BestCheckpoint(best_path)
        if best_state is not None:  # also when last.ckpt predates this callback (Lightning would skip it)
            best.load_state_dict(best_state)
        callbacks.append(best)
    metrics_file = _MetricsFile(metrics_path, stop, start.epoch, start.step, tuning_record)
    callbacks += [_LastCheckpoint(out, stop, best), metrics_file]
    stop.install()  # from here on, before Lightning's own handler (see _Stop)
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:  # Lightning's INFO chatter (devices, tips, restoring); the progress bar and warnings stay
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            for pattern in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            trainer = L.Trainer(
                accelerator=accelerator,
                devices=devices,
                strategy=strategy,
                max_epochs=config.epochs,  # and max_steps=-1: _Stop stops at max_steps
                gradient_clip_val=config.clip,
                gradient_clip_algorithm="norm" if config.clip is not None else None,
                logger=False,
                enable_model_summary=False,
                enable_progress_bar=progress,
                num_sanity_val_steps=0,
                inference_mode=False,
                use_distributed_sampler=False,  # ResumableLoader splits the data per process itself
                reload_dataloaders_every_n_epochs=1,  # each epoch's order is a function of (seed, epoch)
                limit_val_batches=None if val is not None else 0,
                default_root_dir=out,
                plugins=[_AtomicCheckpointIO()],
                callbacks=callbacks,
            )
            try:
                trainer.fit(module, ckpt_path=ckpt_path if start.resumed else None, weights_only=True)
            except SIGTERMException:  # Lightning's SIGTERM path (see _Stop); last.ckpt holds metrics_file's step
                stop.signum = stop.signum or signal.SIGTERM
    finally:
        stop.restore()
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for name, m in model.named_modules():
            if name in modes:
                m.train(modes[name])
        if device is not None:
            model.to(device)
    if module._trained_here:
        history, step, epoch, interrupted = module.history, metrics_file.step, metrics_file.epoch, stop.signum
    else:  # ddp_spawn: the processes that trained are gone; rank 0's metrics file is the record
        doc = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        history = doc.get("history", [])
        step, epoch = int(doc.get("global_step", start.step)), int(doc.get("epoch", start.epoch))
        interrupted = int(signal.Signals[doc["interrupted"]]) if doc.get("interrupted") else None
    if interrupted is not None:
        raise TrainingInterrupted(interrupted, ckpt_path, epoch, step)
    if stop.pending is not None and threading.current_thread() is threading.main_thread():
        signal.raise_signal(stop.pending)  # too late to stop training: deliver it to the previous handler
    return TrainResult(history, ckpt_path, metrics_path, model, epoch >= config.epochs, step)


def _rank_zero() -> bool:
    """Whether this process is the first of its run (Lightning reads the rank from the launcher's environment)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0)) == 0


def _metrics_doc(
    config: TrainConfig,
    spec: Mapping[str, Any] | None,
    history: list[dict[str, Any]],
    finished: bool,
    epoch: int,
    step: int,
    tuning: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    doc = {
        "config": config.to_dict(),
        "model_spec": dict(spec) if spec is not None else None,
        "history": history,
        "finished": finished,
        "epoch": epoch,
        "global_step": step,
    }
    if tuning is not None:
        doc["tuning"] = {k: v for k, v in tuning.items() if k != "config"}
    return doc


def check_resume(out_dir: str | Path, model: nn.Module, config: TrainConfig, *, validates: bool = True) -> int | None:
    """What ``fit(model, ..., config, out_dir=out_dir, resume=True)`` would resume from, checked without changing
    any file: the epochs ``out_dir/last.ckpt`` has done, or None if there is none. Raises what fit raises for a
    refused resume (:class:`~relprop.isnet.config.ResumeConflict`, :class:`~relprop.errors.CheckpointError`,
    :class:`~relprop.errors.UsageError`), so that a caller can refuse before it writes files of its own."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if config.method in VARIANTS and config.tune_epochs > 0:  # the run trains with the tuned C1/C2
        tuning_path = Path(out_dir) / TUNING_NAME
        record = _read_tuning(tuning_path, config)  # a record for another config: refused even before last.ckpt
        if not path.exists():
            return None
        if record is None:
            _refuse_untuned_resume(path, tuning_path, config)
        else:
            config = tuned_config(config, record)
    if not path.exists():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fit warns when it resumes
        start, _ = _resume_point(path, model, config, validates)
    return start.epoch


_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")


def _check_accelerator(accelerator: Any, devices: Any) -> None:
    """A clear error for an accelerator or devices value Lightning would reject deep inside its setup."""
    if not isinstance(accelerator, str) or accelerator not in _ACCELERATORS:
        hint = ""
        if isinstance(accelerator, str) and ":" in accelerator:
            kind, _, index = accelerator.partition(":")
            hint = f" (a device index goes in devices: accelerator={kind!r}, devices=[{index}])"
        raise InputError(f"fit(accelerator={accelerator!r}): use one of {', '.join(map(repr, _ACCELERATORS))}{hint}")
    if isinstance(devices, bool) or not (
        (isinstance(devices, int) and (devices >= 1 or devices == -1))
        or (isinstance(devices, str) and devices == "auto")
        or (isinstance(devices, (list, tuple)) and devices and all(isinstance(d, int) and d >= 0 for d in devices))
    ):
        raise InputError(
            f"fit(devices={devices!r}): use a number of devices >= 1, -1 (all), 'auto' or a list of indices"
        )


def _best_state(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The best epoch and score a checkpoint records: :class:`_BestCheckpoint`'s state or, in a checkpoint of an
    earlier relprop (a ``ModelCheckpoint(monitor="val_loss")``), its best score (epoch None: unknown)."""
    callbacks = ckpt.get("callbacks") or {}
    state = callbacks.get(BEST_STATE_KEY)
    if isinstance(state, Mapping):
        return dict(state)
    for key, value in callbacks.items():
        if "'val_loss'" in str(key) and isinstance(value, Mapping):
            score = value.get("best_model_score")
            return {"monitor": "val_loss", "score": float(score) if score is not None else None, "epoch": None}
    return None


def _check_best(last: Path, best: Path, start: _Start, state: Mapping[str, Any] | None) -> None:
    """Check that best.ckpt holds the epoch last.ckpt records as the best; repair it from last.ckpt when
    last.ckpt is that very epoch (a kill between writing last.ckpt and copying it), warn otherwise."""
    want = state.get("epoch") if state is not None else None
    if want is None:
        return  # no best epoch yet, or an earlier relprop's checkpoint that does not say which
    found: int | None = None
    if best.exists():
        try:
            found = int(read_checkpoint(best)["relprop"].get("epoch", -1))
        except (CheckpointError, TypeError, ValueError):
            found = None
    if found == want:
        return
    what = "is missing" if not best.exists() else f"holds epoch {found}" if found is not None else "is unreadable"
    if start.epoch == want and start.batch == 0:
        _write_best(last, best)
        warnings.warn(
            f"{best} {what}, but {last} records epoch {want} as the best (an interrupted copy?); repaired: "
            f"{best.name} is now a copy of {last.name}, which holds that epoch",
            stacklevel=4,
        )
        return
    warnings.warn(
        f"{best} {what}, but {last} records epoch {want} as the best, and no file holds that epoch any more: "
        f"{best.name} is not the run's best epoch (a later better epoch replaces it); start over with "
        "resume=False for a trustworthy best checkpoint",
        stacklevel=4,
    )


def _resume_point(
    path: Path, model: nn.Module, config: TrainConfig, validates: bool
) -> tuple[_Start, dict[str, Any] | None]:
    """What ``path`` (last.ckpt) records, after checking that ``config`` may continue it, and its best-epoch state;
    loads its weights into ``model`` (so that a finished run returns the trained model without training). Changes
    no file: a refused resume leaves the run as it was."""
    ckpt = read_checkpoint(path)
    meta = ckpt["relprop"]
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"cannot resume from {path}: it was written by another version of relprop (checkpoint format "
            f"{meta.get('format')!r}, this version reads {FORMAT}); use resume=False to start over, or another out_dir"
        )
    conflicts = resume_conflicts(meta["config"], config)
    if conflicts:
        raise ResumeConflict(path, conflicts)
    best_state = _best_state(ckpt)
    try:
        model.load_state_dict(model_state(ckpt))
    except RuntimeError as exc:
        raise CheckpointError(f"cannot resume from {path}: its weights do not fit the model: {exc}") from exc
    start = _Start(
        epoch=int(meta["epoch"]),
        batch=int(meta.get("batch", 0)),
        step=int(meta["global_step"]),
        history=[dict(h) for h in meta.get("history", [])],
        resumed=True,
    )
    if start.batch and start.epoch >= config.epochs:
        raise UsageError(
            f"cannot resume from {path}: it stopped inside epoch {start.epoch}, after config.epochs; "
            f"use epochs >= {start.epoch + 1}"
        )
    if start.epoch > config.epochs:
        raise UsageError(
            f"cannot resume from {path}: it has trained {start.epoch} epochs, more than config.epochs={config.epochs}; "
            f"use epochs >= {start.epoch}"
        )
    if best_state is not None and not validates:
        warnings.warn(
            f"{path} comes from a run with validation data and is resumed without: {BEST_NAME} stays as it is, and "
            "a later run with validation data starts its search for the best epoch anew",
            stacklevel=4,
        )
        best_state = None
    return start, best_state


__all__ = ["SHORTCUT_MEASURED", "TOTALS_NAME", "TUNING_DIR", "TrainResult", "check_resume", "fit", "tuned_config"]
