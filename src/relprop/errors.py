"""Every exception and warning relprop raises, in one hierarchy rooted at :class:`RelpropError`.

Each error also derives from the builtin that describes its kind (``ValueError``, ``TypeError``, ...), so
``except ValueError`` keeps working. Every message names the offending module, call, file or value and
says how to fix it.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple


class RelpropError(Exception):
    """Base class of all relprop errors."""


class UnsupportedLayerError(RelpropError, TypeError):
    """A module or function in the model has no relevance rule."""


class TracingError(RelpropError, RuntimeError):
    """The model could not be traced into an explicit graph."""


class InputError(RelpropError, ValueError):
    """The input tensor does not fit the model (shape, dtype, NaN/Inf)."""


class TargetError(RelpropError, IndexError):
    """The explained target is not a valid output of the model."""


class UsageError(RelpropError, ValueError):
    """A command-line argument, option combination or run folder given by the user is unusable."""


class ModelLoadError(RelpropError, ValueError):
    """A model or its weights could not be loaded; the message names the file or architecture."""


class CheckpointError(RelpropError, ValueError):
    """A checkpoint file is unreadable, incomplete or was not written by relprop's training."""


class ReportError(RelpropError, ValueError):
    """A folder given to the report is not a run or results folder, or one of its files is unreadable."""


class DataProblem(NamedTuple):
    """One problem of a data set: the file (or folder, or CSV file) concerned and a one-line message.

    ``kind`` is one of ``"layout"``, ``"missing"``, ``"unreadable"``, ``"not_binary"``, ``"size_mismatch"``,
    ``"unsupported"``, ``"empty_class"``, ``"unknown_label"``, ``"duplicate"``.
    """

    path: Path
    message: str
    kind: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class DataError(RelpropError, ValueError):
    """A data set on disk is unusable; ``.problems`` lists the problems found (possibly only the first)."""

    def __init__(self, message: str, problems: Sequence[DataProblem] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[DataProblem, ...] = tuple(problems)

    def __reduce__(self) -> tuple[type[DataError], tuple[str, tuple[DataProblem, ...]]]:
        return type(self), (str(self), self.problems)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after writing a usable checkpoint; ``fit(..., resume=True)``
    continues from it. (A ``KeyboardInterrupt``, not a :class:`RelpropError`: it stops the program the
    way Ctrl-C does, after saving.)"""

    def __init__(self, signum: int, checkpoint: Path, epoch: int, step: int) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step = step
        name = signal.Signals(signum).name if signum in {s.value for s in signal.Signals} else str(signum)
        super().__init__(
            f"training interrupted by {name} in epoch {epoch} after {step} optimiser steps; the checkpoint "
            f"{checkpoint} is up to date: run fit(..., resume=True) with the same out_dir to continue"
        )


class CacheWarning(UserWarning):
    """A cache file could not be read or written; the data were (re)built instead."""


class RecipeWarning(UserWarning):
    """A training recipe that is known not to work as the user likely expects (e.g. ISNet training started from
    a model that already learned the shortcut); the message says what was measured and what to do instead."""


class ModelOutputError(RelpropError, ValueError):
    """The model's output cannot be explained as logits (B, C): a tuple or dict without ``output=`` to select
    them, a selector that picks no tensor, or an output that does not depend on the input."""


class WrappedModelError(TracingError):
    """The model is a wrapper relprop cannot trace (DataParallel, DistributedDataParallel, TorchScript,
    ``torch.compile``); the message names the module to pass instead."""


__all__ = [
    "CacheWarning", "CheckpointError", "DataError", "DataProblem", "InputError", "ModelLoadError", "ModelOutputError",
    "RecipeWarning", "RelpropError", "ReportError", "TargetError", "TracingError", "TrainingInterrupted",
    "UnsupportedLayerError", "UsageError", "WrappedModelError",
]  # fmt: skip
