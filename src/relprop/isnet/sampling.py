"""Which samples each process trains on, epoch by epoch, so that a run can stop and resume mid-epoch exactly.

* :class:`EpochSampler`: one process's indices of one epoch, a function of (seed, epoch) only (the semantics of
  ``DistributedSampler``: pad to a multiple of ``world_size``, then every ``world_size``-th index).
* :class:`EpochBatches` / :class:`ResumableLoader`: those indices in batches, from a given batch on; the loader
  has Lightning's ``state_dict`` / ``load_state_dict`` interface, so Lightning's own loop state carries the
  position in the epoch through a checkpoint and restores it on resume.

Needs no ``lightning`` (Lightning recognises the loader by its two methods).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import CheckpointError, InputError


def _mix(stream: int, seed: int, epoch: int) -> int:
    """A 64-bit generator seed unique per (stream, seed, epoch)."""
    return ((stream & 3) << 62) | ((seed & 0xFFFFFFFF) << 30) | (epoch & (2**30 - 1))


def epoch_generator(stream: int, seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded by (stream, seed, epoch): 0 shuffles the training data, 1 draws the stochastic
    variant's validation classes, 2 seeds the training DataLoader (its workers' base seed), 3 the validation one."""
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
            raise InputError(f"EpochSampler(rank={rank}, world_size={world_size}): need 0 <= rank < world_size")
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle

    def indices(self) -> list[int]:
        """This process's indices of the whole epoch (before skipping ``start``)."""
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world_size))
        perm = torch.randperm(self.n, generator=epoch_generator(0, self.seed, self.epoch)).tolist()
        per_rank = math.ceil(self.n / self.world_size)
        pad = per_rank * self.world_size - self.n
        perm += (perm * (pad // max(self.n, 1) + 1))[:pad]
        return perm[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        full = math.ceil(self.n / self.world_size) if self.shuffle else len(range(self.rank, self.n, self.world_size))
        return max(full - self.start, 0)


class EpochBatches(Sampler[list[int]]):
    """The batches of an :class:`EpochSampler` (``batch_size`` each, the last one possibly shorter), from batch
    ``skip`` on. Its length is the whole epoch's, skipped batches included: Lightning counts the batches of an
    epoch across a resume."""

    def __init__(self, sampler: EpochSampler, batch_size: int, skip: int = 0) -> None:
        if sampler.start:
            raise InputError("EpochBatches skips whole batches (skip=); give it an EpochSampler with start=0")
        self.sampler, self.batch_size, self.skip = sampler, batch_size, skip

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def __iter__(self) -> Iterator[list[int]]:
        indices = self.sampler.indices()
        for b in range(self.skip, len(self)):
            yield indices[b * self.batch_size : (b + 1) * self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


class ResumableLoader(DataLoader):
    """A DataLoader over :class:`EpochBatches` whose position in the epoch travels in Lightning checkpoints.

    Lightning saves ``state_dict()`` of a training loader that has one (``checkpoint["loops"]``) and calls
    ``load_state_dict`` on the new loader when it resumes mid-epoch. The position is ``position()``, the
    number of batches the module has *trained* on in this epoch, not the number this loader has handed out:
    Lightning fetches one batch ahead.
    """

    def __init__(
        self, dataset: Dataset[Any], batches: EpochBatches, position: Callable[[], int], **kwargs: Any
    ) -> None:
        super().__init__(dataset, batch_sampler=batches, **kwargs)
        self._batches = batches
        self._position = position

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._batches.epoch, "batch": int(self._position())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch != self._batches.epoch:
            raise CheckpointError(
                f"the checkpoint stopped in epoch {epoch} but training resumes in epoch {self._batches.epoch}; "
                "the checkpoint is inconsistent: resume=False starts over"
            )
        self._batches.skip = batch


def check_dataset(data: Any, name: str) -> None:
    """Fail early, naming ``name`` (train / validation), if ``data`` is not a non-empty map-style dataset of
    ``(image (C, H, W), mask (1, H, W) or (H, W), label)`` triples (checks item 0)."""
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


__all__ = ["EpochBatches", "EpochSampler", "ResumableLoader", "check_dataset", "epoch_generator"]
