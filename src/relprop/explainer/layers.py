"""Hidden layers: which step's output is a named module's output, for ``explain(..., layers=[...])``.

A module's output is found from the trace itself: every fx node records the stack of modules whose forward made
it (``nn_module_stack``); the nodes made inside a module form its region, and the one live node of the region
that is read outside it is the module's output. The relevance pass then records the relevance that arrives at
that step's output (summed over all its users), which is the relevance at the module's output tensor.

Refused, with the reason and a name that works: a name that is not a submodule (close names are listed), a
module called more than once (each call has its own relevance), a module whose output is not one tensor used
afterwards, a module never called by the forward (inside a leaf module, or written out as primitive steps as
``nn.MultiheadAttention`` is), and a Linear/Conv whose BatchNorm is folded into the same step (its own output is
never computed: ask for the BatchNorm).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import torch.fx as fx
import torch.nn as nn

from ..errors import UsageError
from ..graph import RelevanceGraph, Step


class LayerIndex:
    """The fx nodes each module call made (its region), indexed by the tracer's module-stack keys
    (``"layer1.0"``, and ``"layer1.0.relu@1"`` for a second call)."""

    def __init__(self, graph: RelevanceGraph) -> None:
        self.graph = graph
        self.regions: dict[str, list[fx.Node]] = {}
        #: number of calls per module path
        self.calls: dict[str, int] = {}
        for node in graph.fx_graph.nodes:
            for key, value in (node.meta.get("nn_module_stack") or {}).items():
                self.regions.setdefault(str(key), []).append(node)
                path = str(value[0]) if isinstance(value, tuple) and value else str(key).split("@")[0]
                n = int(str(key).rsplit("@", 1)[1]) + 1 if "@" in str(key) else 1
                self.calls[path] = max(self.calls.get(path, 0), n)
        self.leaves = {str(n.target) for n in graph.fx_graph.nodes if n.op == "call_module"}
        self._resolved: dict[str, Step] = {}

    def resolve(self, names: Iterable[str]) -> dict[str, Step]:
        """The step whose output is each named module's output (an error naming the problem otherwise)."""
        if isinstance(names, str):
            raise UsageError(f"layers must be a list of module names, not the string {names!r}: layers=[{names!r}]")
        out: dict[str, Step] = {}
        for name in names:
            if not isinstance(name, str):
                raise UsageError(f"layers must hold module names (str), got {type(name).__name__} {name!r}")
            hit = self._resolved.get(name)
            if hit is None:
                hit = self._resolved[name] = self._resolve_one(name)
            out[name] = hit
        return out

    # -- one name ------------------------------------------------------------------------------------------------
    def _resolve_one(self, name: str) -> Step:
        model = self.graph.model
        model_name = type(model).__name__
        if name == "":
            raise UsageError(
                "layers=['']: '' is the model itself, whose output relevance is Explanation.output_relevance; "
                "name a submodule (model.named_modules() lists them)"
            )
        every = dict(model.named_modules(remove_duplicate=False))
        module = every.get(name)
        if module is None:
            raise UsageError(f"{model_name} has no submodule {name!r}; {_close_names(name, list(every))}")
        canonical = next(n for n, m in model.named_modules() if m is module)  # the name the tracer records
        kind = type(module).__name__
        calls = self.calls.get(canonical, 0)
        if calls > 1:
            raise UsageError(
                f"module {name!r} ({kind}) is called {calls} times in {model_name}'s forward, and each call has its "
                f"own relevance; ask for a module called once{_parent_hint(canonical, self)}"
            )
        region = self.regions.get(canonical)
        if not region:
            raise UsageError(self._not_called(name, canonical, kind, model))
        inside = set(region)
        graph = self.graph
        escaping = []
        for node in region:
            step = graph.by_node.get(node)
            if step is None or step.kind in ("const", "meta") or node not in graph.live:
                continue
            if any(u not in inside for u in node.users):
                escaping.append(node)
        if not escaping:
            raise UsageError(
                f"the output of module {name!r} ({kind}) does not depend on {model_name}'s input (or is never used), "
                "so no relevance reaches it; ask for a module on the path from the input to the logits"
            )
        if len(escaping) > 1:
            raise UsageError(
                f"module {name!r} ({kind}) returns {len(escaping)} tensors that are used afterwards "
                f"({', '.join(n.name for n in escaping)}); hidden-layer relevance needs one output tensor: ask for a "
                "submodule that returns one tensor"
            )
        (node,) = escaping
        step = graph.by_node[node]
        if step.node is not node:  # the Linear/Conv of a step with its BatchNorm folded in
            bn = next((n for n, m in model.named_modules() if m is step.batchnorm), "its BatchNorm")
            raise UsageError(
                f"module {name!r} ({kind}) is folded with its BatchNorm {bn!r} into one step, so relevance at the "
                f"{kind}'s own output is never computed; ask for layers=[{bn!r}] (the relevance after both)"
            )
        return step

    def _not_called(self, name: str, canonical: str, kind: str, model: nn.Module) -> str:
        parts = canonical.split(".")
        for i in range(len(parts) - 1, 0, -1):
            parent = ".".join(parts[:i])
            ptype = type(model.get_submodule(parent)).__name__
            if parent in self.leaves:
                return (
                    f"module {name!r} ({kind}) is inside {parent!r} ({ptype}), which relprop treats as one step (a "
                    f"leaf module), so relevance inside it is not computed; ask for layers=[{parent!r}]"
                )
            if parent in self.regions:
                written = " (relprop writes it out as primitive steps)" if ptype == "MultiheadAttention" else ""
                return (
                    f"module {name!r} ({kind}) is not called by {parent!r} ({ptype}){written}: its parameters are "
                    f"read directly, so it has no output of its own; ask for layers=[{parent!r}]"
                )
        return (
            f"module {name!r} ({kind}) is never called by {type(model).__name__}'s forward (as traced), so it has no "
            "output to explain; ask for a module that the forward calls"
        )


def _close_names(name: str, names: list[str]) -> str:
    names = [n for n in names if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if close:
        return "close names: " + ", ".join(repr(n) for n in close)
    top = [n for n in names if "." not in n][:8]
    return "its top-level submodules are " + ", ".join(repr(n) for n in top) + " (see model.named_modules())"


def _parent_hint(canonical: str, index: LayerIndex) -> str:
    """The nearest enclosing module that can be asked for instead, if any."""
    parts = canonical.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        try:
            index.resolve([parent])
        except UsageError:
            continue
        return f", e.g. its parent {parent!r}"
    return ""


__all__ = ["LayerIndex"]
