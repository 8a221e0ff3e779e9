"""relprop: Layer-wise Relevance Propagation for PyTorch, with one forward and one backward pass.

Quick start::

    import relprop
    relevance = relprop.explain(model.eval(), images, target="predicted", composite="epsilon_plus_flat")
"""

from . import composites, rules
from .composites import PRESETS, Composite
from .errors import InputError, RelpropError, TargetError, TracingError, UnsupportedLayerError
from .explainer import Explainer, Explanation, ForwardPass, explain
from .graph import RelevanceGraph
from .rules import (
    RLRP,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    MultiplyInput,
    Norm,
    Pass,
    Product,
    Rule,
    Softmax,
    WSquare,
    ZBox,
    Zero,
    ZPlus,
)

__version__ = "0.1.0"

__all__ = [
    "AlphaBeta", "Composite", "Epsilon", "Explainer", "Explanation", "Flat", "ForwardPass", "Gamma", "Gradient",
    "InputError", "MultiplyInput", "Norm", "PRESETS", "Pass", "Product", "RLRP", "RelevanceGraph", "RelpropError",
    "Rule", "Softmax", "TargetError", "TracingError", "UnsupportedLayerError", "WSquare", "ZBox", "ZPlus", "Zero",
    "composites", "explain", "rules",
]  # fmt: skip
