"""Measuring explanations, one module per concept:

- :mod:`.faithfulness`: pixel flipping / region perturbation (MoRF, LeRF), AOPC, area under the curve;
- :mod:`.randomisation`: the cascading model-parameter randomisation sanity check;
- :mod:`.robustness`: :func:`stability` of heatmaps under input noise (a module named `stability` would be
  hidden by the function of that name);
- :mod:`.similarity`: correlation of two batches of heatmaps;
- :mod:`.conservation`: conservation error of an explanation;
- :mod:`.background`: the share of relevance on the image background (Σ_bg |R| / Σ |R|);
- :mod:`.artefact`: how much of an artefact's effect on the logit the heatmap shows (counterfactual vs relevance);
- :mod:`.tiling`: mask tiling, relevance spread inside the mask without following the evidence;
- :mod:`.quantus`: an ``explain_func`` for Quantus metrics.

:mod:`.metrics` gathers all of them in one namespace (``from relprop.evaluation import metrics``).
"""

from __future__ import annotations

from . import metrics
from .metrics import *  # noqa: F403 - the one list of public names is metrics.__all__

__all__ = [*metrics.__all__, "metrics"]
