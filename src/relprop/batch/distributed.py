"""Explaining on several processes (``relprop explain --devices N``): Lightning's predict loop, ``ddp`` strategy.

Lightning starts the command (or script) again once per further process on this machine (on other machines the
same command is started by the cluster: SLURM, or by hand with ``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``).
Every process builds the same :class:`~.explain_folder.Job` and calls :func:`explain_distributed`, which:

1. checks the options against OUT (other options: the error, before any process is started or any file touched);
2. in :meth:`_ExplainModule.setup` (processes connected): rank 0 prepares OUT (temporaries, fresh start or fold of
   an earlier run's shards, explain.json) and broadcasts which images are done, so all processes agree;
3. deals the pending batches of the fixed grid out in turn (pending batch ``j`` to rank ``j % world``): each
   process writes the outputs of its batches and appends the records to its shard ``manifest-rank<r>.jsonl``;
4. after the predict loop, the processes exchange their counts (a collective, so every shard is complete), and
   rank 0 folds the shards into ``manifest.jsonl``.

A first SIGINT/SIGTERM in any process creates ``OUT/.explain-stop``; every process starts no batch after it has
seen it (its own signal, or the flag after each batch). Lightning's own SIGTERM handler (which would forward the
signal and run a collective inside the handler) is replaced by ours once the predict loop starts. A second signal
aborts (Lightning then ends the other processes).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..errors import UsageError
from .explain_folder import MANIFEST, STOP_FLAG, ImageBatch, Job, Manifest, Summary, _Run, _StopOnSignal, shard_paths

#: Lightning's messages that say nothing to someone explaining images (its INFO lines are silenced as well)
QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*Total length of .* across ranks is zero.*",
    r".*predict_dataloader.*",
    r".*GPU available but not used.*",
    r".*predict returned None.*",
    r".*LeafSpec.*",
)


class _RankBatches:
    """This process's share of the pending batches, as a plain iterable (not a DataLoader, so that Lightning
    neither re-creates it nor adds a sampler); images are loaded by ``loader``."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[ImageBatch]:
        return iter(self.loader)


class _ExplainModule(L.LightningModule):
    """Runs :class:`~.explain_folder._Run` batches in Lightning's predict loop. The explainer's model is not a
    sub-module (Lightning neither moves, syncs nor switches it); it is moved to this process's device in
    :meth:`setup` and back in :meth:`restore`."""

    def __init__(self, run: _Run, stop: _StopOnSignal) -> None:
        super().__init__()
        self.allow_zero_length_dataloader_with_multiple_devices = True  # fewer pending batches than processes
        self.run, self.stop = run, stop
        self.stopped_by_flag = False
        self._home: torch.device | None = None  # the model's device before setup
        self._bar: Any = None
        self._lines: _ShardLines | None = None

    # -- stopping ------------------------------------------------------------------------------------------------
    def stopping(self) -> bool:
        """A signal reached this process, or another one (its flag file exists)."""
        if self.stop.name is not None or self.stopped_by_flag:
            return True
        self.stopped_by_flag = (self.run.job.out / STOP_FLAG).exists()
        return self.stopped_by_flag

    # -- hooks ---------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        run, strategy = self.run, self.trainer.strategy
        run.rank, run.world = self.trainer.global_rank, self.trainer.world_size
        run.summary.rank, run.summary.processes = run.rank, run.world
        error: str | None = None
        if run.rank == 0:
            try:
                run.prepare()
            except OSError as exc:
                error = f"cannot prepare {run.job.out}: {exc}"
        mine = {
            "error": error,
            "done": run.done,
            "skipped": run.summary.skipped,
            "unreadable_before": run.summary.unreadable_before,
        }
        plan: dict[str, Any] = strategy.broadcast(mine, src=0)  # rank 0's, in every process
        if plan["error"] is not None:
            raise UsageError(plan["error"])
        run.done = list(plan["done"])
        run.summary.skipped, run.summary.unreadable_before = plan["skipped"], plan["unreadable_before"]
        device = strategy.root_device
        model = run.job.explainer.model
        current = next((t.device for t in [*model.parameters(), *model.buffers()]), device)
        if current != device:
            self._home = current
            model.to(device)
            run.job.explainer.clear_cache()
        run.device = None if device.type == "cpu" else device  # pixels are loaded on the CPU

    def restore(self) -> None:
        """Move the explainer's model back to where it was."""
        if self._home is not None:
            self.run.job.explainer.model.to(self._home)
            self.run.job.explainer.clear_cache()
            self._home = None

    def predict_dataloader(self) -> _RankBatches:
        run = self.run
        mine = run.grid()[run.rank :: run.world]
        return _RankBatches(run.loader(mine, self.stopping))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # the pixels are normalised on the CPU (as in one process), then moved

    def on_predict_start(self) -> None:
        self.stop.install()  # in place of Lightning's SIGTERM handler, registered just before the loop
        self._bar = self.run.progress_bar()
        self._lines = _ShardLines(self.run) if self.run.rank == 0 else None

    def predict_step(self, batch: ImageBatch, batch_idx: int) -> None:
        if self.stopping():
            return  # fetched before the stop: not started
        self.run.explain_batch(batch)
        if self._bar is not None:
            self._bar.n = self._lines.done() if self._lines is not None else self._bar.n
            self._bar.refresh()

    def on_predict_end(self) -> None:
        self.close_bar()

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _ShardLines:
    """Counts the complete lines of this run's shards, reading only what was appended since the last count (rank
    0's progress bar: images of all processes)."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.read: dict[Path, tuple[int, int]] = {}  # shard -> (bytes read, newlines in them)

    def count(self) -> int:
        for shard in shard_paths(self.run.job.out):
            offset, lines = self.read.get(shard, (0, 0))
            try:
                with open(shard, "rb") as f:
                    f.seek(offset)
                    new = f.read()
            except OSError:
                continue
            self.read[shard] = (offset + len(new), lines + new.count(b"\n"))
        return sum(lines for _, lines in self.read.values())

    def done(self) -> int:
        """Images done before this run plus those recorded in the shards so far."""
        return self.run.summary.skipped + self.run.summary.unreadable_before + self.count()


def _touch_stop_flag(run: _Run) -> Callable[[], None]:
    def touch() -> None:
        try:
            (run.job.out / STOP_FLAG).touch()
        except OSError:
            pass  # this process still stops

    return touch


def explain_distributed(job: Job, accelerator: str) -> Summary:
    """Explain ``job`` on ``job.devices`` processes per node, ``job.num_nodes`` nodes (see the module docstring).
    Returns the summary of all processes in every process; only rank 0's ``Summary.rank`` is 0."""
    run = _Run(job, world=job.devices * job.num_nodes)  # the options check: before anything is started
    stop = _StopOnSignal(on_first=_touch_stop_flag(run))
    module = _ExplainModule(run, stop)
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings(), stop:
            for pattern in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            trainer = L.Trainer(
                accelerator=accelerator,
                devices=job.devices,
                num_nodes=job.num_nodes,
                strategy="ddp" if run.world > 1 else "auto",  # one process (a GPU): no process group
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=False,  # ours, on rank 0, counts the images of all processes
                inference_mode=False,  # the explainer needs ordinary tensors (version counters for its cache)
                use_distributed_sampler=False,
                default_root_dir=job.out,
            )
            try:
                try:
                    trainer.predict(module, return_predictions=False)
                except SystemExit:
                    if stop.aborted:  # Lightning turns the KeyboardInterrupt of a second signal into sys.exit(1)
                        raise KeyboardInterrupt from None
                    raise
                finally:
                    module.close_bar()
                    run.close()
                    module.restore()
                summary = _gather(run, module)
            except BaseException:
                _end_started_processes(trainer)  # they would wait for this one in a collective
                raise
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return summary


def _gather(run: _Run, module: _ExplainModule) -> Summary:
    """Every process's counts to every process (after this, all shards are complete), then rank 0 folds the
    shards into the manifest and removes the stop flag."""
    mine = {
        "written": run.summary.written,
        "recorded": run.recorded,
        "unreadable": [str(p) for p in run.summary.unreadable],
        "stop": module.stop.name,
        "flag": module.stopped_by_flag,
    }
    everyone: list[Any] = [None] * run.world
    if dist.is_available() and dist.is_initialized() and run.world > 1:
        dist.all_gather_object(everyone, mine)
    else:
        everyone = [mine]
    summary = run.summary
    summary.written = sum(e["written"] for e in everyone)
    index = {str(p): i for i, p in enumerate(run.job.images)}
    found = sorted(index[u] for e in everyone for u in e["unreadable"])
    summary.unreadable = [run.job.images[i] for i in found]
    for e in everyone:
        for i in e["recorded"]:
            run.done[i] = True
    summary.done = sum(run.done)
    if summary.done < summary.total:
        names = [e["stop"] for e in everyone if e["stop"] is not None]
        summary.interrupted = names[0] if names else ("SIGTERM" if any(e["flag"] for e in everyone) else None)
    try:
        if run.rank == 0:
            Manifest.read(run.job.out / MANIFEST).fold()
            (run.job.out / STOP_FLAG).unlink(missing_ok=True)
    finally:
        if dist.is_available() and dist.is_initialized() and run.world > 1:
            dist.barrier()  # the other processes return once the manifest is whole
    return summary


def _end_started_processes(trainer: L.Trainer) -> None:
    """Kill the processes Lightning started on this machine for this one (rank 0 failed or was interrupted)."""
    for proc in getattr(trainer.strategy.launcher, "procs", []) or []:
        if proc.poll() is None:
            proc.kill()


__all__ = ["explain_distributed"]
