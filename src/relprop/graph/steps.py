"""Steps and the relevance graph: every node of the traced fx graph becomes one :class:`Step` of a kind
(:mod:`relprop.graph.kinds`) with its static facts and, where autograd cannot recompute it, its own
vector-Jacobian product.

The user's model is never modified: the graph keeps references to the user's own submodules and calls them.
The graph keeps only a weak reference to the model itself.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.pooling import _MaxPoolNd

from ..errors import TracingError, UnsupportedLayerError
from . import decompose
from .batchnorm import batch_norm_with_stats
from .kinds import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    ACTIVATION_MODULES,
    ADD_FUNCTIONS,
    AVGPOOL_FUNCTIONS,
    AVGPOOL_METHODS,
    AVGPOOL_MODULES,
    BATCHNORM_MODULES,
    DROPOUT_FUNCTIONS,
    DROPOUT_MODULES,
    INPLACE_METHODS,
    LINEAR_FUNCTIONS,
    LINEAR_MODULES,
    MAXPOOL_FUNCTIONS,
    META_FUNCTIONS,
    META_METHODS,
    MOVES_VALUES,
    NO_FACTS,
    NORM_FUNCTIONS,
    NORM_MODULES,
    PASS_FUNCTIONS,
    PASS_METHODS,
    PASS_MODULES,
    PRODUCT_FUNCTIONS,
    PRODUCT_METHODS,
    ROUTE_FUNCTIONS,
    ROUTE_METHODS,
    ROUTE_MODULES,
    SOFTMAX_FUNCTIONS,
    SOFTMAX_METHODS,
    SUB_FUNCTIONS,
    StepFacts,
    activation_facts,
    pass_facts,
)
from .norms import NormSpec, function_norm, module_norm
from .tracer import _describe, _source_of, module_of, trace

Env = dict[Any, Any]
#: a step's own vector-Jacobian product: (step, env, R, create_graph) -> [(input node, R_in)]
VJP = Callable[["Step", Env, Any, bool], list[tuple[Any, Any]]]


@dataclass(eq=False)
class Step:
    """One node of the relevance graph.

    Attributes:
        node: the fx node whose value is this step's output.
        kind: one of :data:`relprop.graph.kinds.KINDS`.
        name: module path (``layer1.0.conv1``) or the function's name for functional calls.
        module: the user's module for module calls (the Linear/Conv for folded BatchNorm).
        batchnorm: the BatchNorm folded into this linear step, if any.
        inputs: steps whose tensor values this step reads (relevance flows back to them).
        call: computes this step's output from the fx environment.
        first: this is the first weighted (Linear/Conv) layer in execution order.
        last: this is the last weighted (Linear/Conv) layer in execution order (usually the classifier).
        signs: for ``add`` steps, +1/-1 per input (``x - y`` gives (+1, -1)).
        pre: for steps with a folded BatchNorm, the fx node of the Linear/Conv output.
        custom: a user module declared as a leaf (``leaf_modules``): nothing is known about it.
        facts: static facts of the operation (:class:`~relprop.graph.kinds.StepFacts`).
        operands, bilinear, gate: for ``product`` steps (see below); dim: for ``softmax``; norm: for ``normalise``.
        vjp: the step's own vector-Jacobian product where re-evaluating it under autograd would be wrong
            (dropout redraws its mask, max pooling keeps its winners); None: autograd of ``call``.
    """

    node: fx.Node
    kind: str
    name: str
    module: nn.Module | None = None
    batchnorm: nn.Module | None = None
    inputs: list[Step] = field(default_factory=list)
    call: Callable[[Env], Any] | None = None
    first: bool = False
    last: bool = False
    signs: tuple[float, ...] = ()
    pre: fx.Node | None = None
    custom: bool = False
    facts: StepFacts = NO_FACTS
    vjp: VJP | None = field(default=None, repr=False)
    #: ``product`` steps: the two factors (fx nodes, or constants), the bilinear map f(a, b) and which factor is the
    #: gate (a value in [0, 1], or a factor that does not depend on the input), None when neither is
    operands: tuple[Any, ...] = ()
    bilinear: Callable[[Tensor, Tensor], Tensor] | None = field(default=None, repr=False)
    gate: int | None = None
    #: ``softmax`` steps: the dimension
    dim: int | None = None
    #: ``normalise`` steps: the normalisation and its arguments
    norm: NormSpec | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        mod = f" {type(self.module).__name__}" if self.module is not None else ""
        bn = "+BN" if self.batchnorm is not None else ""
        return f"Step({self.kind}: {self.name}{mod}{bn})"

    @property
    def type_name(self) -> str:
        """The module's class name, or the function's name."""
        return type(self.module).__name__ if self.module is not None else self.name

    def backprop(self, env: Env, r: Any, create_graph: bool) -> list[tuple[Any, Any]]:
        """Wᵀ r for this step: its vector-Jacobian product, as (input node, value) pairs."""
        return (self.vjp or autograd_vjp)(self, env, r, create_graph)


def _module_path(root: nn.Module, target: str) -> nn.Module:
    return root.get_submodule(target)


def _nodes_in(arg: fx.node.Argument) -> list[fx.Node]:
    """The fx nodes inside ``arg`` (nested args/kwargs), in fx's traversal order."""
    found: list[fx.Node] = []

    def collect(n: fx.Node) -> fx.Node:
        found.append(n)
        return n

    fx.node.map_arg(arg, collect)
    return found


class RelevanceGraph:
    """The explicit graph of ``model`` with a kind per step.

    Args:
        model: any ``nn.Module`` whose forward takes one tensor and returns logits.
        leaf_modules: extra module classes treated as one step of the given kind
            (``"pass"``, ``"route"`` or ``"activation"``) instead of being traced through.
    """

    def __init__(
        self, model: nn.Module, leaf_modules: Mapping[type, str] | None = None, example_input: Tensor | None = None
    ) -> None:
        self._model = weakref.ref(model)
        self.leaf_modules = dict(leaf_modules or {})
        for cls, kind in self.leaf_modules.items():
            if kind not in ("pass", "route", "activation"):
                raise ValueError(
                    f"leaf_modules[{cls.__name__}] = {kind!r}: the kind must be 'pass', 'route' or 'activation'"
                )
        #: the input shape the graph holds for (its forward branched on sizes of that shape), None: every shape
        self.specialised_to: tuple[int, ...] | None
        self.fx_graph, self.specialised_to = trace(model, tuple(self.leaf_modules), example_input)
        _inline_namedtuples(self.fx_graph)
        if model._forward_hooks or model._forward_pre_hooks:
            _run_root_hooks(self.fx_graph, model)
        self.steps: list[Step] = []
        self.by_node: dict[fx.Node, Step] = {}
        self.input: Step
        self.output: Step
        #: steps whose output is known never to be negative (the input's sign is not known statically)
        self.nonneg: dict[Step, bool] = {}
        #: the steps that read each step's output
        self.users: dict[Step, list[Step]] = {}
        #: fx nodes whose value depends on the input (the others are constants: weights, masks, embeddings)
        self.live: set[fx.Node] = set()
        self._consts: dict[fx.Node, Any] = {}
        try:
            self._build()
        finally:
            self._consts.clear()

    @property
    def model(self) -> nn.Module:
        """The traced model (held weakly: the graph does not keep it alive)."""
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this relevance graph has been deleted")
        return model

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
        problems: list[tuple[str, str, str]] = []
        for node in self.fx_graph.nodes:
            if node in folded:
                continue
            try:
                step = self._classify(node, users, folded)
            except UnsupportedLayerError as exc:  # collect every unsupported step, then report them together
                problems.append((*_where(node), str(exc)))
                step = Step(node, "route", str(node.target))
            src = step.pre if step.pre is not None else node
            if step.kind not in ("const", "meta") and (
                step.kind == "input" or any(a in self.live for a in _nodes_in((src.args, src.kwargs)))
            ):
                self.live.update((src, step.node))
            if step.kind == "linear" and isinstance(step.module, LINEAR_MODULES) and not seen_first:
                step.first = True
                seen_first = True
            step.inputs = [self.by_node[a] for a in self._tensor_args(step)]
            self.steps.append(step)
            self.by_node[step.node] = step
            if step.pre is not None:
                self.by_node[step.pre] = step
        if problems:
            raise UnsupportedLayerError(_report(type(self.model).__name__, problems))
        weighted = [s for s in self.steps if s.kind == "linear" and isinstance(s.module, LINEAR_MODULES)]
        if weighted:
            weighted[-1].last = True
        outputs = [s for s in self.steps if s.kind == "output"]
        self.output = outputs[0]
        self.input = next(s for s in self.steps if s.kind == "input")
        self.users = {s: [] for s in self.steps}
        for s in self.steps:
            s.facts = _facts_of(s)
            if s.kind == "maxpool":
                s.vjp = _maxpool_vjp
            elif s.kind == "pass" and _is_dropout(s):
                s.vjp = _dropout_vjp
            elif s.kind == "route" and not s.custom:
                s.vjp = _route_vjp(s)
            elif s.kind == "product":
                s.gate = _gate_of(s, self.by_node)
            for i in s.inputs:
                self.users[i].append(s)
            if s.kind not in ("input",):
                ins = [self.nonneg.get(i) is True for i in s.inputs]
                self.nonneg[s] = s.facts.nonneg or (s.facts.keeps_nonneg and bool(ins) and all(ins))

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
        out = []
        for n in _nodes_in((node.args, node.kwargs)):
            if n in self.live and n not in out:
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
            if not any(a in self.live for a in _nodes_in((node.args, node.kwargs))):  # e.g. an MLP on a table
                return Step(node, "const", str(node.target), call=_module_call(node, self.model.get_submodule(
                    str(node.target))))  # fmt: skip
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
            if isinstance(module, _ConvNd) and module.padding == "same":
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
                bn_call = _batchnorm_call(bn_node, bn)
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
            return Step(node, "linear", name, module, call=_batchnorm_call(node, module))
        if isinstance(module, NORM_MODULES):
            return Step(node, "normalise", name, module, call=_module_call(node, module), norm=module_norm(module))
        if isinstance(module, nn.Softmax) and not self._feeds_output(node):
            dim = module.dim if module.dim is not None else -1
            return Step(node, "softmax", name, module, call=_module_call(node, module), dim=dim)
        if isinstance(module, AVGPOOL_MODULES) or (
            isinstance(module, nn.Upsample) and module.mode in _LINEAR_RESAMPLING
        ):  # parameter-free linear maps with non-negative weights
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
                    if not has_hooks(_m):
                        return _f(_m, env[_a])
                    x = call_pre_hooks(_m, env[_a])  # the activation runs out of place; its hooks still run
                    return call_forward_hooks(_m, x, _f(_m, x))

                return Step(node, "activation", name, module, call=act)
        hint = ""
        if isinstance(module, nn.RNNBase):  # returns (output, state): 'pass' cannot apply
            raise UnsupportedLayerError(
                f"module '{name}' of type {type(module).__name__} has no relevance rule: relprop has no rule for "
                f"recurrent layers. To let relevance follow its gradient, pass leaf_modules={{{type(module).__name__}: "
                "'route'} to relprop.explain/Explainer (a gradient, not an LRP rule, for that layer)"
            )
        if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
            hint = " LRP explains logits: explain the model without its final softmax."
        elif isinstance(module, nn.MultiheadAttention):
            hint = " (a MultiheadAttention declared in leaf_modules: remove it there, relprop writes it out)."
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
        arg_nodes = _nodes_in((node.args, node.kwargs))
        if isinstance(getattr(target, "__self__", None), _RootHooks):
            return Step(node, "pass", f"model {name}-hooks", call=call)  # the model's own hooks: values unchanged
        if (is_method and target in META_METHODS) or (not is_method and target in META_FUNCTIONS):
            return Step(node, "meta", name, call=call)  # sizes, shapes, dtypes
        live = [a for a in arg_nodes if a in self.live]
        if not live:
            return Step(node, "const", name, call=call)  # computed from parameters and constants only
        # tensors that carry relevance (live) and constant tensors (parameters, masks) among the arguments
        tensors = [a for a in node.args if isinstance(a, fx.Node) and (a in self.live or self._is_tensor(a))]
        n_live = sum(1 for a in node.args if isinstance(a, fx.Node) and a in self.live)
        key = ("method" if is_method else "function", target)
        maxpool = not is_method and target in MAXPOOL_FUNCTIONS
        if maxpool and not node.kwargs.get("return_indices") and len(node.args) < 7:
            pool = MAXPOOL_FUNCTIONS[target]
            return Step(
                node, "maxpool", name, call=_function_call(node, pool, False, {**kwargs, "return_indices": True})
            )
        if key in _SIMPLE:
            return Step(node, _SIMPLE[key], name, call=call)
        if (is_method and target in SOFTMAX_METHODS) or (not is_method and target in SOFTMAX_FUNCTIONS):
            if self._feeds_output(node):
                raise UnsupportedLayerError(
                    f"`{name}` is applied to the model's output{_source_of(node)}; LRP explains logits: explain "
                    "the model without its final softmax"
                )
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            if not isinstance(dim, int):
                raise UnsupportedLayerError(f"`{name}` without an integer dim{_source_of(node)} is not supported")
            return Step(node, "softmax", name, call=call, dim=dim)
        if not is_method and target in NORM_FUNCTIONS:
            spec, x = function_norm(cast(Callable[..., Any], target), node.args, dict(node.kwargs))
            if n_live != 1 or x not in self.live:
                raise UnsupportedLayerError(f"`{name}` whose statistics or weights depend on the input")
            return Step(node, "normalise", name, call=call, norm=spec)
        if not is_method and target in LINEAR_FUNCTIONS:
            return self._functional_layer(node, target, name, call)
        if not is_method and target in (F.interpolate, F.upsample):
            mode = node.kwargs.get("mode", node.args[3] if len(node.args) > 3 else "nearest")
            if mode not in _LINEAR_RESAMPLING:
                raise UnsupportedLayerError(
                    f"`{name}` with mode={mode!r}{_source_of(node)}: its weights can be negative; use 'bilinear'"
                )
            return Step(node, "avgpool", name, call=call)
        if not is_method and target is torch.addcmul:  # shift + value · t1 ⊙ t2, one factor input-dependent
            args = dict(zip(("input", "tensor1", "tensor2"), node.args)) | dict(node.kwargs)
            factors = [args.get("tensor1"), args.get("tensor2")]
            if args.get("input") in self.live or sum(f in self.live for f in factors) != 1:
                raise UnsupportedLayerError(f"`addcmul` with other than one input-dependent factor{_source_of(node)}")
            other = factors[1] if factors[0] in self.live else factors[0]
            value = args.get("value", 1)
            spec = NormSpec("affine", {"scale": other, "shift": args.get("input"), "value": value})
            return Step(node, "normalise", name, call=call, norm=spec)
        if target in ("add", "sub", *ADD_FUNCTIONS, *SUB_FUNCTIONS):
            subtract = target == "sub" or target in SUB_FUNCTIONS
            if "alpha" in node.kwargs:
                raise UnsupportedLayerError(f"`{name}` with alpha{_source_of(node)} is not supported")
            if len(tensors) == 2:
                return Step(node, "add", name, call=call, signs=(1.0, -1.0 if subtract else 1.0))
            return Step(node, "pass", name, call=call)  # x ± a number
        if (is_method and target in PRODUCT_METHODS) or (not is_method and target in PRODUCT_FUNCTIONS):
            return self._product(node, target, name, call, n_live)
        if target in ("div", "truediv", operator.truediv, torch.div):
            if node.args and node.args[0] in self.live and n_live == 1:
                return Step(node, "pass", name, call=call)  # x / c
            raise UnsupportedLayerError(
                f"`{name}` divides by a tensor that depends on the input{_source_of(node)}; relprop has no rule "
                "for it"
            )
        if not is_method and target in decompose.TRAINING_IDENTITIES:  # e.g. stochastic depth in training mode
            return Step(node, "pass", name, call=call)
        raise UnsupportedLayerError(
            f"the call `{name}`{_source_of(node)} has no relevance rule. Move the computation into a submodule "
            "and pass leaf_modules={YourModule: 'pass'|'route'|'activation'}, or rewrite it with supported "
            "operations (Linear/Conv, normalisation, pooling, elementwise activations, x + y, products, "
            "softmax, torch.cat and reshaping)"
        )

    def _feeds_output(self, node: fx.Node) -> bool:
        """Whether ``node``'s value reaches the model's output through routing steps only."""
        todo, seen = [node], set()
        while todo:
            n = todo.pop()
            for u in n.users:
                if u.op == "output":
                    return True
                if u not in seen and u.op == "call_function" and u.target is operator.getitem:
                    seen.add(u)
                    todo.append(u)
        return False

    def _product(self, node: fx.Node, target: Any, name: str, call: Callable[[Env], Any], n_live: int) -> Step:
        """x * y, x @ y, bmm, two-operand einsum: a product step (or, for ``mul`` by a constant, a ``pass``)."""
        if target in ("mul", "mul_", operator.mul, torch.mul):
            operands = tuple(node.args[:2])
            if n_live == 1:
                return Step(node, "pass", name, call=call)  # x times a number or a constant tensor (layer scale)
            return Step(node, "product", name, call=call, operands=operands, bilinear=torch.mul)
        if target is torch.einsum:
            eq = node.args[0]
            ops = node.args[1:] if len(node.args) > 2 else node.args[1]
            if not isinstance(eq, str) or not isinstance(ops, (list, tuple)) or len(ops) != 2:
                raise UnsupportedLayerError(
                    f"`einsum` with other than two operands{_source_of(node)} is not supported; write it as "
                    "products of two tensors"
                )

            def contract(a: Tensor, b: Tensor, _eq: str = eq) -> Tensor:
                return torch.einsum(_eq, a, b)

            return Step(node, "product", name, call=call, operands=tuple(ops), bilinear=contract)
        fn = torch.bmm if target in ("bmm", torch.bmm) else torch.matmul
        return Step(node, "product", name, call=call, operands=tuple(node.args[:2]), bilinear=fn)

    def _functional_layer(self, node: fx.Node, target: Any, name: str, call: Callable[[Env], Any]) -> Step:
        """``F.linear`` / ``F.conv*`` with a weight that does not depend on the input: a linear step on a stand-in
        module that holds the call's weight and bias (refreshed by every forward pass; the model is not touched)."""
        names = ("input", "weight", "bias") if target is F.linear else _CONV_ARGS
        bound = dict(zip(names, node.args)) | dict(node.kwargs)
        x, w, b = bound.get("input"), bound.get("weight"), bound.get("bias")
        if x not in self.live or w in self.live or b in self.live:
            raise UnsupportedLayerError(
                f"`{name}` whose weight depends on the input{_source_of(node)}: relprop has no rule for it"
            )
        layer: nn.Module
        if target is F.linear:
            layer = _stand_in(nn.Linear, in_features=0, out_features=0)
        else:
            nd = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}[target]

            def tup(v: Any) -> Any:
                return v if isinstance(v, str) else tuple(v) if isinstance(v, (list, tuple)) else (int(v),) * nd

            cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
            layer = _stand_in(
                cls, stride=tup(bound.get("stride", 1)), padding=tup(bound.get("padding", 0)),
                dilation=tup(bound.get("dilation", 1)), groups=int(cast(int, bound.get("groups", 1))), transposed=False,
                output_padding=(0,) * nd, padding_mode="zeros", kernel_size=(0,) * nd, in_channels=0, out_channels=0,
            )  # fmt: skip
        try:  # the weight's shape, so that the stand-in describes the layer before the first forward pass
            _refresh(layer, cast(Tensor, self._const_value(w) if isinstance(w, fx.Node) else w), None)
        except Exception:  # noqa: BLE001 - a weight that needs the input's shape: known after the forward pass
            pass
        owner = module_of(node)
        label = f"{owner[0]}.{name}" if owner and owner[0] else name

        def forward(env: Env, _x: Any = x, _w: Any = w, _b: Any = b, _layer: nn.Module = layer) -> Any:
            weight = env[_w] if isinstance(_w, fx.Node) else _w
            bias = env[_b] if isinstance(_b, fx.Node) else _b
            _refresh(_layer, weight, bias)
            return call(env)

        return Step(node, "linear", label, layer, call=forward)

    def _is_tensor(self, n: fx.Node) -> bool:
        """Whether node ``n`` holds a tensor: live nodes do; constants are evaluated once to see."""
        if n in self.live:
            return True
        s = self.by_node.get(n)
        if s is None or s.kind == "meta":
            return False
        try:
            return isinstance(self._const_value(n), Tensor)
        except Exception:  # noqa: BLE001 - a constant that needs the input's shape: most likely a tensor
            return True

    def _const_value(self, n: fx.Node) -> Any:
        if n not in self._consts:
            step = self.by_node[n]
            env = {a: self._const_value(a) for a in _nodes_in((n.args, n.kwargs))}
            assert step.call is not None
            with torch.no_grad():
                self._consts[n] = step.call(env)
        return self._consts[n]

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


def _batchnorm_call(node: fx.Node, bn: nn.Module) -> Callable[[dict[fx.Node, Any]], Any]:
    """The BatchNorm's forward; with batch statistics it also keeps them in ``env[(node, "stats")]`` so the
    relevance pass need not compute them again (see :func:`~relprop.graph.linear_map.batch_norm_with_stats`)."""
    arg = node.args[0]

    def call(env: dict[Any, Any]) -> Any:
        y, stats = batch_norm_with_stats(bn, env[arg])
        if stats is not None:
            env[(node, "stats")] = stats
        return y

    return call


def _maxpool_module_call(node: fx.Node, m: _MaxPoolNd) -> Callable[[dict[fx.Node, Any]], Any]:
    """Max pooling that also returns the winners' indices (kept for the relevance pass)."""
    fn = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}[type(m)]
    arg = cast(fx.Node, node.args[0])

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



# -- static facts and vector-Jacobian products ------------------------------------------------------------


def _facts_of(step: Step) -> StepFacts:
    if step.custom:
        return NO_FACTS
    if step.kind == "activation":
        return activation_facts(type(step.module).__name__.lower() if step.module is not None else step.name.lower())
    if step.kind in ("route", "maxpool"):
        return MOVES_VALUES
    if step.kind == "avgpool":
        return StepFacts(keeps_nonneg=True)
    if step.kind == "add":
        return StepFacts(keeps_nonneg=all(v > 0 for v in step.signs))
    if step.kind == "pass":
        if step.module is not None:
            scaling = isinstance(step.module, (*DROPOUT_MODULES, nn.Identity))
            return StepFacts(keeps_nonneg=True, zero_at_zero=True) if scaling else NO_FACTS
        live = {i.node for i in step.inputs}
        return pass_facts(step.name, [None if isinstance(a, fx.Node) else a for a in step.node.args if a not in live])
    if step.kind == "softmax":
        return StepFacts(nonneg=True, gate=True)
    return NO_FACTS


def _is_dropout(step: Step) -> bool:
    if step.module is not None:
        return isinstance(step.module, DROPOUT_MODULES)
    return step.name in DROPOUT_FUNCTIONS


def dropout_p(step: Step) -> float:
    """Drop probability of a dropout step, 0 when it is inactive (eval mode)."""
    if step.module is not None:
        return float(step.module.p) if step.module.training else 0.0  # type: ignore[arg-type]
    names = ("input", "p", "mode", "training") if step.name == "stochastic_depth" else ("input", "p", "training")
    args = dict(zip(names, step.node.args))
    args.update(step.node.kwargs)
    return float(args.get("p", 0.5)) if args.get("training", True) else 0.0  # type: ignore[arg-type]


def _dropout_vjp(step: Step, env: Env, r: Any, create_graph: bool) -> list[tuple[Any, Any]]:
    """The gradient of dropout uses the forward pass's mask, which a re-evaluation would redraw."""
    in_node = step.inputs[0].node
    x, y = env[in_node], env[step.node]
    if x.shape != r.shape:
        return []
    p = dropout_p(step)
    return [(in_node, r * (y != 0) / (1 - p) if p < 1 else torch.zeros_like(r))]


def _maxpool_vjp(step: Step, env: Env, r: Any, create_graph: bool) -> list[tuple[Any, Any]]:
    """Each window's relevance to its winner (indices kept from the forward pass)."""
    in_node = step.inputs[0].node
    x = env[in_node]
    idx = env.pop((step.node, "indices"))
    flat = torch.zeros(x.shape[:2] + (x[0, 0].numel(),), dtype=r.dtype, device=r.device)
    return [(in_node, flat.scatter_add(2, idx.flatten(2), r.flatten(2)).view_as(x))]


_RESHAPES = {"flatten", "view", "reshape", "view_as", "reshape_as", "contiguous", "squeeze", "unsqueeze"}
_RESHAPE_FUNCTIONS: set[Any] = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}


def _route_vjp(step: Step) -> VJP | None:
    """A direct vector-Jacobian product for the routes every CNN has (a reshape: R reshaped back; a
    concatenation: R split by the inputs' sizes), so that they are not re-evaluated under autograd."""
    node = step.node
    if (
        isinstance(step.module, (nn.Flatten, nn.Unflatten))
        or (node.op == "call_method" and node.target in _RESHAPES)
        or (node.op == "call_function" and node.target in _RESHAPE_FUNCTIONS)
    ) and len(step.inputs) == 1:
        return _reshape_vjp
    if node.op == "call_function" and node.target in (torch.cat, torch.concat):
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if isinstance(parts, (list, tuple)) and all(isinstance(p, fx.Node) for p in parts) and isinstance(dim, int):
            return _cat_vjp(list(parts), dim)
    if node.kwargs or len(step.inputs) != 1 or node.args[:1] != (step.inputs[0].node,):
        return None
    target = node.target
    if target in ("permute", torch.permute):
        return _permute_vjp
    if target in ("transpose", "swapaxes", "swapdims", torch.transpose, torch.swapaxes, torch.swapdims):
        return _transpose_vjp
    if target in ("roll", torch.roll):
        return _roll_vjp
    if target is operator.getitem:
        return _getitem_vjp
    return None


def _args(step: Step, env: Env) -> tuple[Any, ...]:
    """The step's arguments after the input, with fx nodes (sizes, shifts) replaced by their values."""
    return tuple(fx.node.map_arg(step.node.args[1:], lambda n: env[n]))


def _permute_vjp(step: Step, env: Env, r: Any, create_graph: bool) -> list[tuple[Any, Any]]:
    args = _args(step, env)
    dims = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else list(args)
    nd = len(dims)
    inverse = [0] * nd
    for i, d in enumerate(dims):
        inverse[d % nd] = i
    return [(step.inputs[0].node, r.permute(inverse))]


def _transpose_vjp(step: Step, env: Env, r: Any, create_graph: bool) -> list[tuple[Any, Any]]:
    d0, d1 = _args(step, env)
    return [(step.inputs[0].node, r.transpose(d0, d1))]


def _roll_vjp(step: Step, env: Env, r: Any, create_graph: bool) -> list[tuple[Any, Any]]:
    args = _args(step, env)
    shifts, dims = args[0], args[1] if len(args) > 1 else None
    back = tuple(-int(v) for v in shifts) if isinstance(shifts, (list, tuple)) else -int(shifts)
    return [(step.inputs[0].node, r.roll(back, dims) if dims is not None else r.roll(back))]


def _basic_index(idx: Any) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items)


def _getitem_vjp(step: Step, env: Env, r: Any, create_graph: bool) -> list[tuple[Any, Any]]:
    """An item of a tuple (unbind, chunk) gets R in its slot; basic indexing of a tensor scatters R back."""
    in_node = step.inputs[0].node
    x = env[in_node]
    (idx,) = _args(step, env)
    if isinstance(x, (tuple, list)) and isinstance(idx, int):
        slots: list[Any] = [None] * len(x)
        slots[idx] = r
        return [(in_node, tuple(slots))]
    if isinstance(x, Tensor) and _basic_index(idx):
        out = r.new_zeros(x.shape)
        out[idx] = r
        return [(in_node, out)]
    return autograd_vjp(step, env, r, create_graph)


def _reshape_vjp(step: Step, env: Env, r: Any, create_graph: bool) -> list[tuple[Any, Any]]:
    in_node = step.inputs[0].node
    return [(in_node, r.reshape(env[in_node].shape))]


def _cat_vjp(parts: list[fx.Node], dim: int) -> VJP:
    def vjp(step: Step, env: Env, r: Any, create_graph: bool) -> list[tuple[Any, Any]]:
        if not all(isinstance(env.get(p), Tensor) for p in parts):
            return autograd_vjp(step, env, r, create_graph)
        sizes = [env[p].shape[dim] if env[p].dim() else 1 for p in parts]
        return list(zip(parts, r.split(sizes, dim)))

    return vjp


def autograd_vjp(step: Step, env: Env, r: Any, create_graph: bool) -> list[tuple[Any, Any]]:
    """Re-evaluate the step on detached inputs and take autograd's vector-Jacobian product with ``r``."""
    nodes = [i.node for i in step.inputs if isinstance(env.get(i.node), (Tensor, tuple, list))]
    with torch.enable_grad():
        local = dict(env)
        leaves: list[Tensor] = []
        owners: list[tuple[Any, int | None]] = []
        for n in nodes:
            v = env[n]
            if isinstance(v, Tensor):
                t = v.detach().requires_grad_(v.is_floating_point())
                local[n] = t
                if t.requires_grad:
                    leaves.append(t)
                    owners.append((n, None))
            else:
                items = []
                for j, item in enumerate(v):
                    t = item.detach().requires_grad_(True)
                    items.append(t)
                    leaves.append(t)
                    owners.append((n, j))
                local[n] = type(v)(items)
        assert step.call is not None
        out = step.call(local)
        outs, grads = _pair_outputs(out, r)
        if not outs or not leaves:  # computed from constants only: no relevance flows back
            return []
        got = torch.autograd.grad(outs, leaves, grads, allow_unused=True, create_graph=create_graph)
    result: list[tuple[Any, Any]] = []
    tuples: dict[Any, list[Tensor | None]] = {}
    for (n, k), g in zip(owners, got):
        if k is None:
            if g is not None:
                result.append((n, g if create_graph else g.detach()))
        else:
            tuples.setdefault(n, [None] * len(env[n]))[k] = g
    for n, gs in tuples.items():
        result.append((n, tuple(gs)))
    return result


def _pair_outputs(out: Any, r: Any) -> tuple[list[Tensor], list[Tensor]]:
    if isinstance(out, Tensor):
        return [out], [r]
    outs, grads = [], []
    for o, g in zip(out, r):
        if g is not None:
            outs.append(o)
            grads.append(g)
    return outs, grads


def has_hooks(m: nn.Module | None) -> bool:
    """Whether forward hooks or pre-hooks run when ``m`` is called (its own, or global ones)."""
    if m is None:
        return False
    from torch.nn.modules import module as _module

    return bool(
        m._forward_hooks or m._forward_pre_hooks or _module._global_forward_hooks
        or _module._global_forward_pre_hooks
    )  # fmt: skip


def _hooks(m: nn.Module, pre: bool) -> list[Any]:
    from torch.nn.modules import module as _module

    if pre:
        return [*_module._global_forward_pre_hooks.values(), *m._forward_pre_hooks.values()]
    return [*_module._global_forward_hooks.values(), *m._forward_hooks.values()]


def _refuse_change(m: nn.Module, hook: Any) -> UnsupportedLayerError:
    name = getattr(hook, "__name__", type(hook).__name__)
    return UnsupportedLayerError(
        f"the forward hook {name!r} on a {type(m).__name__} returns a value, so it changes the layer's output; "
        "relprop runs this layer itself (out of place, or folded with its BatchNorm) and cannot apply a changed "
        "value consistently to the relevance rules. Remove the hook while explaining, or make it return None "
        "(hooks that only observe are called with the real values)"
    )


def call_pre_hooks(m: nn.Module, x: Tensor) -> Tensor:
    """Run ``m``'s forward pre-hooks on (x,); a hook that returns a value (changes the input) is refused."""
    for hook in _hooks(m, True):
        if hook(m, (x,)) is not None:
            raise _refuse_change(m, hook)
    return x


def call_forward_hooks(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Run ``m``'s forward hooks on (x,) and y; a hook that returns a value (changes the output) is refused."""
    for hook in _hooks(m, False):
        if hook(m, (x,), y) is not None:
            raise _refuse_change(m, hook)
    return y


class _RootHooks:
    """The model's own forward hooks, which tracing its forward skips: run as two ``pass`` steps, one after the
    input (pre-hooks) and one before the output (forward hooks); a hook that returns a value is refused."""

    def __init__(self, model: nn.Module) -> None:
        self.model = weakref.ref(model)
        self.x: Tensor | None = None

    def pre(self, x: Tensor) -> Tensor:
        m = self.model()
        self.x = x
        if m is not None:
            for hook in m._forward_pre_hooks.values():
                if hook(m, (x,)) is not None:
                    raise _refuse_change(m, hook)
        return x

    def post(self, y: Tensor) -> Tensor:
        m, x = self.model(), self.x
        self.x = None
        if m is not None:
            for hook in m._forward_hooks.values():
                if hook(m, (x,), y) is not None:
                    raise _refuse_change(m, hook)
        return y


def _run_root_hooks(graph: fx.Graph, model: nn.Module) -> None:
    hooks = _RootHooks(model)
    inputs = [n for n in graph.nodes if n.op == "placeholder" and not n.args]
    output = next(n for n in graph.nodes if n.op == "output")
    if len(inputs) != 1 or not isinstance(output.args[0], fx.Node):
        raise UnsupportedLayerError(
            f"{type(model).__name__} has forward hooks on itself and does not map one tensor to one tensor; "
            "remove the hooks while explaining (handle.remove())"
        )
    (x,) = inputs
    with graph.inserting_after(x):
        pre = graph.call_function(hooks.pre, (x,))
    x.replace_all_uses_with(pre, delete_user_cb=lambda u: u is not pre)
    with graph.inserting_before(output):
        post = graph.call_function(hooks.post, (output.args[0],))
    output.args = (post,)


def _inline_namedtuples(graph: fx.Graph) -> None:
    """A NamedTuple built from tensors (torchvision's GoogLeNetOutputs) becomes a literal in its users' arguments,
    as fx keeps plain tuples."""
    for node in list(graph.nodes):
        t = node.target
        if node.op == "call_function" and isinstance(t, type) and issubclass(t, tuple) and hasattr(t, "_fields"):
            literal = t(*node.args, **node.kwargs)

            def swap(n: fx.Node, _l: Any = literal, _n: fx.Node = node) -> Any:
                return _l if n is _n else n

            for user in list(node.users):
                user.args = cast(tuple[Any, ...], fx.node.map_arg(user.args, swap))
                user.kwargs = cast(dict[str, Any], fx.node.map_arg(user.kwargs, swap))
            graph.erase_node(node)


def _simple_kinds() -> dict[tuple[str, Any], str]:
    table: dict[tuple[str, Any], str] = {}
    for kind, methods, functions in (
        ("activation", ACTIVATION_METHODS | {"relu"}, ACTIVATION_FUNCTIONS),
        ("route", ROUTE_METHODS | {"masked_fill"}, (ROUTE_FUNCTIONS - set(MAXPOOL_FUNCTIONS)) | {torch.masked_fill}),
        ("avgpool", AVGPOOL_METHODS | {"sum"}, AVGPOOL_FUNCTIONS | {torch.sum}),
        ("pass", PASS_METHODS, PASS_FUNCTIONS),
    ):
        table.update({("method", m): kind for m in methods})
        table.update({("function", f): kind for f in functions})
    return table


#: resampling modes whose weights are non-negative (bicubic's are not)
_LINEAR_RESAMPLING = ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "area")
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
#: functions and methods whose step kind follows from the call alone
_SIMPLE = _simple_kinds()


def _where(node: fx.Node) -> tuple[str, str]:
    owner = module_of(node)
    return owner if owner and owner[0] else ("", "")


def _report(model: str, problems: list[tuple[str, str, str]]) -> str:
    """One message for every unsupported step ((module path, module type, problem)), identical problems of the
    same module type grouped."""
    groups: dict[tuple[str, str], list[str]] = {}
    for path, kind, what in problems:
        groups.setdefault((kind, what), []).append(path)
    lines = []
    for (kind, what), paths in groups.items():
        named = [q for q in paths if q]
        head = ", ".join(f"`{q}`" for q in named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
        lines.append(f"  - {head} ({kind}): {what}" if head else f"  - {what}")
    n = len(problems)
    return (
        f"{model} has {n} step{'s' if n != 1 else ''} without a relevance rule ({len(groups)} kind"
        f"{'s' if len(groups) != 1 else ''}):\n" + "\n".join(lines) + "\nHow to proceed: rewrite these operations "
        "with supported ones, or declare the enclosing module's class in leaf_modules={Cls: 'pass'|'route'|"
        "'activation'} if relevance should cross it as one step."
    )


def _gate_of(step: Step, by_node: dict[fx.Node, Step]) -> int | None:
    """Which factor of a product is the gate: a constant factor, else the only factor that comes (through
    routing) from a step with values in [0, 1] (sigmoid, softmax)."""
    live = {i.node for i in step.inputs}
    gates = []
    for k, op in enumerate(step.operands):
        if op not in live:
            return k
        src = by_node[op]
        while src.kind in ("route", "pass") and len(src.inputs) == 1:
            src = src.inputs[0]
        if src.facts.gate:
            gates.append(k)
    return gates[0] if len(gates) == 1 else None


def _stand_in(cls: type[nn.Module], **attrs: Any) -> nn.Module:
    """An instance of ``cls`` without parameters of its own (for functional layers): the rules see a Linear or
    Conv module; its weight and bias are set by every forward pass."""
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    for k, v in {**attrs, "weight": None, "bias": None, "stand_in": True}.items():
        object.__setattr__(m, k, v)
    return m


def _refresh(m: nn.Module, weight: Tensor, bias: Tensor | None) -> None:
    object.__setattr__(m, "weight", weight)
    object.__setattr__(m, "bias", bias)
    if isinstance(m, nn.Linear):
        object.__setattr__(m, "in_features", weight.shape[-1])
        object.__setattr__(m, "out_features", weight.shape[0])
    else:
        groups = cast(int, getattr(m, "groups", 1))
        object.__setattr__(m, "in_channels", weight.shape[1] * groups)
        object.__setattr__(m, "out_channels", weight.shape[0])
        object.__setattr__(m, "kernel_size", tuple(weight.shape[2:]))


__all__ = ["RelevanceGraph", "Step", "autograd_vjp", "dropout_p", "has_hooks"]

