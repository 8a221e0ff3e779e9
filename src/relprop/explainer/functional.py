"""``relprop.explain(model, x, ...)``: the functional entry point, as cheap on repeated calls as an Explainer.

Explainers are cached per model (held weakly: the cache never keeps a model alive) and per (composite,
leaf modules, rescale). A cached explainer is used only while the model's structure is unchanged: the same
submodules, the same training flags and the same hooks (the trace depends on them); otherwise the model is
traced again. Modified weights are invalidated by parameter versions, as in :class:`~relprop.Explainer`.
A model whose forward branches on input sizes is traced per input shape: its cached explainer keeps the traces
of the last few shapes (see ``Explainer(..., input_shape=)``).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch.nn as nn
from torch import Tensor

from .core import CompositeLike, Explainer, OutputSelector, model_structure
from .targets import Target

_PER_MODEL = 8
_CACHE: weakref.WeakKeyDictionary[nn.Module, OrderedDict[Any, tuple[Any, Any, Explainer]]] = (
    weakref.WeakKeyDictionary()
)


def _same(a: Any, b: Any) -> bool:
    """The same argument: equal names and indices, otherwise the same object (a composite or callable built anew
    may reuse a dead one's id)."""
    return a is b or (isinstance(a, (str, int)) and type(a) is type(b) and a == b)


def cached_explainer(
    model: nn.Module, composite: CompositeLike, leaf_modules: Mapping[type, str] | None, rescale: bool | None,
    output: OutputSelector | None = None,
) -> Explainer:  # fmt: skip
    """The cached :class:`Explainer` for these arguments, traced anew when the model's structure changed."""
    leaves = tuple(sorted(((c.__module__, c.__qualname__, id(c)), k) for c, k in (leaf_modules or {}).items()))
    key = (
        composite if isinstance(composite, str) else id(composite), leaves, rescale,
        output if output is None or isinstance(output, (str, int)) else id(output),
    )  # fmt: skip
    structure = model_structure(model)
    entries = _CACHE.setdefault(model, OrderedDict())
    hit = entries.get(key)
    if hit is not None and all(map(_same, hit[0], (composite, output))) and hit[1] == structure:
        entries.move_to_end(key)
        return hit[2]
    explainer = Explainer(model, composite, leaf_modules=leaf_modules, rescale=rescale, output=output)
    explainer._model = None  # the cache holds the model weakly
    entries[key] = ((composite, output), structure, explainer)
    while len(entries) > _PER_MODEL:
        entries.popitem(last=False)
    return explainer


def explain(
    model: nn.Module,
    x: Tensor,
    target: Target = "predicted",
    composite: CompositeLike = "epsilon_plus_flat",
    *,
    create_graph: bool = False,
    leaf_modules: Mapping[type, str] | None = None,
    rescale: bool | None = None,
    output: OutputSelector | None = None,
) -> Tensor:
    """Relevance of input ``x`` for ``target`` under ``composite``, shaped like ``x``.

    Repeated calls on the same model and composite reuse one traced :class:`Explainer` (see the module
    docstring), so they cost the same as calling an Explainer. ``output`` selects the logits of a model that
    returns a tuple or a dict (see :class:`Explainer`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    explainer = cached_explainer(model, composite, leaf_modules, rescale, output)
    return explainer(x, target, create_graph=create_graph)


__all__ = ["cached_explainer", "explain"]
