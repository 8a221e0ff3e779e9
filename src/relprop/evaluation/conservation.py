"""Conservation: how much relevance an explanation gains or loses, ``|Σ R_in − Σ R_out| / |Σ R_out|``."""

from __future__ import annotations

from torch import Tensor

from ..explainer import Explanation

__all__ = ["conservation_error"]


def conservation_error(explanation: Explanation) -> Tensor:
    """Per-sample ``|Σ R_in − Σ R_out| / |Σ R_out|`` (float64) from an :class:`Explanation`.

    For composites that rescale relevance per step (R-LRP), the unscaled input relevance
    ``relevance · exp(log_scale)`` is used (R-LRP conserves only up to a factor, so expect large values).

    Where the output relevance sums to 0 the error is undefined: NaN if the input relevance sums to 0 too (a
    collapsed model), Inf otherwise; never 0. Average with ``nanmean`` and count the NaNs.
    """
    if not isinstance(explanation, Explanation):
        raise TypeError(
            f"conservation_error needs an Explanation (Explainer.explain), not {type(explanation).__name__}"
        )
    return explanation.conservation_error  # the one definition (Explanation.conservation_error)
