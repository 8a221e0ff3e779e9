"""The engine: one forward pass, then relevance passes from any number of output seeds."""

from .core import Explainer, Explanation, Target, explain

__all__ = ["Explainer", "Explanation", "Target", "explain"]
