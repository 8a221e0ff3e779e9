"""Tracing a model with ``torch.fx`` (standard layers are leaves; user modules and functional calls are traced
through), with errors that name the user's line that broke tracing."""

from __future__ import annotations

import inspect
import os
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import TracingError
from . import decompose


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
            found = f" (at {text}: `{code}`)"
    return found


def module_of(node: fx.Node) -> tuple[str, str] | None:
    """The innermost module (path, class name) whose forward made ``node``, from fx's module stack."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    return str(path), getattr(cls, "__name__", str(cls).rsplit(".", 1)[-1].rstrip("'>"))



class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...]) -> None:
        super().__init__()
        self.record_stack_traces = True
        self._leaf_types = leaf_types

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
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


def trace(model: nn.Module, leaf_types: tuple[type, ...] = ()) -> fx.Graph:
    """Trace ``model`` into an fx graph, with an error that names the call that broke tracing."""
    tracer = _Tracer(leaf_types)
    try:
        return tracer.trace(model, concrete_args=_defaults(model))
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        where = _user_frame(exc) or "unknown location"
        raise TracingError(
            f"could not trace {type(model).__name__} into a graph: {where} failed with "
            f"{type(exc).__name__}: {exc}. relprop traces forward() symbolically, so Python control flow "
            "must not depend on tensor values (no `if x.sum() > 0`, no loops over tensor data, no "
            ".item()/.tolist()). Make that branch static, or pass the enclosing submodule's class in "
            "`leaf_modules={MyBlock: 'pass'|'route'|'activation'}` so it is treated as one step."
        ) from exc

