"""Tracing a model into an explicit relevance graph of typed steps.

- :mod:`.kinds`: the closed set of step kinds, the torch operations of each, and their static facts.
- :mod:`.tracer`: ``torch.fx`` tracing with errors that name the user's line.
- :mod:`.steps`: :class:`Step` and :class:`RelevanceGraph` (classification, facts, vector-Jacobian products).
- :mod:`.linear_map`: :class:`LinearMap`, the z = W a + b of a linear step with BatchNorm folded.
"""

from .kinds import AVGPOOL_MODULES, BATCHNORM_MODULES, KINDS, LINEAR_MODULES, StepFacts
from .linear_map import LinearMap
from .steps import RelevanceGraph, Step
from .tracer import trace

__all__ = [
    "AVGPOOL_MODULES", "BATCHNORM_MODULES", "KINDS", "LINEAR_MODULES", "LinearMap", "RelevanceGraph", "Step",
    "StepFacts", "trace",
]  # fmt: skip
