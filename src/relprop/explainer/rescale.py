"""Where relevance waits during a pass, with per-step rescaling for rules whose relevance grows or shrinks
with depth (R-LRP), and branch rescaling at residual forks.

With rescaling, relevance is kept as a pair (R, log s) whose true value is R·s per sample; branches that meet
at a fork are added at their true relative scale without overflow. Without it, log s is None throughout and
the store is a plain accumulator.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..graph import RelevanceGraph, Step
from ..rules import safe_divide
from .plan import Plan

_FAR = 2.0**16  # rescale when the per-sample max leaves [2⁻¹⁶, 2¹⁶]: far inside every float format's range


def per_sample(v: Tensor, like: Tensor) -> Tensor:
    """v (B,) shaped to broadcast against ``like`` (B, ...); for a tensor whose first dimension is not the batch
    (attention windows, sequence-first layouts) the scale is uniform over the batch (see :func:`normalise`) and
    its first entry is used."""
    if like.dim() == 0 or like.shape[0] != v.shape[0]:
        return v[0].to(like.dtype)
    return v.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def normalise(r: Tensor, log_s: Tensor, only_if_far: bool = False, uniform: bool = False) -> tuple[Tensor, Tensor]:
    """Divide r by its per-sample max |r| (samples with r == 0 stay), adding the log to log_s; ``uniform``: by
    the max over the whole batch (for graphs with tensors whose first dimension is not the batch: there the
    samples cannot be told apart, so every sample keeps the same scale).
    With ``only_if_far`` nothing is done while every max lies within [1/_FAR, _FAR] (saves a pass)."""
    if uniform:
        top = r.detach().abs().max().to(log_s.dtype)
        m = torch.where(top > 0, top, 1.0).expand(log_s.shape)
    else:
        lo, hi = torch.aminmax(r.detach().flatten(1), dim=1)
        m = torch.maximum(-lo, hi).to(log_s.dtype)
        m = torch.where(m > 0, m, 1.0)
    if only_if_far and bool(((m <= _FAR) & (m >= 1 / _FAR)).all()):
        return r, log_s
    return r / per_sample(m.to(r.dtype), r), log_s + torch.log(m)


def batch_first(graph: RelevanceGraph, env: dict[Any, Any], batch: int) -> bool:
    """Whether every input-dependent tensor of this forward pass has the batch as its first dimension."""
    for node in graph.live:
        v = env.get(node)
        if isinstance(v, Tensor) and (v.dim() == 0 or v.shape[0] != batch):
            return False
    return True


def _accumulate(prev: Any, new: Any) -> Any:
    if isinstance(prev, Tensor):
        return prev + new
    return tuple(b if a is None else a if b is None else a + b for a, b in zip(prev, new))


def _accumulate_scaled(r1: Any, s1: Tensor, r2: Any, s2: Tensor) -> tuple[Any, Tensor]:
    """r1·e^s1 + r2·e^s2 as (r, s) without overflow: both brought to the larger scale."""
    s = torch.maximum(s1, s2)
    f1, f2 = torch.exp(s1 - s), torch.exp(s2 - s)
    if not isinstance(r1, Tensor):
        return tuple(
            None if a is None and b is None else b * per_sample(f2, b) if a is None else
            a * per_sample(f1, a) if b is None else a * per_sample(f1, a) + b * per_sample(f2, b)
            for a, b in zip(r1, r2)
        ), s  # fmt: skip
    return r1 * per_sample(f1, r1) + r2 * per_sample(f2, r2), s


class RelevanceStore:
    """Relevance that has arrived at each step's output, summed over the step's users."""

    def __init__(self) -> None:
        self._r: dict[Step, Any] = {}
        self._log_s: dict[Step, Tensor] = {}

    def push(self, step: Step, r: Any, log_s: Tensor | None) -> None:
        prev = self._r.get(step)
        if log_s is None:
            self._r[step] = r if prev is None else _accumulate(prev, r)
        elif prev is None:
            self._r[step], self._log_s[step] = r, log_s
        else:
            self._r[step], self._log_s[step] = _accumulate_scaled(prev, self._log_s[step], r, log_s)

    def pop(self, step: Step) -> tuple[Any, Tensor | None] | None:
        r = self._r.pop(step, None)
        return None if r is None else (r, self._log_s.pop(step, None))


class BranchShares:
    """Branch rescaling at residual forks (``Rule.rescales_branches``): at an addition y = u + v each branch's
    share Σ u ⊙ R / y is recorded; when the branch's relevance reaches the fork, it is rescaled so that its
    total equals that share."""

    def __init__(self, plan: Plan) -> None:
        self.forks = plan.forks
        self.adds = plan.branch_adds
        self._shares: dict[tuple[Step, int], tuple[Tensor, Tensor | None]] = {}

    def record(self, step: Step, env: dict[Any, Any], r: Tensor, log_s: Tensor | None) -> None:
        s = safe_divide(r, env[step.node])
        for b, (sign, n) in enumerate(zip(step.signs, step.node.args[:2])):
            part = env[n] if sign > 0 else -env[n]
            self._shares[(step, b)] = ((part * s).flatten(1).sum(1), log_s)

    def adjust(self, step: Step, src: Step, r_in: Tensor, log_s: Tensor | None) -> tuple[Tensor, Tensor | None]:
        fork = self.forks.get((step, src))
        if fork is None:
            return r_in, log_s
        share, log_s = self._shares.pop(fork)
        factor = safe_divide(share.double(), r_in.flatten(1).sum(1).double())
        if log_s is None:
            return r_in * per_sample(factor.to(r_in.dtype), r_in), None
        # |factor| is huge where the branch's signed relevance cancels: keep it in the log-scale
        magnitude = factor.abs()
        r_in = r_in * per_sample(torch.sign(factor).to(r_in.dtype), r_in)
        return r_in, log_s + torch.log(torch.where(magnitude > 0, magnitude, 1.0))


__all__ = ["BranchShares", "RelevanceStore", "normalise", "per_sample"]
