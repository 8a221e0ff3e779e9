"""BatchNorm as the engine sees it: its forward with the batch statistics kept, and its elementwise affine map."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn as nn
from torch import Tensor

from .kinds import BATCHNORM_MODULES

#: where :func:`batch_statistics_counts` is active: per BatchNorm module, the fewest values per channel seen
_COUNTS: ContextVar[dict[nn.Module, int] | None] = ContextVar("relprop_batch_statistics_counts", default=None)


@contextmanager
def batch_statistics_counts() -> Iterator[dict[nn.Module, int]]:
    """Within this block every BatchNorm forward the engine runs with batch statistics records, per module, the
    number of values each channel's statistics are computed over (batch size × spatial size; the fewest if the
    module runs more than once). With very few (a 1×1 map in a batch of 2) the batch variance is far below the
    squared mean and the normalisation is near-degenerate."""
    counts: dict[nn.Module, int] = {}
    token = _COUNTS.set(counts)
    try:
        yield counts
    finally:
        _COUNTS.reset(token)


def batch_norm_with_stats(bn: nn.Module, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """``bn(x)``, and with batch statistics also (mean, 1/√(var + eps)) of the batch, detached.

    For the plain BatchNorm1d/2d/3d classes without hooks this is their own forward, written out on
    ``aten.native_batch_norm`` (the kernel ``F.batch_norm`` runs on CPU), which returns the statistics it
    computed: the same output, gradient and running-statistics update. Anything else runs as the module.
    Inside :func:`running_stats_kept` the update lands on copies of the statistics (an explanation's forward
    pass leaves them unchanged).
    """
    plain = type(bn) in BATCHNORM_MODULES and not (bn._forward_hooks or bn._forward_pre_hooks)
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
    record = _COUNTS.get()
    if record is not None and uses_batch_statistics(bn) and x.dim() >= 2 and x.shape[1] > 0:
        n = x.numel() // x.shape[1]
        record[bn] = min(n, record.get(bn, n))
    if not plain or not (bn.training or bn.running_mean is None) or x.dim() not in (2, 3, 4, 5):
        return bn(x), None
    bn._check_input_dim(x)
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    keep = not bn.training or bn.track_running_stats
    y, mean, invstd = torch.ops.aten.native_batch_norm(
        x, bn.weight, bn.bias, bn.running_mean if keep else None, bn.running_var if keep else None, True,
        factor, bn.eps,
    )  # fmt: skip
    return y, (mean.detach(), invstd.detach())


def uses_batch_statistics(bn: nn.Module | None) -> bool:
    """Whether ``bn`` (a BatchNorm module, or None) normalises with the statistics of the current batch (training
    mode, or no running statistics)."""
    return bn is not None and (bool(bn.training) or getattr(bn, "running_mean", None) is None)


def bn_affine(
    bn: nn.Module, pre: Tensor | None, stats: tuple[Tensor, Tensor] | None = None, *, unbiased: bool = False
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Scale and shift of a BatchNorm as an elementwise affine map, statistics detached.

    In training mode (or without running statistics) the statistics of the current batch are used,
    as BatchNorm itself does, but detached: one sample's relevance does not depend on the others'.
    ``stats`` are those statistics (mean, 1/√(var + eps)) where the forward pass kept them.

    ``unbiased=True`` (batch statistics only): the variance of ``pre`` with Bessel's correction, Σ(x − μ)²/(n − 1),
    instead of BatchNorm's own Σ(x − μ)²/n; the ISNet authors' LRP-Flex folds the first layer's BatchNorm so
    (``torch.var``). The map then differs slightly from the layer's output.
    """
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
    use_batch = bn.training or bn.running_mean is None
    if use_batch and unbiased:
        assert pre is not None
        dims = [0] + list(range(2, pre.dim()))
        p = pre.detach()
        mean, inv = p.mean(dims), torch.rsqrt(p.var(dims, unbiased=True) + bn.eps)
    elif use_batch and stats is not None:
        mean, inv = stats
    elif use_batch:
        assert pre is not None
        dims = [0] + list(range(2, pre.dim()))
        p = pre.detach()
        m = p.mean(dims, keepdim=True)
        var = (p - m).square().mean(dims)  # two passes: torch's var over (0, 2, 3) is ~7x slower on CPU
        mean, inv = m.flatten(), torch.rsqrt(var + bn.eps)
    else:
        assert bn.running_mean is not None and bn.running_var is not None
        mean, inv = bn.running_mean, torch.rsqrt(bn.running_var + bn.eps)
    scale = bn.weight * inv if bn.weight is not None else inv
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


_STATS = ("running_mean", "running_var", "num_batches_tracked")


@contextmanager
def running_stats_kept(model: nn.Module) -> Iterator[None]:
    """Within this block no normalisation layer of ``model`` (BatchNorm, InstanceNorm, their subclasses) in
    training mode changes its running statistics or ``num_batches_tracked``: each one's statistics are replaced
    by copies, which the layers' forward passes update, and the originals (values and version counters
    untouched) are put back on exit. Eval-mode layers only read them and are left alone.

    Every path that runs such a layer (relprop's own BatchNorm forward, the module itself when it has hooks
    or is a leaf module, a leaf module re-evaluated by the relevance pass) is covered.
    """
    saved: list[tuple[nn.Module, str, torch.Tensor]] = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats:
            for name in _STATS:
                t = m._buffers.get(name)
                if isinstance(t, torch.Tensor):
                    saved.append((m, name, t))
                    m._buffers[name] = t.clone()
    try:
        yield
    finally:
        for m, name, t in reversed(saved):
            m._buffers[name] = t


__all__ = [
    "batch_norm_with_stats", "batch_statistics_counts", "bn_affine", "running_stats_kept", "uses_batch_statistics",
]  # fmt: skip
