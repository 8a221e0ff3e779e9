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
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import threading
from collections.abc import Callable, Sequence
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


@dataclass
class Manifest:
    """What ``manifest.jsonl`` records: the latest record per image, the image that last wrote each heatmap path,
    and the byte length of its newline-terminated lines (anything after them is a torn line)."""

    path: Path
    records: dict[str, Record] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    complete_bytes: int = 0

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Read ``path`` (missing: empty); lines that are not JSON objects with an ``image`` are ignored."""
        m = cls(path)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return m
        with f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn by a kill during the append
                m.complete_bytes += len(line)
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("image"), str):
                    m.add(rec)
        return m

    def add(self, rec: Record) -> None:
        self.records[rec["image"]] = rec
        if isinstance(rec.get("heatmap"), str):
            self.owners[rec["heatmap"]] = rec["image"]

    def clear(self) -> None:
        self.records.clear()
        self.owners.clear()
        self.complete_bytes = 0


# -- the run ---------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One ``relprop explain`` run: ``images`` and their heatmap paths ``outputs`` (inside ``out``), the
    explainer and the input preprocessing (``load_image`` at ``size`` with ``channels``, then ``(x - mean) / std``).
    ``on_unreadable(path, message)`` is called for each unreadable file as it is found (the command line prints
    it); ``raise_unreadable`` raises its :class:`~relprop.errors.DataError` instead (a single input file)."""

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


@dataclass
class Summary:
    """What a run did: ``written`` images explained now, ``skipped`` explained by an earlier run, ``unreadable``
    files found now, ``unreadable_before`` recorded by an earlier run and unchanged, ``done`` images recorded in
    all, and the signal that stopped it early (None: it went through)."""

    total: int
    written: int = 0
    skipped: int = 0
    unreadable: list[Path] = field(default_factory=list)
    unreadable_before: int = 0
    done: int = 0
    interrupted: str | None = None


class _StopOnSignal:
    """While active (main thread only), the first SIGINT/SIGTERM just records its name; a second one raises
    :class:`KeyboardInterrupt`."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.name is not None:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
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
    def __init__(self, job: Job) -> None:
        self.job = job
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
        self.summary = Summary(len(job.images))
        self.done = [self._recorded(i) for i in range(len(job.images))]
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

    def _open(self) -> BinaryIO:
        """The manifest, open for appending. Before the first output of this run is written, a fresh run writes
        explain.json and empties the manifest (so no earlier record can vouch for a new file); a resumed run drops
        a torn last line."""
        if self._file is None:
            self.job.out.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries()
            self._file = open(self.manifest.path, "r+b" if self.manifest.path.exists() else "wb")
            self._file.truncate(self.manifest.complete_bytes)
            self._file.seek(self.manifest.complete_bytes)
            os.fsync(self._file.fileno())
            if self.fresh:
                atomic_write_json(self.settings_path, {"fingerprint": self.job.fingerprint, "relprop": __version__})
        return self._file

    def _remove_stale_temporaries(self) -> None:
        """Temporaries that killed atomic writes of this run's files left (``.NAME.XXXXXXXX.tmp``)."""
        from ..isnet.checkpoints import remove_stale_temporaries

        names: dict[Path, set[str]] = {self.job.out: {MANIFEST, SETTINGS}}
        for heatmap in self.heatmaps:
            path = self.job.out / heatmap
            names.setdefault(path.parent, set()).update({path.name, Path(_raw_path(heatmap)).name})
        for folder, wanted in names.items():
            remove_stale_temporaries(folder, wanted)

    def _explain_batch(self, batch: ImageBatch, bar: tqdm) -> None:
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
            explanation = job.explainer.explain((batch.pixels - job.mean) / job.std, job.target)
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
        lines.flush()
        os.fsync(lines.fileno())

    def run(self) -> Summary:
        job, n, size = self.job, len(self.job.images), self.job.batch_size
        grid = [list(range(s, min(s + size, n))) for s in range(0, n, size)]
        loader = DataLoader(
            ImageFiles(job.images, job.size, job.channels),
            batch_sampler=[b for b in grid if not all(self.done[i] for i in b)],
            num_workers=job.workers,
            collate_fn=collate_images,
            worker_init_fn=_ignore_stop_signals,
        )
        bar = tqdm(
            total=n, initial=sum(self.done), desc="explaining", unit="img", leave=False, dynamic_ncols=True,
            disable=not job.progress,
        )  # fmt: skip
        try:
            with _StopOnSignal() as stop:
                for batch in loader:
                    pending = sum(not self.done[i] for i in batch.indices + [i for i, _ in batch.errors])
                    self._explain_batch(batch, bar)
                    bar.update(pending)
                    if stop.name is not None:
                        break
        finally:
            bar.close()
            if self._file is not None:
                self._file.close()
        self.summary.done = sum(self.done)
        if self.summary.done < len(self.done):
            self.summary.interrupted = stop.name
        return self.summary


def explain_images(job: Job) -> Summary:
    """Explain ``job.images`` in batches, writing each batch's outputs and manifest lines as it finishes and
    skipping images an earlier run in ``job.out`` recorded (see the module docstring).

    Raises:
        UsageError: ``job.out`` holds results of other options (and not ``job.overwrite``), or is a file.
        DataError: an unreadable image with ``job.raise_unreadable``.
    """
    if job.batch_size < 1 or job.workers < 0:
        raise UsageError(f"--batch-size {job.batch_size} must be at least 1 and --workers {job.workers} at least 0")
    if job.out.exists() and not job.out.is_dir():
        raise UsageError(f"--out {job.out} is an existing file, not a folder: pass a folder (it is created if missing)")
    return _Run(job).run()


__all__ = [
    "MANIFEST", "SETTINGS", "ImageBatch", "ImageFiles", "Job", "Manifest", "Summary", "collate_images",
    "explain_images", "heatmap_paths", "options_fingerprint",
]  # fmt: skip
