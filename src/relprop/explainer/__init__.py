"""The engine: one forward pass, then relevance passes from any number of output seeds and composites.

- :mod:`.core`: :class:`Explainer`, :class:`ForwardPass`, :class:`Explanation`.
- :mod:`.functional`: ``relprop.explain``, cached per model.
- :mod:`.plan`: a composite resolved on a graph (rules, reasons, static analysis).
- :mod:`.backward`: the one backward of each step kind, and the relevance pass.
- :mod:`.rescale`: where relevance waits; per-step rescaling (R-LRP) and residual-branch rescaling.
- :mod:`.targets`: the output relevance for a target.
- :mod:`.summary`: ``Explainer.summary()``.
"""

from .core import Explainer, Explanation, ForwardPass
from .functional import explain
from .plan import Plan
from .targets import Target

__all__ = ["Explainer", "Explanation", "ForwardPass", "Plan", "Target", "explain"]
