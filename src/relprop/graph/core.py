"""Tracing a model into an explicit relevance graph.

The model is traced with ``torch.fx`` (standard ``torch.nn`` layers are leaves; user modules and
functional calls are traced through), and every node of the fx graph becomes one *step* of a kind
that says how relevance crosses it:

``linear``
    Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d, optionally with the BatchNorm that directly follows
    folded into it, and stand-alone BatchNorm (an elementwise affine map). Rules apply here.
``avgpool``
    Parameter-free linear maps with non-negative weights: average pooling, adaptive average pooling,
    ``mean``. Rules apply here too (the ``Norm`` rule by default).
``add``
    ``x + y`` / ``x - y`` of two tensors (residual connections). Split by an add rule.
``activation``
    Elementwise non-linearities (ReLU, LeakyReLU, ELU, GELU, SiLU, Sigmoid, Tanh, ...).
``pass``
    Elementwise maps that relevance crosses unchanged: dropout, identity, scaling by a constant.
``maxpool``
    Max pooling: relevance goes to the winner of each window (indices kept from the forward pass).
``route``
    Maps that move values around without mixing them: adaptive max pooling, flatten, view, reshape, permute,
    concatenation, indexing. Relevance follows the gradient of the map, which routes it to where the
    value came from (max pooling: to the winner; concatenation: split by slices).

The user's model is never modified: the graph keeps references to the user's own submodules and
calls them, and BatchNorm folding is computed functionally (``effective_params``) from the live
parameters, so it stays correct and differentiable while the model trains.
"""

from __future__ import annotations

import operator
import os
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import TracingError, UnsupportedLayerError

LINEAR_MODULES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
BATCHNORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
AVGPOOL_MODULES = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
ROUTE_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Unflatten,
)
PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


# Activation modules and the out-of-place call we make for them (the user's module may be in-place,
# which would overwrite a pre-activation we keep for the backward pass).
ACTIVATION_MODULES: dict[type[nn.Module], Callable[[nn.Module, Tensor], Tensor]] = {
    nn.ReLU: lambda m, x: torch.relu(x),
    nn.ReLU6: lambda m, x: F.relu6(x),
    nn.LeakyReLU: lambda m, x: F.leaky_relu(x, m.negative_slope),
    nn.ELU: lambda m, x: F.elu(x, m.alpha),
    nn.CELU: lambda m, x: F.celu(x, m.alpha),
    nn.SELU: lambda m, x: F.selu(x),
    nn.GELU: lambda m, x: F.gelu(x, approximate=m.approximate),
    nn.SiLU: lambda m, x: F.silu(x),
    nn.Mish: lambda m, x: F.mish(x),
    nn.Sigmoid: lambda m, x: torch.sigmoid(x),
    nn.Tanh: lambda m, x: torch.tanh(x),
    nn.Softplus: lambda m, x: F.softplus(x, m.beta, m.threshold),
    nn.Hardtanh: lambda m, x: F.hardtanh(x, m.min_val, m.max_val),
    nn.Hardswish: lambda m, x: F.hardswish(x),
    nn.Hardsigmoid: lambda m, x: F.hardsigmoid(x),
    nn.PReLU: lambda m, x: m(x),
}

ACTIVATION_FUNCTIONS: set[Any] = {
    F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu,
    F.silu, F.mish, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus, F.hardtanh,
    F.hardswish, F.hardsigmoid,
}  # fmt: skip
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}
# Functions that only move values around; relevance follows their gradient.
ROUTE_FUNCTIONS: set[Any] = {
    torch.flatten, torch.reshape, torch.cat, torch.concat, torch.stack, torch.permute, torch.transpose,
    torch.squeeze, torch.unsqueeze, torch.chunk, torch.split, operator.getitem, F.max_pool1d,
    F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    torch.movedim, F.pad,
}  # fmt: skip
ROUTE_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
    "chunk", "split", "view_as", "reshape_as", "expand", "expand_as", "movedim", "t",
}  # fmt: skip
MAXPOOL_FUNCTIONS: dict[Any, Any] = {
    F.max_pool1d: F.max_pool1d, F.max_pool2d: F.max_pool2d, F.max_pool3d: F.max_pool3d,
    torch.max_pool1d: F.max_pool1d, torch.max_pool2d: F.max_pool2d, torch.max_pool3d: F.max_pool3d,
}  # fmt: skip
AVGPOOL_FUNCTIONS: set[Any] = {
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, torch.mean,
}  # fmt: skip
AVGPOOL_METHODS = {"mean"}
PASS_FUNCTIONS: set[Any] = {
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, operator.neg, torch.neg, operator.pos,
}  # fmt: skip
PASS_METHODS = {"clone", "float", "double", "half", "bfloat16", "to", "type_as"}
ADD_FUNCTIONS: set[Any] = {operator.add, operator.iadd, torch.add}
SUB_FUNCTIONS: set[Any] = {operator.sub, operator.isub, torch.sub}
SCALE_FUNCTIONS: set[Any] = {operator.mul, operator.imul, torch.mul, operator.truediv, torch.div}
META_METHODS = {"size", "dim", "numel"}
META_FUNCTIONS: set[Any] = {getattr, len}
INPLACE_METHODS = {"relu_": "relu", "sigmoid_": "sigmoid", "tanh_": "tanh", "add_": "add"}


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


@dataclass(eq=False)
class Step:
    """One node of the relevance graph.

    Attributes:
        node: the fx node whose value is this step's output.
        kind: ``input``, ``linear``, ``avgpool``, ``add``, ``activation``, ``pass``, ``maxpool``, ``route``,
            ``meta`` (non-tensor values such as sizes), ``const`` or ``output``.
        name: module path (``layer1.0.conv1``) or the function's name for functional calls.
        module: the user's module for module calls (the Linear/Conv for folded BatchNorm).
        batchnorm: the BatchNorm folded into this linear step, if any.
        inputs: steps whose tensor values this step reads (relevance flows back to them).
        call: computes this step's output from the fx environment.
        first: this is the first weighted (Linear/Conv) layer in execution order.
        last: this is the last weighted (Linear/Conv) layer in execution order (usually the classifier).
        signs: for ``add`` steps, +1/-1 per input (``x - y`` gives (+1, -1)).
        pre: for steps with a folded BatchNorm, the fx node of the Linear/Conv output.
    """

    node: fx.Node
    kind: str
    name: str
    module: nn.Module | None = None
    batchnorm: nn.Module | None = None
    inputs: list[Step] = field(default_factory=list)
    call: Callable[[dict[fx.Node, Any]], Any] | None = None
    first: bool = False
    last: bool = False
    signs: tuple[float, ...] = ()
    pre: fx.Node | None = None
    custom: bool = False
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        mod = f" {type(self.module).__name__}" if self.module is not None else ""
        bn = "+BN" if self.batchnorm is not None else ""
        return f"Step({self.kind}: {self.name}{mod}{bn})"


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
    skip = (os.path.dirname(torch.__file__), os.path.dirname(__file__), os.path.dirname(fx.__file__))
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


def _module_path(root: nn.Module, target: str) -> nn.Module:
    return root.get_submodule(target)


class RelevanceGraph:
    """The explicit graph of ``model`` with a kind per step.

    Args:
        model: any ``nn.Module`` whose forward takes one tensor and returns logits.
        leaf_modules: extra module classes treated as one step of the given kind
            (``"pass"``, ``"route"`` or ``"activation"``) instead of being traced through.
    """

    def __init__(self, model: nn.Module, leaf_modules: Mapping[type, str] | None = None) -> None:
        self.model = model
        self.leaf_modules = dict(leaf_modules or {})
        for cls, kind in self.leaf_modules.items():
            if kind not in ("pass", "route", "activation"):
                raise ValueError(
                    f"leaf_modules[{cls.__name__}] = {kind!r}: the kind must be 'pass', 'route' or 'activation'"
                )
        self.fx_graph = trace(model, tuple(self.leaf_modules))
        self.steps: list[Step] = []
        self.by_node: dict[fx.Node, Step] = {}
        self.input: Step
        self.output: Step
        self._build()

    # -- construction ---------------------------------------------------------------------------
    def _build(self) -> None:
        placeholders = [n for n in self.fx_graph.nodes if n.op == "placeholder"]
        required = [n for n in placeholders if not n.args]
        if len(required) != 1:
            names = ", ".join(n.target for n in required)
            raise TracingError(
                f"{type(self.model).__name__}.forward takes {len(required)} required tensor arguments "
                f"({names}); relprop explains models with exactly one input tensor. Wrap the model in a "
                "module whose forward(x) supplies the other arguments."
            )
        users: dict[fx.Node, list[fx.Node]] = {n: list(n.users) for n in self.fx_graph.nodes}
        self._check_inplace(users)
        folded: set[fx.Node] = set()
        seen_first = False
        for node in self.fx_graph.nodes:
            if node in folded:
                continue
            step = self._classify(node, users, folded)
            if step.kind == "linear" and isinstance(step.module, LINEAR_MODULES) and not seen_first:
                step.first = True
                seen_first = True
            step.inputs = [self.by_node[a] for a in self._tensor_args(step)]
            self.steps.append(step)
            self.by_node[step.node] = step
            if step.pre is not None:
                self.by_node[step.pre] = step
        weighted = [s for s in self.steps if s.kind == "linear" and isinstance(s.module, LINEAR_MODULES)]
        if weighted:
            weighted[-1].last = True
        outputs = [s for s in self.steps if s.kind == "output"]
        self.output = outputs[0]
        self.input = next(s for s in self.steps if s.kind == "input")

    def _check_inplace(self, users: dict[fx.Node, list[fx.Node]]) -> None:
        """relprop runs in-place operations out of place (it keeps pre-activations); that changes the model
        only if the overwritten tensor is read again afterwards, which is refused here."""
        order = {n: i for i, n in enumerate(self.fx_graph.nodes)}
        for node in self.fx_graph.nodes:
            inplace = False
            if node.op == "call_module":
                inplace = bool(getattr(_module_path(self.model, str(node.target)), "inplace", False))
            elif node.op == "call_function":
                inplace = bool(node.kwargs.get("inplace")) or node.target in (torch.relu_, F.relu_)
            elif node.op == "call_method":
                inplace = str(node.target).endswith("_") and not str(node.target).startswith("_")
            if not inplace or not node.args or not isinstance(node.args[0], fx.Node):
                continue
            src = node.args[0]
            later = [u for u in users[src] if u is not node and order[u] > order[node]]
            if later:
                raise UnsupportedLayerError(
                    f"`{node.target}`{_source_of(node)} modifies its input in place, and that tensor "
                    f"(`{src.name}`) is read again afterwards by `{later[0].name}`; relprop evaluates in-place "
                    "operations out of place and would change the model. Use the out-of-place form "
                    "(e.g. torch.relu(x), nn.ReLU(inplace=False))."
                )

    def _tensor_args(self, step: Step) -> list[fx.Node]:
        node = step.pre if step.pre is not None else step.node
        if step.kind in ("input", "const", "meta"):
            return []
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
        out = []
        for n in found:
            s = self.by_node.get(n)
            if s is not None and s.kind not in ("const", "meta") and n not in out:
                out.append(n)
        return out

    def _classify(self, node: fx.Node, users: dict[fx.Node, list[fx.Node]], folded: set[fx.Node]) -> Step:
        op = node.op
        if op == "placeholder":
            if node.args:  # an optional argument with a default value
                default = node.args[0]
                return Step(node, "const", str(node.target), call=lambda env: default)
            return Step(node, "input", str(node.target))
        if op == "get_attr":
            target = str(node.target)
            return Step(node, "const", target, call=lambda env: _fetch_attr(self.model, target))
        if op == "output":
            return Step(node, "output", "output", call=lambda env: env[node.args[0]])
        if op == "call_module":
            return self._classify_module(node, users, folded)
        return self._classify_function(node)

    def _classify_module(self, node: fx.Node, users: dict[fx.Node, list[fx.Node]], folded: set[fx.Node]) -> Step:
        name = str(node.target)
        module = _module_path(self.model, name)
        for cls, kind in self.leaf_modules.items():
            if isinstance(module, cls):
                return Step(node, kind, name, module, call=_module_call(node, module), custom=True)
        if isinstance(module, LINEAR_MODULES):
            padding_mode = getattr(module, "padding_mode", "zeros")
            if padding_mode != "zeros":
                raise UnsupportedLayerError(
                    f"module '{name}' ({type(module).__name__}) uses padding_mode={padding_mode!r}; relprop's "
                    "rules support zero padding only. Pad explicitly with F.pad before the convolution."
                )
            if isinstance(getattr(module, "padding", 0), str) and module.padding == "same":
                ks = module.kernel_size
                if any(((k - 1) * d) % 2 for k, d in zip(ks, module.dilation)):
                    raise UnsupportedLayerError(
                        f"module '{name}' ({type(module).__name__}) uses padding='same' with an even kernel "
                        "(asymmetric padding); use explicit integer padding."
                    )
            step = Step(node, "linear", name, module, call=_module_call(node, module))
            bn_node = self._foldable_batchnorm(node, users)
            if bn_node is not None:
                bn = _module_path(self.model, str(bn_node.target))
                folded.add(bn_node)
                bn_call = _module_call(bn_node, bn)
                conv_call = step.call
                assert conv_call is not None

                def fused(env: dict[fx.Node, Any], _c=conv_call, _b=bn_call, _n=node) -> Any:
                    env[_n] = _c(env)
                    return _b(env)

                return Step(
                    bn_node, "linear", name, module, batchnorm=bn, call=fused, pre=node,
                )  # fmt: skip
            return step
        if isinstance(module, BATCHNORM_MODULES):
            return Step(node, "linear", name, module, call=_module_call(node, module))
        if isinstance(module, AVGPOOL_MODULES):
            return Step(node, "avgpool", name, module, call=_module_call(node, module))
        if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) and not module.return_indices:
            return Step(node, "maxpool", name, module, call=_maxpool_module_call(node, module))
        if isinstance(module, ROUTE_MODULES):
            return Step(node, "route", name, module, call=_module_call(node, module))
        if isinstance(module, PASS_MODULES):
            return Step(node, "pass", name, module, call=_module_call(node, module))
        for cls, fn in ACTIVATION_MODULES.items():
            if type(module) is cls or isinstance(module, cls):
                arg = node.args[0]

                def act(env: dict[fx.Node, Any], _f=fn, _m=module, _a=arg) -> Any:
                    return _f(_m, env[_a])

                return Step(node, "activation", name, module, call=act)
        hint = ""
        if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
            hint = " LRP explains logits: explain the model without its final softmax."
        raise UnsupportedLayerError(
            f"module '{name}' of type {type(module).__name__} has no relevance rule.{hint} If relevance should "
            f"cross it unchanged, pass leaf_modules={{{type(module).__name__}: 'pass'}} (or 'route' to follow "
            "its gradient, 'activation' for an elementwise non-linearity) to relprop.explain/Explainer; "
            "for a weighted layer, express it with nn.Linear/nn.Conv modules."
        )

    def _foldable_batchnorm(self, node: fx.Node, users: dict[fx.Node, list[fx.Node]]) -> fx.Node | None:
        us = users[node]
        if len(us) != 1 or us[0].op != "call_module":
            return None
        bn_node = us[0]
        bn = _module_path(self.model, str(bn_node.target))
        if not isinstance(bn, BATCHNORM_MODULES) or bn_node.args[0] is not node:
            return None
        return bn_node

    def _classify_function(self, node: fx.Node) -> Step:
        target = node.target
        is_method = node.op == "call_method"
        name = str(target) if is_method else _describe(target)
        kwargs = dict(node.kwargs)
        if kwargs.get("inplace"):
            kwargs["inplace"] = False
        if is_method and target in INPLACE_METHODS:
            target = INPLACE_METHODS[str(target)]
        if target in (operator.iadd, operator.isub, operator.imul):
            target = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul}[target]
        call = _function_call(node, target, is_method, kwargs)
        arg_nodes: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: arg_nodes.append(n) or n)
        if not any(self._is_tensor(a) for a in arg_nodes) or (not is_method and target in META_FUNCTIONS):
            return Step(node, "meta", name, call=call)  # sizes, shapes, constants
        tensor_args = [a for a in node.args if isinstance(a, fx.Node) and self._is_tensor(a)]

        if is_method:
            if target in META_METHODS:
                return Step(node, "meta", name, call=call)
            if target in ACTIVATION_METHODS or target == "relu":
                return Step(node, "activation", name, call=call)
            if target in ROUTE_METHODS:
                return Step(node, "route", name, call=call)
            if target in AVGPOOL_METHODS:
                return Step(node, "avgpool", name, call=call)
            if target in PASS_METHODS:
                return Step(node, "pass", name, call=call)
            if target in ("add", "sub") and len(tensor_args) == 2:
                sign = 1.0 if target == "add" else -1.0
                if "alpha" in node.kwargs:
                    raise UnsupportedLayerError(f"`{name}` with alpha{_source_of(node)} is not supported")
                return Step(node, "add", name, call=call, signs=(1.0, sign))
            if target in ("add", "sub", "mul", "div") and len(tensor_args) == 1:
                return Step(node, "pass", name, call=call)
        else:
            if target in ACTIVATION_FUNCTIONS:
                return Step(node, "activation", name, call=call)
            if target in MAXPOOL_FUNCTIONS and not node.kwargs.get("return_indices") and len(node.args) < 7:
                pool = MAXPOOL_FUNCTIONS[target]
                return Step(
                    node, "maxpool", name, call=_function_call(node, pool, False, {**kwargs, "return_indices": True})
                )
            if target in ROUTE_FUNCTIONS:
                return Step(node, "route", name, call=call)
            if target in AVGPOOL_FUNCTIONS:
                return Step(node, "avgpool", name, call=call)
            if target in PASS_FUNCTIONS:
                return Step(node, "pass", name, call=call)
            if target in ADD_FUNCTIONS | SUB_FUNCTIONS:
                if len(tensor_args) == 2:
                    if "alpha" in node.kwargs:
                        raise UnsupportedLayerError(f"`{name}` with alpha{_source_of(node)} is not supported")
                    return Step(node, "add", name, call=call, signs=(1.0, -1.0 if target in SUB_FUNCTIONS else 1.0))
                if len(tensor_args) == 1:
                    return Step(node, "pass", name, call=call)
                return Step(node, "meta", name, call=call)
            if target in SCALE_FUNCTIONS and len(tensor_args) <= 1:
                if (
                    len(tensor_args) == 1
                    and target in (operator.truediv, torch.div)
                    and node.args[0] is not tensor_args[0]
                ):
                    raise UnsupportedLayerError(
                        f"`{name}` divides a constant by a tensor{_source_of(node)}; relprop has no rule for it"
                    )
                return Step(node, "pass" if tensor_args else "meta", name, call=call)
            if not tensor_args and not any(isinstance(a, fx.Node) for a in node.args):
                return Step(node, "meta", name, call=call)
            if all(not self._is_tensor(a) for a in node.args if isinstance(a, fx.Node)) and tensor_args == []:
                return Step(node, "meta", name, call=call)
        raise UnsupportedLayerError(
            f"the call `{name}`{_source_of(node)} has no relevance rule. relprop supports Linear/Conv layers, "
            "BatchNorm, pooling, elementwise activations, x + y, torch.cat and reshaping. Move the computation "
            "into a submodule and pass leaf_modules={YourModule: 'pass'|'route'|'activation'}, or rewrite it "
            "with supported operations."
        )

    def _is_tensor(self, n: fx.Node) -> bool:
        s = self.by_node.get(n)
        return (
            s is not None
            and s.kind not in ("meta",)
            and not (s.kind == "const" and not isinstance(s.call and s.call({}), Tensor))
        )

    # -- helpers for users of the graph ----------------------------------------------------------
    @property
    def linear_steps(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "linear"]

    def __repr__(self) -> str:
        body = "\n  ".join(repr(s) for s in self.steps)
        return f"RelevanceGraph({type(self.model).__name__}:\n  {body}\n)"


def _fetch_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _module_call(node: fx.Node, module: nn.Module) -> Callable[[dict[fx.Node, Any]], Any]:
    args, kwargs = node.args, node.kwargs

    def call(env: dict[fx.Node, Any]) -> Any:
        a = fx.node.map_arg(args, lambda n: env[n])
        k = fx.node.map_arg(kwargs, lambda n: env[n])
        return module(*a, **k)

    return call


def _maxpool_module_call(node: fx.Node, m: nn.Module) -> Callable[[dict[fx.Node, Any]], Any]:
    """Max pooling that also returns the winners' indices (kept for the relevance pass)."""
    fn = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}[type(m)]
    arg = node.args[0]

    def call(env: dict[fx.Node, Any]) -> Any:
        return fn(env[arg], m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)

    return call


def _function_call(
    node: fx.Node, target: Any, is_method: bool, kwargs: dict[str, Any]
) -> Callable[[dict[fx.Node, Any]], Any]:
    args = node.args

    def call(env: dict[fx.Node, Any]) -> Any:
        a = fx.node.map_arg(args, lambda n: env[n])
        k = fx.node.map_arg(kwargs, lambda n: env[n])
        if is_method:
            return getattr(a[0], target)(*a[1:], **k)
        return target(*a, **k)

    return call


# -- the linear map of a ``linear`` step, with BatchNorm folded -------------------------------------


class LinearMap:
    """The affine map z = W a + b of a linear step, and its transpose, with BatchNorm folded.

    ``forward(x, weight, bias)`` evaluates the step's map with other parameters (rules modify
    them); ``transpose(s, weight, like)`` computes Wᵀ s, the input-gradient of the map.
    For parameter-free maps (average pooling) ``weight`` is ``None`` and the map is the step's
    own function; its weights are non-negative.
    """

    def __init__(self, step: Step, a: Tensor, z: Tensor, env: dict[fx.Node, Any]) -> None:
        self.step = step
        module = step.module
        self.module = module
        self._pool_call = None
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        #: the input is known to be non-negative (True), known not to be (False), or unknown (None)
        self.input_nonneg: bool | None = None
        #: no relevance can arrive at negative outputs (the step feeds only ReLUs)
        self.negative_outputs_silent = False
        #: relevance at the output vanishes wherever the output is zero (all consumers multiply by it)
        self.output_proportional = False
        if step.kind == "avgpool":
            self._pool_call = step.call
            self._env = env
            self._in_node = step.inputs[0].node
            self._version: tuple[Any, ...] | None = None
            return
        assert module is not None
        bn = module if isinstance(module, BATCHNORM_MODULES) else step.batchnorm
        tensors = [t for m in (module, bn) if m is not None for t in (*m.parameters(), *m.buffers())]
        batch_stats = bn is not None and (bn.training or bn.running_mean is None)
        self._version = None if batch_stats else tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        if isinstance(module, BATCHNORM_MODULES):
            self.weight, self.bias = self.modified("affine", lambda: _bn_affine(module, a))
        elif step.batchnorm is not None:
            bn_mod = step.batchnorm
            pre = env.get(step.pre) if step.pre is not None else None
            w0, b0 = module.weight, module.bias

            def fold() -> tuple[Tensor, Tensor]:
                scale, shift = _bn_affine(bn_mod, pre)
                return _fold(module, w0, b0, scale, shift)

            self.weight, self.bias = self.modified("fold", fold)
        else:
            self.weight, self.bias = module.weight, module.bias

    def modified(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()``, cached across calls while parameters are unchanged and no graph is recorded."""
        if self._version is None or torch.is_grad_enabled():
            return make()
        hit = self.step.cache.get(key)
        if hit is not None and hit[0] == self._version:
            return hit[1]
        value = make()
        self.step.cache[key] = (self._version, value)
        return value

    # z = W x + b
    def forward(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        m = self.module
        if self._pool_call is not None:
            env = dict(self._env)
            env[self._in_node] = x
            return self._pool_call(env)
        if isinstance(m, BATCHNORM_MODULES):
            assert weight is not None
            shape = (1, -1) + (1,) * (x.dim() - 2)
            z = x * weight.view(shape)
            return z + bias.view(shape) if bias is not None else z
        if isinstance(m, nn.Linear):
            return F.linear(x, weight, bias)
        assert isinstance(m, (nn.modules.conv._ConvNd,))
        nd = x.dim() - 2
        if m.transposed:
            fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
            return fn(x, weight, bias, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
        return fn(x, weight, bias, m.stride, m.padding, m.dilation, m.groups)

    # Wᵀ s, shaped like the input ``like``
    def transpose(self, s: Tensor, weight: Tensor | None, like: Tensor) -> Tensor:
        m = self.module
        if self._pool_call is not None:
            with torch.enable_grad():
                x = like.detach().requires_grad_(True)
                z = self.forward(x, None, None)
                (g,) = torch.autograd.grad(z, x, s, create_graph=torch.is_grad_enabled() and s.requires_grad)
            if not s.requires_grad:
                g = g.detach()
            return g
        if isinstance(m, BATCHNORM_MODULES):
            assert weight is not None
            return s * weight.view((1, -1) + (1,) * (s.dim() - 2))
        if isinstance(m, nn.Linear):
            assert weight is not None
            return s.matmul(weight)
        assert isinstance(m, nn.modules.conv._ConvNd) and weight is not None
        nd = like.dim() - 2
        padding = m.padding
        if isinstance(padding, str):
            padding = (
                tuple(0 for _ in range(nd))
                if padding == "valid"
                else tuple((k - 1) * d // 2 for k, d in zip(m.kernel_size, m.dilation))
            )
        out_pad = list(m.output_padding) if m.transposed else [0] * nd
        if m.transposed:
            # input-gradient of a transposed convolution is the plain convolution
            fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
            return fn(s, weight, None, m.stride, padding, m.dilation, m.groups)
        return torch.ops.aten.convolution_backward(
            s, like, weight, None, list(m.stride), list(padding), list(m.dilation), False, out_pad,
            m.groups, [True, False, False],
        )[0]  # fmt: skip


def _bn_affine(bn: nn.Module, pre: Tensor | None) -> tuple[Tensor, Tensor]:
    """Scale and shift of a BatchNorm as an elementwise affine map, statistics detached.

    In training mode (or without running statistics) the statistics of the current batch are used,
    as BatchNorm itself does, but detached: one sample's relevance does not depend on the others'.
    """
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
    use_batch = bn.training or bn.running_mean is None
    if use_batch:
        assert pre is not None
        dims = [0] + list(range(2, pre.dim()))
        p = pre.detach()
        mean = p.mean(dims, keepdim=True)
        var = (p - mean).square().mean(dims)  # two passes: torch's var over (0, 2, 3) is ~7x slower on CPU
        mean = mean.flatten()
    else:
        mean, var = bn.running_mean, bn.running_var
    inv = torch.rsqrt(var + bn.eps)
    scale = bn.weight * inv if bn.weight is not None else inv
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _fold(module: nn.Module, w: Tensor, b: Tensor | None, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Fold an elementwise affine map (scale, shift) that follows ``module`` into its weights."""
    if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
        g = module.groups
        cin = w.shape[0]
        wg = w.reshape(g, cin // g, w.shape[1], *w.shape[2:])
        sg = scale.reshape(g, 1, -1, *([1] * (w.dim() - 2)))
        w2 = (wg * sg).reshape(w.shape)
    else:
        w2 = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    b2 = shift if b is None else b * scale + shift
    return w2, b2


__all__ = ["RelevanceGraph", "Step", "LinearMap", "trace"]
