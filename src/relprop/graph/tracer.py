"""Tracing a model with ``torch.fx`` (standard layers are leaves; user modules and functional calls are traced
through), with errors that name the user's line that broke tracing."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import TracingError


def _describe(target: Any) -> str:
    return getattr(target, "__name__", None) or repr(target)


def _source_of(node: fx.Node) -> str:
    """The innermost user-code frame (outside torch) of the node's recorded stack trace, or ''."""
    torch_dir = os.path.dirname(torch.__file__)
    lines = (node.stack_trace or "").strip().splitlines()
    found = ""
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith("File ") and torch_dir not in text:
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            found = f" (at {text}: `{code}`)"
    return found



class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...]) -> None:
        super().__init__()
        self.record_stack_traces = True
        self._leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        # Trace through a container's forward without running its hooks: user hooks would otherwise
        # receive fx proxies (and could store them, or fail on them).
        if not self.is_leaf_module(m, self.path_of_module(m)):
            forward = m.forward
        return super().call_module(m, forward, args, kwargs)


def _user_frame(exc: BaseException) -> str:
    """The innermost frame of the traceback that lies outside torch and relprop."""
    package = os.path.dirname(os.path.dirname(__file__))  # relprop itself
    skip = (os.path.dirname(torch.__file__), package, os.path.dirname(fx.__file__))
    found = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if not frame.filename.startswith(skip) and "<eval_with_key>" not in frame.filename:
            found = f"{frame.filename}:{frame.lineno} in {frame.name}: `{(frame.line or '').strip()}`"
    return found


def trace(model: nn.Module, leaf_types: tuple[type, ...] = ()) -> fx.Graph:
    """Trace ``model`` into an fx graph, with an error that names the call that broke tracing."""
    tracer = _Tracer(leaf_types)
    try:
        return tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        where = _user_frame(exc) or "unknown location"
        raise TracingError(
            f"could not trace {type(model).__name__} into a graph: {where} failed with "
            f"{type(exc).__name__}: {exc}. relprop traces forward() symbolically, so Python control flow "
            "must not depend on tensor values (no `if x.sum() > 0`, no loops over tensor data, no "
            ".item()/.tolist()). Make that branch static, or pass the enclosing submodule's class in "
            "`leaf_modules={MyBlock: 'pass'|'route'|'activation'}` so it is treated as one step."
        ) from exc

