"""The relevance pass: steps visited in reverse, each mapping the relevance at its output to its inputs with
the one backward of its kind (:data:`BACKWARD`), which calls the step's rule.

Adding a step kind means adding its backward here and the hook to the rules that apply to it; the walk
itself does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from ..errors import RelpropError
from ..graph import LinearMap, RelevanceGraph, Step
from ..rules import Rule
from .plan import Plan
from .rescale import BranchShares, RelevanceStore, batch_first, normalise

Env = dict[Any, Any]
Edges = list[tuple[Any, Any]]  # (input node, relevance arriving there)


@dataclass
class PassContext:
    """What a step's backward may read besides its own values."""

    graph: RelevanceGraph
    plan: Plan
    env: Env
    create_graph: bool
    #: activations whose input the forward pass replaced by their output
    alias: frozenset[Step] = frozenset()


def _linear(step: Step, rule: Rule | None, r: Tensor, ctx: PassContext) -> Edges:
    """Linear/Conv/BatchNorm/average pooling: ``rule.linear(layer, a, z, R)``."""
    assert rule is not None
    env = ctx.env
    in_node = step.inputs[0].node
    a, z = env[in_node], env[step.node]
    layer = env.pop((step.node, "map"), None) or LinearMap(step, a, z, env, fold_weights=rule.modifies_weights)
    layer.input_nonneg = ctx.graph.nonneg.get(step.inputs[0]) if rule.uses_input_sign else None
    layer.negative_outputs_silent = ctx.plan.neg_silent.get(step, False)
    layer.output_proportional = ctx.plan.proportional.get(step, False)
    layer.output_nonneg = any(u in ctx.alias for u in ctx.graph.users[step])
    try:
        return [(in_node, rule.linear(layer, a, z, r))]
    except NotImplementedError as exc:
        raise RelpropError(f"step '{step.name}': {exc}") from exc


def _add(step: Step, rule: Rule | None, r: Tensor, ctx: PassContext) -> Edges:
    """x ± y: ``rule.add(terms, z, R)``; relevance belongs to the term (−y for x − y), a gradient changes sign."""
    assert rule is not None
    env = ctx.env
    nodes = list(step.node.args[:2])
    parts = [env[n] if sign > 0 else -env[n] for sign, n in zip(step.signs, nodes)]
    outs = rule.add(parts, env[step.node], r, ctx.plan.neg_silent.get(step, False))
    return [(n, -o if sign < 0 and rule.gradient else o) for sign, n, o in zip(step.signs, nodes, outs)]


def _activation(step: Step, rule: Rule | None, r: Tensor, ctx: PassContext) -> Edges:
    """Elementwise non-linearity: ``rule.activation(f, x, y, R)``."""
    assert rule is not None and step.call is not None
    env, call = ctx.env, step.call
    in_node = step.inputs[0].node

    def fn(t: Tensor) -> Tensor:
        return call({**env, in_node: t})

    return [(in_node, rule.activation(fn, env[in_node], env[step.node], r))]


def _first_input_vjp(step: Step, ctx: PassContext) -> Callable[[Tensor], Tensor]:
    in_node = step.inputs[0].node

    def vjp(t: Tensor) -> Tensor:
        got = dict(step.backprop(ctx.env, t, ctx.create_graph)).get(in_node)
        return torch.zeros_like(ctx.env[in_node]) if got is None else got

    return vjp


def _passthrough(step: Step, rule: Rule | None, r: Tensor, ctx: PassContext) -> Edges:
    """Elementwise y = c ⊙ x: ``rule.passthrough(x, R, vjp)``."""
    if rule is None:
        return step.backprop(ctx.env, r, ctx.create_graph)
    in_node = step.inputs[0].node
    if step.custom and not (isinstance(r, Tensor) and isinstance(ctx.env[in_node], Tensor)):
        raise RelpropError(
            f"leaf_modules[{type(step.module).__name__}] = 'pass' needs a module that maps one tensor to one tensor, "
            f"but '{step.name}' returns {type(ctx.env[step.node]).__name__}; declare it 'route' instead (relevance "
            "then follows its gradient)"
        )
    return [(in_node, rule.passthrough(ctx.env[in_node], r, _first_input_vjp(step, ctx)))]


def _maxpool(step: Step, rule: Rule | None, r: Tensor, ctx: PassContext) -> Edges:
    """Max pooling: each window's relevance routed to its winner, then ``rule.maxpool(x, routed)``."""
    in_node = step.inputs[0].node
    x = ctx.env[in_node]
    (_, routed), *_ = step.backprop(ctx.env, r, ctx.create_graph)
    return [(in_node, routed if rule is None else rule.maxpool(x, routed))]


def _normalise(step: Step, rule: Rule | None, r: Tensor, ctx: PassContext) -> Edges:
    """LayerNorm / GroupNorm / RMSNorm / functional batch norm: ``rule.normalise(layer, x, y, R)`` on the affine map
    with the forward pass's statistics (a gradient rule gets the true gradient, statistics included)."""
    assert rule is not None
    if rule.gradient:
        return step.backprop(ctx.env, r, ctx.create_graph)
    in_node = step.inputs[0].node
    a, z = ctx.env[in_node], ctx.env[step.node]
    try:
        return [(in_node, rule.normalise(LinearMap(step, a, z, ctx.env), a, z, r))]
    except NotImplementedError as exc:
        raise RelpropError(f"step '{step.name}': {exc}") from exc


def _product(step: Step, rule: Rule | None, r: Tensor, ctx: PassContext) -> Edges:
    """A product of two tensors f(a, b), bilinear: ``rule.product(factors, z, R, grad, gate)`` with
    ``grad(s, k)`` = ∂⟨s, f⟩/∂x_k; relevance goes to the factors that depend on the input."""
    assert rule is not None and step.bilinear is not None
    env = ctx.env
    xs = [env[o] if isinstance(o, fx.Node) else torch.as_tensor(o) for o in step.operands]
    live = {i.node for i in step.inputs}
    f = step.bilinear
    z = env[step.node]

    def grad(s: Tensor, k: int) -> Tensor:
        """∂⟨s, f(a, b)⟩ / ∂x_k, written out for products and matrix products, else by autograd."""
        a, b = xs
        if f is torch.mul:  # elementwise: s ⊙ (the other factor), summed back over broadcast dimensions
            return (s * (b if k == 0 else a)).sum_to_size(xs[k].shape)
        if f in (torch.matmul, torch.bmm) and a.dim() >= 2 and b.dim() >= 2:
            g = s.matmul(b.transpose(-1, -2)) if k == 0 else a.transpose(-1, -2).matmul(s)
            return g.sum_to_size(xs[k].shape)
        keep = torch.is_grad_enabled() and ctx.create_graph
        with torch.enable_grad():
            leaves = [x if (keep and x.requires_grad) else x.detach().requires_grad_(True) for x in xs]
            (got,) = torch.autograd.grad(f(*leaves), leaves[k], s, create_graph=keep)
        return got if keep else got.detach()

    try:
        outs = rule.product(xs, z, r, grad, step.gate)
    except NotImplementedError as exc:
        raise RelpropError(f"step '{step.name}': {exc}") from exc
    return [(o, v) for o, v in zip(step.operands, outs) if o in live and v is not None]


def _softmax(step: Step, rule: Rule | None, r: Tensor, ctx: PassContext) -> Edges:
    """Softmax over ``step.dim``: ``rule.softmax(x, y, R, dim)``."""
    assert rule is not None and step.dim is not None
    in_node = step.inputs[0].node
    try:
        return [(in_node, rule.softmax(ctx.env[in_node], ctx.env[step.node], r, step.dim))]
    except NotImplementedError as exc:
        raise RelpropError(f"step '{step.name}': {exc}") from exc


def _route(step: Step, rule: Rule | None, r: Any, ctx: PassContext) -> Edges:
    """Values moved without mixing: relevance follows the step's gradient."""
    return step.backprop(ctx.env, r, ctx.create_graph)


#: the one backward of each step kind that relevance crosses
BACKWARD: dict[str, Callable[[Step, Rule | None, Any, PassContext], Edges]] = {
    "linear": _linear,
    "avgpool": _linear,
    "add": _add,
    "activation": _activation,
    "pass": _passthrough,
    "maxpool": _maxpool,
    "route": _route,
    "normalise": _normalise,
    "product": _product,
    "softmax": _softmax,
}


def relevance_pass(
    graph: RelevanceGraph, plan: Plan, env: Env, seed: Tensor, x: Tensor, create_graph: bool,
    alias: frozenset[Step] = frozenset(), capture: dict[Step, Any] | None = None,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """Relevance at the input for the output relevance ``seed``, and its per-sample log-scale (None unless the
    plan rescales). ``env`` (every step's forward value, the activations in ``alias`` keeping only their output)
    is consumed. ``capture``: steps whose output relevance (summed over their users) to record; each entry is
    set to ``(R, log s)`` (log s None unless the plan rescales), or left None where no relevance arrives."""
    ctx = PassContext(graph, plan, env, create_graph, alias)
    store = RelevanceStore()
    branches = BranchShares(plan) if plan.forks else None
    zero_scale = seed.new_zeros(seed.shape[0], dtype=torch.float64) if plan.rescale else None
    uniform = plan.rescale and not batch_first(graph, env, seed.shape[0])
    store.push(graph.output.inputs[0], seed, zero_scale)
    by_node = graph.by_node
    result: tuple[Any, Tensor | None] | None = None
    for step in reversed(graph.steps):
        if step.kind == "output":
            continue
        item = store.pop(step)
        if item is None:
            continue
        r, log_s = item
        if log_s is not None and isinstance(r, Tensor) and step.kind == "linear":
            # before each weighted layer (where the magnitude changes), when it has drifted far from 1
            r, log_s = normalise(r, log_s, only_if_far=True, uniform=uniform)
        if capture and step in capture:
            capture[step] = (r, log_s)
        if step.kind == "input":
            result = (r, log_s)
            break
        if branches is not None and step in branches.adds:
            branches.record(step, env, r, log_s)
        for node, r_in in BACKWARD[step.kind](step, plan.rules.get(step), r, ctx):
            src = by_node[node]
            if src.kind in ("const", "meta"):
                continue
            in_log_s = log_s
            if branches is not None:
                r_in, in_log_s = branches.adjust(step, src, r_in, in_log_s)
            store.push(src, r_in, in_log_s)
        env.pop(step.node, None)
    if result is None:
        raise RelpropError(
            f"no relevance reaches the input of {type(graph.model).__name__}: the explained output does not "
            "depend on the input through any step relprop can propagate (a constant output, or a "
            "leaf_modules step with no path back)"
        )
    relevance, log_scale = result
    if log_scale is not None:
        relevance, log_scale = normalise(relevance, log_scale)
    input_rule = plan.rules.get(graph.input)
    if input_rule is not None:
        relevance = input_rule.input(x, relevance)
    return relevance, log_scale


__all__ = ["BACKWARD", "PassContext", "relevance_pass"]
