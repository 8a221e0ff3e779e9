"""Tracing a model into an explicit relevance graph of typed steps (see :mod:`relprop.graph.core`)."""

from .core import (
    AVGPOOL_MODULES,
    BATCHNORM_MODULES,
    LINEAR_MODULES,
    LinearMap,
    RelevanceGraph,
    Step,
    trace,
)

__all__ = ["AVGPOOL_MODULES", "BATCHNORM_MODULES", "LINEAR_MODULES", "LinearMap", "RelevanceGraph", "Step", "trace"]
