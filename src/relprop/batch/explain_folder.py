"""Explaining many image files (``relprop explain``): bounded memory, incremental output, resume.

Images stream through a :class:`torch.utils.data.DataLoader` over :class:`ImageFiles` in batches of a fixed grid:
image ``k`` of the sorted list is always in batch ``k // batch_size``, so a resumed run computes exactly what an
uninterrupted run with the same ``--batch-size`` computes, bit for bit (results of one image can depend on its
batch in the last bits). After each batch its heatmaps (and, with ``save_raw``, the raw relevance as ``.npy``) are
written atomically, then one JSON line per image is appended to ``OUT/manifest.jsonl`` and flushed to disk.
``OUT/explain.json`` holds the fingerprint of the options that decide the outputs.

Resume: an image is skipped when the manifest's latest record for it carries the file's current size and
modification time and, for an explained image, names this run's output files, which exist (and no later record
of another image took over its heatmap path). Unreadable images are recorded as well and are not retried until
the file changes (or with ``overwrite``). A torn last manifest line (a kill during the append) is dropped. Options
whose fingerprint differs from explain.json's are refused while the manifest holds records; ``overwrite`` starts a
new manifest (files of the earlier run that this one does not write, such as ``.npy`` files, are left). The first
SIGINT/SIGTERM lets the current batch finish its writes, then the run stops; a second one aborts at once (atomic
writes leave no partial file; at worst a torn manifest line).

Several processes (``Job.devices`` > 1, ``Job.num_nodes`` > 1 or an accelerator other than the CPU) run through
Lightning's predict loop with the ``ddp`` strategy (:mod:`.distributed`): the batches of the same grid that are not
done yet are dealt out whole, in turn, to the processes (pending batch ``j`` to global rank ``j % world_size``), so
every image is explained once and by the same computation as in one process. Process ``r`` appends its records to
its own shard ``OUT/manifest-rank<r>.jsonl`` (no two writers share a file; a kill tears at most each shard's last
line). Before any output is written, rank 0 folds the shards a killed earlier run left into ``manifest.jsonl`` and
tells every process which images are done; at the end it folds this run's shards in and removes them. The resume
reads ``manifest.jsonl`` and every shard (shard records are the newest), so a run stopped with any number of
processes resumes with any other number. A signal in one process stops all of them after their current batch
(through the flag file ``OUT/.explain-stop``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import __version__
from .._io import atomic_write_bytes, atomic_write_json
from ..data.images import load_image
from ..errors import DataError, UsageError
from ..explainer import Explainer
from ..viz.heatmap import save_png, to_heatmap

MANIFEST = "manifest.jsonl"
SETTINGS = "explain.json"
SHARD_PREFIX = "manifest-rank"  #: ``OUT/manifest-rank<r>.jsonl``: the records process ``r`` of a run wrote
STOP_FLAG = ".explain-stop"  #: created in OUT when a process of a run with several received a stop signal
Record = dict[str, Any]
Stamp = dict[str, int]
Item = tuple[int, np.ndarray | None, DataError | None, Stamp | None]


# -- data ------------------------------------------------------------------------------------------------------
class ImageFiles(Dataset):
    """Image files loaded on access with :func:`relprop.data.images.load_image` (``channels`` 1 or 3): item ``i``
    is ``(i, pixels, None, stamp)``, or ``(i, None, error, stamp)`` for an unreadable file (a
    :class:`~relprop.errors.DataError`); ``stamp`` is the file's size and mtime before reading."""

    def __init__(self, paths: Sequence[Path], size: int, channels: int) -> None:
        self.paths, self.size, self.channels = list(paths), size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item:
        stamp = _stamp(self.paths[i])
        try:
            return i, load_image(self.paths[i], self.size, self.channels), None, stamp
        except DataError as exc:
            return i, None, exc, stamp


@dataclass
class ImageBatch:
    """A collated batch: the readable images' indices and pixels (B, C, H, W) in [0, 1], the unreadable ones'
    indices and errors, and every file's stamp."""

    indices: list[int]
    pixels: Tensor | None
    errors: list[tuple[int, DataError]]
    stamps: dict[int, Stamp | None]


def collate_images(items: Sequence[Item]) -> ImageBatch:
    """``collate_fn`` for :class:`ImageFiles`."""
    good = [(i, a) for i, a, _, _ in items if a is not None]
    pixels = torch.from_numpy(np.stack([a for _, a in good])) if good else None
    errors = [(i, e) for i, a, e, _ in items if a is None and e is not None]
    return ImageBatch([i for i, _ in good], pixels, errors, {i: stamp for i, _, _, stamp in items})


def _ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn``: loader processes leave SIGINT/SIGTERM (a Ctrl-C reaches the whole process group) to
    the main process, which stops them when it stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# -- fingerprint and manifest ------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def options_fingerprint(
    *,
    model: str,
    weights: str | None,
    num_classes: int | None,
    composite: str,
    target: int | str,
    size: int,
    normalize: str,
    overlay: bool,
    save_raw: bool,
) -> Record:
    """The options that decide the outputs (resolved defaults); model and weights files enter by content."""
    return {
        "model": f"file sha256:{_sha256(Path(model))}" if Path(model).is_file() else model,
        "weights": None if weights is None else f"sha256:{_sha256(Path(weights))}",
        "num_classes": num_classes,
        "composite": composite,
        "target": target,
        "size": size,
        "normalize": normalize,
        "overlay": overlay,
        "save_raw": save_raw,
    }


def heatmap_paths(images: Sequence[Path], root: Path | None, out: Path) -> list[Path]:
    """The heatmap file of each image: ``out/<folder relative to root>/<stem>_heatmap.png`` (``root`` None: directly
    in ``out``); two images with one stem in one folder (``a.png``, ``a.jpg``) get ``<stem>_<ext>_heatmap.png``."""
    folders = [p.parent.relative_to(root) if root is not None else Path() for p in images]
    paths = [out / folder / f"{p.stem}_heatmap.png" for p, folder in zip(images, folders)]
    counts: dict[Path, int] = {}
    for q in paths:
        counts[q] = counts.get(q, 0) + 1
    return [
        q.with_name(f"{p.stem}_{p.suffix.lstrip('.').lower()}_heatmap.png") if counts[q] > 1 else q
        for p, q in zip(images, paths)
    ]


def _stamp(path: Path) -> Stamp | None:
    """{"size", "mtime_ns"} of a file, or None when it cannot be stat'ed."""
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def shard_path(out: Path, rank: int) -> Path:
    """The manifest shard of global rank ``rank`` in ``out``."""
    return out / f"{SHARD_PREFIX}{rank}.jsonl"


def shard_paths(out: Path) -> list[Path]:
    """The manifest shards in ``out``, by rank."""
    found = []
    for p in out.glob(f"{SHARD_PREFIX}*.jsonl"):
        rank = p.name[len(SHARD_PREFIX) : -len(".jsonl")]
        if rank.isdigit():
            found.append((int(rank), p))
    return [p for _, p in sorted(found)]


def _complete_lines(f: BinaryIO) -> Iterator[bytes]:
    for line in f:
        if not line.endswith(b"\n"):
            return  # torn by a kill during the append
        yield line


def _parse(line: bytes) -> Record | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("image"), str) else None


@dataclass
class Manifest:
    """What ``manifest.jsonl`` and the shards next to it record: the latest record per image, the image that last
    wrote each heatmap path, the byte length of the manifest's newline-terminated lines (anything after them is a
    torn line), and the shards' lines not yet folded into the manifest (``pending``, from the files ``shards``)."""

    path: Path
    records: dict[str, Record] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    complete_bytes: int = 0
    pending: list[bytes] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path, shards: bool = True) -> Manifest:
        """Read ``path`` (missing: empty), then (``shards``) the shards in its folder, whose records are newer;
        lines that are not JSON objects with an ``image`` are ignored. A shard line equal to the latest record of
        its image (and owner of its heatmap) is already in the manifest (a fold killed before it removed the shard)
        and is not pending again."""
        m = cls(path)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            pass
        else:
            with f:
                for line in _complete_lines(f):
                    m.complete_bytes += len(line)
                    rec = _parse(line)
                    if rec is not None:
                        m.add(rec)
        for shard in shard_paths(path.parent) if shards else []:
            m.shards.append(shard)
            try:
                f = open(shard, "rb")
            except FileNotFoundError:
                continue
            with f:
                for line in _complete_lines(f):
                    rec = _parse(line)
                    if rec is not None and not m._holds(rec):
                        m.pending.append(line)
                        m.add(rec)
        return m

    def _holds(self, rec: Record) -> bool:
        """``rec`` is the latest record of its image and its heatmap's owner (appending it changes nothing)."""
        heatmap = rec.get("heatmap")
        return self.records.get(rec["image"]) == rec and (
            not isinstance(heatmap, str) or self.owners.get(heatmap) == rec["image"]
        )

    def add(self, rec: Record) -> None:
        self.records[rec["image"]] = rec
        if isinstance(rec.get("heatmap"), str):
            self.owners[rec["heatmap"]] = rec["image"]

    def clear(self) -> None:
        self.records.clear()
        self.owners.clear()
        self.complete_bytes = 0
        self.pending.clear()

    def fold(self, fresh: bool = False) -> None:
        """Make ``manifest.jsonl`` the whole record: drop its torn last line, append the pending shard lines (with
        ``fresh``: empty it instead), make that durable, then delete the shards. A kill in between leaves a state
        :meth:`read` reads the same way (appended lines equal to a shard's are not appended twice)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "r+b" if self.path.exists() else "wb") as f:
            f.truncate(0 if fresh else self.complete_bytes)
            f.seek(0 if fresh else self.complete_bytes)
            if not fresh:
                for line in self.pending:
                    f.write(line)
            f.flush()
            os.fsync(f.fileno())
            self.complete_bytes = f.tell()
        self.pending.clear()
        for shard in shard_paths(self.path.parent):
            shard.unlink(missing_ok=True)
        self.shards.clear()


# -- the run ---------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One ``relprop explain`` run: ``images`` and their heatmap paths ``outputs`` (inside ``out``), the
    explainer and the input preprocessing (``load_image`` at ``size`` with ``channels``, then ``(x - mean) / std``).
    ``on_unreadable(path, message)`` is called for each unreadable file as it is found (the command line prints
    it); ``raise_unreadable`` raises its :class:`~relprop.errors.DataError` instead (a single input file).

    ``devices`` processes per node on ``accelerator`` (``"cpu"``, ``"gpu"``/``"cuda"``, ``"mps"`` or ``"auto"``:
    a GPU if one is visible), on ``num_nodes`` machines: anything but one process on the CPU runs through
    Lightning's predict loop with the ``ddp`` strategy (see the module docstring)."""

    images: list[Path]
    outputs: list[Path]
    out: Path
    explainer: Explainer
    mean: Tensor
    std: Tensor
    size: int
    channels: int
    target: int | str
    fingerprint: Record
    overlay: bool = False
    save_raw: bool = False
    batch_size: int = 8
    workers: int = 0
    overwrite: bool = False
    progress: bool = True
    raise_unreadable: bool = False
    on_unreadable: Callable[[Path, str], None] | None = None
    devices: int = 1
    accelerator: str = "cpu"
    num_nodes: int = 1


@dataclass
class Summary:
    """What a run did: ``written`` images explained now, ``skipped`` explained by an earlier run, ``unreadable``
    files found now, ``unreadable_before`` recorded by an earlier run and unchanged, ``done`` images recorded in
    all, and the signal that stopped it early (None: it went through). With several processes every process gets
    the summary of all of them; ``rank`` is the global rank of the process (0 in the one that reports), of
    ``processes``."""

    total: int
    written: int = 0
    skipped: int = 0
    unreadable: list[Path] = field(default_factory=list)
    unreadable_before: int = 0
    done: int = 0
    interrupted: str | None = None
    rank: int = 0
    processes: int = 1


class _StopOnSignal:
    """While active (main thread only), the first SIGINT/SIGTERM records its name (and calls ``on_first``); a
    second one sets ``aborted`` and raises :class:`KeyboardInterrupt`."""

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.name: str | None = None
        self.aborted = False
        self.on_first = on_first
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.name is not None:
            self.aborted = True
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        if self.on_first is not None:
            self.on_first()

    def install(self) -> None:
        """(Again) make this the handler of SIGINT and SIGTERM; the first call remembers the previous ones."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous = signal.signal(signum, self._handle)
                self._previous.setdefault(signum, previous)

    def __enter__(self) -> _StopOnSignal:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _raw_path(heatmap: str) -> str:
    return heatmap.removesuffix("_heatmap.png") + "_relevance.npy"


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _difference(old: Record | None, new: Record) -> str:
    if old is None:
        return "no explain.json"
    return "; ".join(f"{k} {old.get(k)!r}, now {v!r}" for k, v in new.items() if old.get(k) != v) or "other keys"


class _Run:
    """The state of one run in one process: the images' keys and heatmap paths, what the manifest (and shards)
    record, which images are done, and the file this process appends its records to (the manifest; with several
    processes its own shard)."""

    def __init__(self, job: Job, rank: int = 0, world: int = 1) -> None:
        self.job, self.rank, self.world = job, rank, world
        self.device: torch.device | None = None  # where the model runs (None: where the explainer's model is)
        self.keys = [str(p.resolve()) for p in job.images]
        self.heatmaps = [d.relative_to(job.out).as_posix() for d in job.outputs]
        self.manifest = Manifest.read(job.out / MANIFEST)
        self.settings_path = job.out / SETTINGS
        previous = self._previous_fingerprint()
        self.fresh = job.overwrite or previous != job.fingerprint
        if self.fresh and self.manifest.records and not job.overwrite:
            raise UsageError(
                f"{job.out} holds results of relprop explain with other options "
                f"({_difference(previous, job.fingerprint)}); add --overwrite to redo them or choose another --out"
            )
        if self.fresh:
            self.manifest.clear()
        self.summary = Summary(len(job.images), rank=rank, processes=world)
        self.done = [self._recorded(i) for i in range(len(job.images))]
        self.recorded: list[int] = []  # images this process recorded (explained or found unreadable)
        self.prepared = False
        self._file: BinaryIO | None = None

    def _previous_fingerprint(self) -> Record | None:
        try:
            doc = json.loads(self.settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return doc.get("fingerprint") if isinstance(doc, dict) else None

    def _recorded(self, i: int) -> bool:
        """Image ``i`` has an up-to-date record (and its outputs exist); counted into the summary."""
        key, heatmap = self.keys[i], self.heatmaps[i]
        rec = self.manifest.records.get(key)
        if rec is None or rec.get("source") != _stamp(self.job.images[i]):
            return False
        if rec.get("status") == "unreadable":
            self.summary.unreadable_before += 1
            return True
        raw = _raw_path(heatmap) if self.job.save_raw else None
        ok = (
            rec.get("status") == "ok"
            and rec.get("heatmap") == heatmap
            and rec.get("raw") == raw
            and self.manifest.owners.get(heatmap) == key
            and (self.job.out / heatmap).is_file()
            and (raw is None or (self.job.out / raw).is_file())
        )
        self.summary.skipped += ok
        return ok

    def grid(self) -> list[list[int]]:
        """The batches (image indices) of the fixed grid that hold an image not done yet."""
        n, size = len(self.job.images), self.job.batch_size
        batches = [list(range(s, min(s + size, n))) for s in range(0, n, size)]
        return [b for b in batches if not all(self.done[i] for i in b)]

    def prepare(self) -> None:
        """Before the first output of this run is written (in one process, rank 0): remove temporaries of killed
        writes and a stale stop flag; a fresh run writes explain.json and empties the manifest (so no earlier
        record can vouch for a new file); a resumed run drops a torn last line and folds in the shards of an
        earlier run with several processes."""
        self.job.out.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        (self.job.out / STOP_FLAG).unlink(missing_ok=True)
        self.manifest.fold(fresh=self.fresh)
        if self.fresh:
            atomic_write_json(self.settings_path, {"fingerprint": self.job.fingerprint, "relprop": __version__})
        self.prepared = True

    def _open(self) -> BinaryIO:
        """The file this process appends its records to: the manifest in one process (prepared first), its shard
        (new; rank 0 prepared OUT) with several."""
        if self._file is None:
            if self.world == 1:
                if not self.prepared:
                    self.prepare()
                self._file = open(self.manifest.path, "r+b")
                self._file.seek(self.manifest.complete_bytes)
            else:
                self._file = open(shard_path(self.job.out, self.rank), "wb")
                os.fsync(self._file.fileno())
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _remove_stale_temporaries(self) -> None:
        """Temporaries that killed atomic writes of this run's files left (``.NAME.XXXXXXXX.tmp``)."""
        from ..isnet.checkpoints import remove_stale_temporaries

        names: dict[Path, set[str]] = {self.job.out: {MANIFEST, SETTINGS}}
        for heatmap in self.heatmaps:
            path = self.job.out / heatmap
            names.setdefault(path.parent, set()).update({path.name, Path(_raw_path(heatmap)).name})
        for folder, wanted in names.items():
            remove_stale_temporaries(folder, wanted)

    def explain_batch(self, batch: ImageBatch) -> int:
        """Explain one batch, write the outputs of its images not done yet, then append and flush their records;
        returns how many images it recorded."""
        job, new = self.job, dict[int, Record]()
        for i, error in batch.errors:
            if self.done[i]:
                continue
            if job.raise_unreadable:
                raise error
            message = str(error)
            if job.on_unreadable is not None:
                job.on_unreadable(job.images[i], message)
            self.summary.unreadable.append(job.images[i])
            new[i] = {"image": self.keys[i], "status": "unreadable", "error": message}
        pixels = batch.pixels if batch.pixels is not None else torch.empty(0)
        if batch.pixels is not None:
            x = (batch.pixels - job.mean) / job.std
            explanation = job.explainer.explain(x if self.device is None else x.to(self.device), job.target)
            relevance = explanation.relevance.detach().float().cpu()
            predicted = explanation.logits.argmax(1).tolist()
            targets = explanation.targets.tolist() if explanation.targets is not None else predicted
        lines = self._open()  # an error above leaves OUT as it was
        for j, i in enumerate(batch.indices):
            if self.done[i]:
                continue
            r, heatmap = relevance[j], self.heatmaps[i]
            save_png(to_heatmap(r, overlay=pixels[j] if job.overlay else None), job.out / heatmap)
            raw = None
            if job.save_raw:
                raw = _raw_path(heatmap)
                atomic_write_bytes(job.out / raw, _npy_bytes(r.numpy()))
            self.summary.written += 1
            new[i] = {
                "image": self.keys[i],
                "status": "ok",
                "heatmap": heatmap,
                "raw": raw,
                "predicted": int(predicted[j]),
                "target": int(targets[j]),
                "relevance_sum": float(r.double().sum()),
            }
        for i in sorted(new):
            new[i]["source"] = batch.stamps[i]
            lines.write(json.dumps(new[i]).encode("utf-8") + b"\n")
            self.manifest.add(new[i])
            self.done[i] = True
            self.recorded.append(i)
        lines.flush()
        os.fsync(lines.fileno())
        return len(new)

    def loader(self, batches: Sequence[list[int]], stop: Callable[[], bool] | None = None) -> DataLoader:
        """A DataLoader of ``batches`` (``stop()`` true: no further batch is started)."""
        return DataLoader(
            ImageFiles(self.job.images, self.job.size, self.job.channels),
            batch_sampler=_Batches(batches, stop),
            num_workers=self.job.workers,
            collate_fn=collate_images,
            worker_init_fn=_ignore_stop_signals,
        )

    def progress_bar(self) -> tqdm:
        return tqdm(
            total=len(self.done), initial=sum(self.done), desc="explaining", unit="img", leave=False,
            dynamic_ncols=True, disable=not self.job.progress or self.rank != 0,
        )  # fmt: skip

    def run(self) -> Summary:
        """Explain every pending batch in this one process."""
        bar = self.progress_bar()
        try:
            with _StopOnSignal() as stop:
                for batch in self.loader(self.grid()):
                    bar.update(self.explain_batch(batch))
                    if stop.name is not None:
                        break
        finally:
            bar.close()
            self.close()
        self.summary.done = sum(self.done)
        if self.summary.done < len(self.done):
            self.summary.interrupted = stop.name
        return self.summary


class _Batches:
    """A batch sampler over fixed batches that starts no further batch once ``stop()`` is true."""

    def __init__(self, batches: Sequence[list[int]], stop: Callable[[], bool] | None = None) -> None:
        self.batches, self.stop = list(batches), stop

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches:
            if self.stop is not None and self.stop():
                return
            yield b


def explain_one_process(job: Job) -> Summary:
    """Explain ``job`` in this process (:func:`relprop.batch.explain_images` checks the job and chooses this or
    several processes)."""
    return _Run(job).run()


__all__ = [
    "MANIFEST", "SETTINGS", "SHARD_PREFIX", "STOP_FLAG", "ImageBatch", "ImageFiles", "Job", "Manifest", "Summary",
    "collate_images", "explain_one_process", "heatmap_paths", "options_fingerprint", "shard_path", "shard_paths",
]  # fmt: skip
