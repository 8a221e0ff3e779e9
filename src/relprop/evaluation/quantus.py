"""The adapter to Quantus: an ``explain_func(model, inputs, targets) -> ndarray`` that runs relprop.

Quantus itself is not imported here; pass the function to its metrics (``explain_func=``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..composites import Composite
from ..explainer import Explainer
from ..rules import Rule
from ._common import targets_of

__all__ = ["quantus_explain_func"]


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def quantus_explain_func(composite: str | Composite | Rule = "epsilon_plus_flat") -> Callable[..., np.ndarray]:
    """An ``explain_func(model, inputs, targets, **kwargs) -> np.ndarray`` for Quantus metrics.

    ``inputs`` may be a numpy array or a tensor (Quantus passes numpy, channel first); ``targets`` class
    indices (array, tensor or int). The relevance has the input's shape, float32. It runs on the model's
    device and dtype; Quantus's ``device=`` keyword is accepted and ignored, ``composite=`` overrides the
    default. A fresh :class:`Explainer` is built per call, because Quantus's randomisation metrics edit
    model weights between calls.

    Example::

        metric = quantus.PixelFlipping(features_in_step=28)
        metric(model=model, x_batch=x, y_batch=y, explain_func=relprop.evaluation.quantus_explain_func())
    """

    def explain_func(model: nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
        comp = kwargs.pop("composite", composite)
        kwargs.pop("device", None)
        if kwargs:
            raise TypeError(f"unexpected keyword arguments for relprop's explain_func: {sorted(kwargs)}")
        device, dtype = _model_device_dtype(model)
        x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, Tensor) else inputs)
        x = x.detach().to(device=device, dtype=dtype)
        t = targets_of(targets if not isinstance(targets, (list, tuple)) else np.asarray(targets), x.shape[0], device)
        r = Explainer(model, comp)(x, t)
        return r.detach().cpu().numpy().astype(np.float32, copy=False)

    return explain_func
