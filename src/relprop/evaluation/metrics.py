"""All the heatmap metrics in one namespace, as ``relprop.evaluation.metrics`` has always offered them.

Each metric lives in the module of its concept (and is also re-exported by :mod:`relprop.evaluation`):

- :mod:`.faithfulness`: pixel flipping / region perturbation curves, AOPC, area under the curve;
- :mod:`.randomisation`: the cascading model-parameter randomisation check;
- :mod:`.robustness`: :func:`stability` of heatmaps under input noise (a module named `stability` would be
  hidden by the function of that name);
- :mod:`.similarity`: Pearson / Spearman correlation of two batches of heatmaps;
- :mod:`.conservation`: the conservation error of an explanation;
- :mod:`.background`: the share of relevance on the image background;
- :mod:`.quantus`: an ``explain_func`` for Quantus metrics.

Everything works on batches; the models are used in the mode they are in (call ``model.eval()`` first)
and never modified.
"""

from __future__ import annotations

from ._common import TargetLike
from .background import background_share
from .conservation import conservation_error
from .faithfulness import Baseline, PerturbationCurve, aopc, area_under_curve, pixel_flipping
from .quantus import quantus_explain_func
from .randomisation import randomisation_check
from .robustness import stability
from .similarity import heatmap_correlation

__all__ = [
    "Baseline",
    "PerturbationCurve",
    "TargetLike",
    "aopc",
    "area_under_curve",
    "background_share",
    "conservation_error",
    "heatmap_correlation",
    "pixel_flipping",
    "quantus_explain_func",
    "randomisation_check",
    "stability",
]
