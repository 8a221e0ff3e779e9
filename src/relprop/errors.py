"""Exceptions raised by relprop. Every message names the offending module, call or value."""

from __future__ import annotations


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
