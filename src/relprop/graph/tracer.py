"""Tracing a model with ``torch.fx`` (standard layers are leaves; user modules and functional calls are traced
through), with errors that name the user's line that broke tracing.

Shape-specialised tracing: a forward that branches in Python on tensor *sizes* (``if H % 2:``, ``math.ceil(W /
s)``, ``range(H // w)``, timm's dynamic "same" padding) cannot be traced symbolically. Given an example input,
the tracer computes such a value when Python needs it (``bool``, ``int``, ``math.ceil``, comparisons in ``if``,
``range``) by evaluating the nodes recorded so far on the example (zeros of the input's shape), and the graph is
then valid for that input shape only (:func:`trace` returns the shape). Only sizes and Python scalars computed
from sizes are concretised: a branch on tensor *values* (``if x.sum() > 0``) is still refused, since no single
trace would be right for every input.
"""

from __future__ import annotations

import builtins
import inspect
import math
import operator
import os
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import InputError, TracingError
from . import decompose
from .batchnorm import running_stats_kept


def _describe(target: Any) -> str:
    return getattr(target, "__name__", None) or repr(target)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # relprop itself


def _source_of(node: fx.Node) -> str:
    """The innermost frame of the node's recorded stack trace that is the model's own code (neither torch nor
    relprop: the user's file, or torchvision's / timm's model file), or ''."""
    torch_dir = os.path.dirname(torch.__file__) + os.sep  # (with the separator: torchvision's files are kept)
    lines = (node.stack_trace or "").strip().splitlines()
    found = ""
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith("File ") and torch_dir not in text and _PACKAGE_DIR + os.sep not in text:
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            found = f" (at {text}: `{code}`)" if code and not code.startswith("File ") else f" (at {text})"
    return found


def module_of(node: fx.Node) -> tuple[str, str] | None:
    """The innermost module (path, class name) whose forward made ``node``, from fx's module stack."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    return str(path), getattr(cls, "__name__", str(cls).rsplit(".", 1)[-1].rstrip("'>"))


class SizeDependentTracingError(TracingError):
    """The forward branches on input sizes: it can be traced only for one input shape (an example input).
    ``where`` is the model's line that needed a size."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where


class _NeedsShape(fx.proxy.TraceError):
    """Raised inside tracing when a size is needed and no example input was given."""


class _EvaluationFailed(Exception):
    """The model failed on the example input while a size was computed."""


#: methods and attributes whose value is the tensor's metadata (sizes), not its data
_SIZE_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement"})
_SIZE_ATTRIBUTES = frozenset({"shape", "ndim", "dtype", "device", "is_cuda"})
#: pure functions on Python scalars: their result is size-derived when every node argument is
_SCALAR_MODULES = (operator, math, builtins)
#: operations whose output's *shape* depends on the data of their input
_DATA_SHAPED = frozenset({
    "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "repeat_interleave",
    "item", "tolist",
})  # fmt: skip
_DATA_REFUSAL = "symbolically traced variables cannot be used as inputs to control flow"


class _Proxy(fx.Proxy):
    """A proxy whose Python scalar conversions (``int``, ``float``, ``math.ceil``, ``range``, ``len``) ask the
    tracer for the value: a size-derived value is computed from the example input, anything else is refused."""

    tracer: _Tracer

    def __getattr__(self, k: str) -> Any:
        return _Attribute(self, k)

    def __int__(self) -> int:
        return int(self.tracer.concrete(self, "int()"))

    def __index__(self) -> int:
        return operator.index(self.tracer.concrete(self, "an index"))

    def __float__(self) -> float:
        return float(self.tracer.concrete(self, "float()"))

    def __ceil__(self) -> int:
        return math.ceil(self.tracer.concrete(self, "math.ceil"))

    def __floor__(self) -> int:
        return math.floor(self.tracer.concrete(self, "math.floor"))

    def __trunc__(self) -> int:
        return math.trunc(self.tracer.concrete(self, "math.trunc"))

    def __round__(self, ndigits: int | None = None) -> Any:
        return round(self.tracer.concrete(self, "round()"), ndigits)

    def __len__(self) -> int:
        if not self.tracer.size_derived(self.node):
            return super().__len__()
        return len(self.tracer.concrete(self, "len()"))


class _Attribute(fx.proxy.Attribute, _Proxy):
    pass


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...], example: torch.Tensor | None = None) -> None:
        super().__init__()
        self.record_stack_traces = True
        self._leaf_types = leaf_types
        self._example = example
        #: nodes whose value is computed from tensor sizes only (sizes, dims, arithmetic on them)
        self._sized: set[fx.Node] = set()
        #: nodes whose shape depends on tensor data (nonzero, unique, ...): their sizes are data
        self._data_shaped: set[fx.Node] = set()
        self._values: dict[fx.Node, Any] = {}
        #: while nodes are evaluated, module calls and attributes are the real ones (fx patches them while tracing)
        self._evaluating = False
        #: whether a size was concretised: the graph holds for the example's shape only
        self.specialised = False

    # -- which values are sizes ------------------------------------------------------------------
    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def create_node(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **kw: Any) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, *rest, **kw)
        inputs = node.all_input_nodes
        name = target if isinstance(target, str) else getattr(target, "__name__", "")
        if kind in ("call_method", "call_function") and (
            name in _DATA_SHAPED or any(n in self._data_shaped for n in inputs)
        ):
            self._data_shaped.add(node)
        elif kind == "call_method" and target in _SIZE_METHODS:
            self._sized.add(node)
        elif kind == "call_function" and target is getattr and len(args) == 2 and args[1] in _SIZE_ATTRIBUTES:
            self._sized.add(node)
        elif inputs and all(n in self._sized for n in inputs) and (
            kind == "call_method" or (kind == "call_function" and _is_scalar_function(target))
        ):  # methods of a size (Size.numel) and scalar arithmetic on sizes
            self._sized.add(node)
        return node

    def size_derived(self, node: fx.Node) -> bool:
        return node in self._sized

    def concrete(self, obj: fx.Proxy, why: str) -> Any:
        """The value of a size-derived proxy on the example input (the graph becomes shape-specialised)."""
        if not self.size_derived(obj.node):
            raise fx.proxy.TraceError(_DATA_REFUSAL)
        if self._example is None:
            raise _NeedsShape(
                f"{why} of a tensor size is needed here ({obj.node.name}): the forward branches on input sizes"
            )
        self.specialised = True
        return self._evaluate(obj.node)

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(self.concrete(obj, "the truth value"))

    def iter(self, obj: fx.Proxy) -> Any:
        if not self.size_derived(obj.node):
            return super().iter(obj)
        value = self.concrete(obj, "iteration")
        return iter([operator.getitem(obj, i) for i in range(len(value))])

    # -- evaluation on the example input --------------------------------------------------------
    def _evaluate(self, node: fx.Node) -> Any:
        """The node's value on the example input: the nodes it depends on, evaluated once each, in order."""
        needed: set[fx.Node] = set()
        todo = [node]
        while todo:
            n = todo.pop()
            if n in needed or n in self._values:
                continue
            needed.add(n)
            todo.extend(n.all_input_nodes)
        self._evaluating = True
        try:
            with torch.no_grad(), running_stats_kept(self.root):
                for n in self.graph.nodes:
                    if n in needed:
                        self._values[n] = self._run(n)
        finally:
            self._evaluating = False
        return self._values[node]

    def _run(self, node: fx.Node) -> Any:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), self._values.__getitem__)
        try:
            if node.op == "placeholder":
                return node.args[0] if node.args else self._example
            if node.op == "get_attr":
                value: Any = self.root
                for part in str(node.target).split("."):
                    value = getattr(value, part)
                return value
            if node.op == "call_module":
                return self.root.get_submodule(str(node.target)).forward(*args, **kwargs)  # hooks bypassed
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
            if node.op == "call_function":
                return node.target(*args, **kwargs)  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001 - re-raised with the node
            raise _EvaluationFailed(f"`{node.name}`{_source_of(node)}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError(f"cannot evaluate a {node.op} node")  # pragma: no cover - fx has no other kinds

    def drop_concretised(self) -> None:
        """Erase the size computations nothing reads any more (those Python branched on)."""
        for node in reversed(list(self.graph.nodes)):
            if node in self._sized and not node.users:
                self.graph.erase_node(node)
        self._values.clear()

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if self._evaluating:
            return m.forward(*args, **kwargs)  # (hooks bypassed)
        # Trace through a container's forward without running its hooks: user hooks would otherwise
        # receive fx proxies (and could store them, or fail on them).
        if isinstance(m, nn.MultiheadAttention) and not (self._leaf_types and isinstance(m, self._leaf_types)):
            def written_out(*a: Any, **k: Any) -> Any:
                return decompose.multihead_attention(self, m, *a, **k)

            return super().call_module(m, written_out, args, kwargs)
        if not self.is_leaf_module(m, self.path_of_module(m)):
            forward = m.forward
        return super().call_module(m, forward, args, kwargs)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, nn.MultiheadAttention) and not (self._leaf_types and isinstance(m, self._leaf_types)):
            return False
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **kw: Any) -> Any:
        if kind == "call_function" and target in decompose.FUNCTIONS:
            out = decompose.FUNCTIONS[target](*args, **kwargs)
            if out is not decompose.KEEP:
                return out
        return super().create_proxy(kind, target, args, kwargs, *rest, **kw)


def _user_frame(exc: BaseException) -> str:
    """The innermost frame of the traceback that lies outside torch and relprop."""
    skip = (os.path.dirname(torch.__file__) + os.sep, _PACKAGE_DIR + os.sep)
    found = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if not frame.filename.startswith(skip) and "<eval_with_key>" not in frame.filename:
            found = f"{frame.filename}:{frame.lineno} in {frame.name}: `{(frame.line or '').strip()}`"
    return found


def _defaults(model: nn.Module) -> dict[str, Any] | None:
    """The optional arguments of ``model.forward`` that are not tensors (None, flags): fixed at their defaults, so
    that branches on them (``if attn_mask is not None``) are resolved while tracing."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    fixed = {
        p.name: p.default for p in params[1:]
        if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and (p.default is None or isinstance(p.default, (bool, int, float, str)))
    }  # fmt: skip
    return fixed or None


def _is_scalar_function(target: Any) -> bool:
    return getattr(target, "__module__", None) in {m.__name__ for m in _SCALAR_MODULES} or any(
        getattr(m, getattr(target, "__name__", ""), None) is target for m in _SCALAR_MODULES
    )


def _module_state(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any], dict[str, Any]]]:
    """Each module's plain attributes, with shallow copies of its dict and list attributes: a forward that caches
    values in its module (timm's LeViT and TinyViT keep attention biases in a dict in eval mode) would otherwise
    keep the tracer's proxies there."""
    state = []
    for m in model.modules():
        plain = {k: v for k, v in vars(m).items() if not k.startswith("_")}
        copies = {
            k: dict(v) if isinstance(v, dict) else list(v) for k, v in plain.items() if isinstance(v, (dict, list))
        }
        state.append((m, plain, copies))
    return state


def _restore(state: list[tuple[nn.Module, dict[str, Any], dict[str, Any]]]) -> None:
    """Undo what tracing the forward changed in the modules' plain attributes (see :func:`_module_state`)."""
    for m, plain, copies in state:
        now = vars(m)
        for k in [k for k in now if not k.startswith("_") and k not in plain]:
            del now[k]
        for k, v in plain.items():
            now[k] = v
            if k in copies:
                if isinstance(v, dict):
                    v.clear()
                    v.update(copies[k])
                else:
                    v[:] = copies[k]


def trace(
    model: nn.Module, leaf_types: tuple[type, ...] = (), example_input: torch.Tensor | None = None
) -> tuple[fx.Graph, tuple[int, ...] | None]:
    """Trace ``model`` into an fx graph, with an error that names the call that broke tracing.

    Returns the graph and the input shape it is specialised to: None for a graph valid for every input shape,
    the shape of ``example_input`` when the forward branched on a size (computed from ``example_input``; its
    values are not read). Without ``example_input``, such a branch is a :class:`SizeDependentTracingError`."""
    example = None
    if example_input is not None:
        example = torch.zeros(example_input.shape, dtype=example_input.dtype, device=example_input.device)
    tracer = _Tracer(leaf_types, example)
    saved = _module_state(model)
    try:
        graph = tracer.trace(model, concrete_args=_defaults(model))
        if not tracer.specialised:
            return graph, None
        tracer.drop_concretised()
        return graph, tuple(example_input.shape) if example_input is not None else None
    except _NeedsShape as exc:
        where = _user_frame(exc) or "unknown location"
        raise SizeDependentTracingError(
            f"could not trace {type(model).__name__} for every input shape: {where} needs the value of a tensor "
            f"size ({exc}). relprop traces such a model for one input shape at a time: pass an example input "
            "(RelevanceGraph(model, example_input=x); an Explainer does this at its first call)",
            where,
        ) from exc
    except _EvaluationFailed as exc:
        shape = tuple(example_input.shape) if example_input is not None else ()
        raise InputError(
            f"{type(model).__name__} failed on an input of shape {shape} while tracing for that shape, at {exc}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        where = _user_frame(exc) or "unknown location"
        raise TracingError(
            f"could not trace {type(model).__name__} into a graph: {where} failed with "
            f"{type(exc).__name__}: {exc}. relprop traces forward() symbolically, so Python control flow "
            "must not depend on tensor values (no `if x.sum() > 0`, no loops over tensor data, no "
            ".item()/.tolist()). Make that branch static, or pass the enclosing submodule's class in "
            "`leaf_modules={MyBlock: 'pass'|'route'|'activation'}` so it is treated as one step."
        ) from exc
    finally:
        _restore(saved)

