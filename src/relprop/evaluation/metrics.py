"""All the heatmap metrics in one namespace, as ``relprop.evaluation.metrics`` has always offered them.

Each metric lives in the module of its concept (and is also re-exported by :mod:`relprop.evaluation`):

- :mod:`.faithfulness`: pixel flipping / region perturbation curves, AOPC, area under the curve;
- :mod:`.randomisation`: the cascading model-parameter randomisation check;
- :mod:`.robustness`: :func:`stability` of heatmaps under input noise (a module named `stability` would be
  hidden by the function of that name);
- :mod:`.similarity`: Pearson / Spearman correlation of two batches of heatmaps;
- :mod:`.conservation`: the conservation error of an explanation;
- :mod:`.background`: the share of relevance on the image background;
- :mod:`.artefact`: how much of an artefact's effect on the logit the heatmap shows;
- :mod:`.tiling`: relevance spread inside the foreground mask without following the evidence;
- :mod:`.quantus`: an ``explain_func`` for Quantus metrics.

Everything works on batches; the models are used in the mode they are in (call ``model.eval()`` first)
and never modified.
"""

from __future__ import annotations

from ._common import TargetLike
from .artefact import ArtefactEffect, artefact_effect
from .background import background_share
from .conservation import conservation_error
from .faithfulness import Baseline, PerturbationCurve, aopc, area_under_curve, pixel_flipping
from .quantus import quantus_explain_func
from .randomisation import randomisation_check
from .robustness import stability
from .similarity import heatmap_correlation
from .tiling import MaskTiling, evidence_from_input, mask_tiling

__all__ = [
    "ArtefactEffect",
    "Baseline",
    "MaskTiling",
    "PerturbationCurve",
    "TargetLike",
    "aopc",
    "area_under_curve",
    "artefact_effect",
    "background_share",
    "conservation_error",
    "evidence_from_input",
    "heatmap_correlation",
    "mask_tiling",
    "pixel_flipping",
    "quantus_explain_func",
    "randomisation_check",
    "stability",
]
