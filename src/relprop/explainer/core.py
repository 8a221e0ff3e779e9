"""The Explainer: one forward pass and one relevance backward pass over the relevance graph.

Relevance is computed like a gradient: the forward pass keeps each step's output, then steps are
visited in reverse and each one maps the relevance at its output to relevance at its inputs with its
rule (see :mod:`relprop.rules`). The walk uses ordinary differentiable torch operations, so with
``create_graph=True`` the relevance can be differentiated with respect to the model's parameters
(double backpropagation, as ISNet training needs); without it everything runs under ``no_grad`` and
costs about as much as a plain input gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from ..composites import Composite, resolve
from ..errors import InputError, RelpropError, TargetError
from ..graph import LINEAR_MODULES, LinearMap, RelevanceGraph, Step
from ..rules import Rule, safe_divide

Target = Union[int, str, Tensor, Callable[[Tensor], Tensor]]


@dataclass
class Explanation:
    """Result of :meth:`Explainer.explain`.

    Attributes:
        relevance: relevance per input element, shaped like the input.
        logits: the model's output (B, C) for this input.
        targets: explained class per sample (None if the output relevance was given directly).
        output_relevance: the relevance the backward pass started from, shape (B, C).
        log_scale: for composites that rescale relevance at every step (R-LRP), the per-sample natural
            log of the factor removed: the unscaled relevance is ``relevance * exp(log_scale)`` (which may
            overflow; ``relevance`` itself has max |R| = 1 per sample). None otherwise.
    """

    relevance: Tensor
    logits: Tensor
    targets: Tensor | None
    output_relevance: Tensor
    log_scale: Tensor | None = None

    @property
    def conservation_error(self) -> Tensor:
        """Per sample |Σ R_input − Σ R_output| / |Σ R_output| (in float64, per-step rescaling undone)."""
        r_in = self.relevance.detach().double().flatten(1).sum(1)
        if self.log_scale is not None:
            r_in = r_in * self.log_scale.detach().double().exp()
        r_out = self.output_relevance.detach().double().sum(1)
        return (r_in - r_out).abs() / r_out.abs().clamp_min(torch.finfo(r_out.dtype).tiny)


class Explainer:
    """Explains one model with one composite; reuse it for repeated calls (the graph is traced once).

    Args:
        model: a PyTorch model mapping a tensor (B, ...) to logits (B, C). It is never modified: its
            parameters, buffers, hooks and training flag are left as they were. Explanations use
            the mode the model is in (call ``model.eval()`` first for the usual explanations).
        composite: a preset name (see :mod:`relprop.composites`), a :class:`Composite`, or a single
            :class:`~relprop.rules.Rule`.
        leaf_modules: module classes to treat as one step instead of tracing into them, with the kind
            of step: ``"pass"``, ``"route"`` or ``"activation"``.

    Example::

        explainer = relprop.Explainer(model.eval(), "epsilon_plus_flat")
        relevance = explainer(images, target="predicted")

    Modified weights (W⁺, folded BatchNorm, ...) are cached between calls and recomputed when a
    parameter or buffer changes through PyTorch (optimiser steps, ``load_state_dict``, in-place edits
    under ``torch.no_grad()``). Edits through ``param.data`` bypass PyTorch's version counters: call
    :meth:`clear_cache` after them.
    """

    def __init__(
        self,
        model: nn.Module,
        composite: str | Composite | Rule = "epsilon_plus_flat",
        *,
        leaf_modules: Mapping[type, str] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self.graph = RelevanceGraph(model, leaf_modules)
        self._set_composite(composite)

    def _set_composite(self, composite: str | Composite | Rule) -> None:
        self.composite = resolve(composite)
        self.rules: dict[Step, Rule] = {}
        for step in self.graph.steps:
            rule = self.composite.rule_for(step)
            if rule is not None:
                self.rules[step] = rule
        self._nonneg, self._neg_silent, self._proportional = _analyse(self.graph, self.rules)
        self._fold_forward = not self.composite.exact_forward
        self._forks = _branch_forks(self.graph, self.rules)
        self._branch_adds = {add for add, _ in self._forks.values()}
        self._relu_of_silent = {
            s
            for s in self.graph.steps
            if s.kind == "activation" and s.inputs and self._neg_silent.get(s.inputs[0], False)
        }

    def _with_composite(self, composite: str | Composite | Rule) -> Explainer:
        """An explainer with another composite on the same traced graph, so that one forward
        environment (see :meth:`_forward`) can feed relevance passes of both."""
        other = object.__new__(Explainer)
        other.model, other.graph = self.model, self.graph
        other._set_composite(composite)
        return other

    # -- public ----------------------------------------------------------------------------------
    def clear_cache(self) -> None:
        """Forget cached modified weights (needed only after edits through ``param.data``)."""
        for step in self.graph.steps:
            step.cache.clear()

    def __call__(self, x: Tensor, target: Target = "predicted", *, create_graph: bool = False) -> Tensor:
        """Relevance of ``x`` for ``target``, shaped like ``x``."""
        return self.explain(x, target, create_graph=create_graph).relevance

    def explain(self, x: Tensor, target: Target = "predicted", *, create_graph: bool = False) -> Explanation:
        """Explain ``x``.

        Args:
            x: input batch (B, ...), floating point, finite.
            target: class index (int), indices per sample (int tensor of shape (B,)), ``"predicted"``
                (the arg-max logit), a float tensor (B, C) used directly as output relevance, or a
                callable on the logits returning either of the tensor forms.
            create_graph: keep the computation graph so the relevance can be differentiated with
                respect to the input and the model's parameters.
        """
        self._check_input(x)
        grad = torch.enable_grad() if create_graph else torch.no_grad()
        with grad:
            env, logits = self._forward(x)
            seed, targets = self._seed(logits, target)
            relevance, log_scale = self._backward(env, seed, x, create_graph)
        if not create_graph:
            logits = logits.detach()
        return Explanation(relevance, logits, targets, seed, log_scale)

    # -- forward ---------------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise InputError(f"input must be a torch.Tensor, not {type(x).__name__}")
        if not x.is_floating_point():
            raise InputError(f"input has dtype {x.dtype}; relprop needs a floating-point input (e.g. x.float() / 255)")
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise InputError(
                f"input contains {n_nan} NaN and {n_inf} Inf values (first at index {where}); "
                "relevance of non-finite inputs is undefined"
            )
        first = next((s for s in self.graph.steps if s.kind == "linear"), None)
        if first is None or first.inputs[:1] != [self.graph.input]:
            return
        module = first.module
        if isinstance(module, nn.Linear) and x.shape[-1] != module.in_features:
            raise InputError(
                f"input has shape {tuple(x.shape)} but the first layer '{first.name}' (Linear) expects "
                f"{module.in_features} features in the last dimension: shape (B, {module.in_features})"
            )
        if isinstance(module, LINEAR_MODULES) and not isinstance(module, nn.Linear):
            nd = len(module.kernel_size)  # type: ignore[arg-type]
            cin = module.in_channels  # type: ignore[union-attr]
            spatial = ", ".join("HWD"[i] if nd > 1 else "L" for i in range(nd))
            if x.dim() != nd + 2:
                raise InputError(
                    f"input has shape {tuple(x.shape)} but the first layer '{first.name}' "
                    f"({type(module).__name__}) expects a batch of shape (B, {cin}, {spatial}); "
                    f"add a batch dimension with x.unsqueeze(0) if this is one sample"
                )
            if x.shape[1] != cin:
                raise InputError(
                    f"input has {x.shape[1]} channels (shape {tuple(x.shape)}) but the first layer "
                    f"'{first.name}' ({type(module).__name__}) expects {cin}: shape (B, {cin}, {spatial})"
                )

    def _forward(self, x: Tensor, alias: set[Step] | None = None) -> tuple[dict[Any, Any], Tensor]:
        """Run the model step by step; returns the environment (every step's value) and the logits.
        ``alias``: the activations whose input may be replaced by their output (default: this
        explainer's own; pass the intersection when several composites share the environment)."""
        alias = self._relu_of_silent if alias is None else alias
        env: dict[Any, Any] = {}
        logits: Any = None
        for step in self.graph.steps:
            if step.kind == "input":
                env[step.node] = x
                continue
            if step.kind == "output":
                logits = env[step.node.args[0]] if not isinstance(step.node.args[0], tuple) else None
                break
            assert step.call is not None
            try:
                if step.kind == "maxpool":
                    env[step.node], env[(step.node, "indices")] = step.call(env)
                elif step.batchnorm is not None and self._fold_forward and not _batch_statistics(step.batchnorm):
                    # eval-mode BatchNorm folded into the layer for the forward pass too, so that z is
                    # exactly W a + b of the weights the relevance pass uses (logits equal the model's
                    # up to float rounding)
                    a = env[step.inputs[0].node]
                    layer = LinearMap(step, a, a, env)
                    env[step.node] = layer.forward(a, layer.weight, layer.bias)
                    env[(step.node, "map")] = layer
                else:
                    env[step.node] = step.call(env)
                    if step in alias:
                        # R vanishes where z <= 0, and equals where z > 0 (there a = z): every rule gives
                        # the same result from a = relu(z), so the pre-activation z need not be kept
                        env[step.inputs[0].node] = env[step.node]
            except RelpropError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                shapes = [tuple(env[i.node].shape) for i in step.inputs if isinstance(env.get(i.node), Tensor)]
                mod = f" ({type(step.module).__name__})" if step.module is not None else ""
                raise InputError(
                    f"the forward pass failed at '{step.name}'{mod} with input shapes {shapes}: {exc}"
                ) from exc
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            got = type(logits).__name__ if not isinstance(logits, Tensor) else f"shape {tuple(logits.shape)}"
            raise RelpropError(
                f"{type(self.model).__name__} returned {got}; relprop explains models that return logits "
                "of shape (B, C). Wrap the model so that forward returns that tensor."
            )
        return env, logits

    # -- output relevance --------------------------------------------------------------------------
    def _seed(self, logits: Tensor, target: Target) -> tuple[Tensor, Tensor | None]:
        b, c = logits.shape
        if callable(target) and not isinstance(target, Tensor):
            target = target(logits.detach())
            if not isinstance(target, Tensor):
                raise TargetError(f"the target callable returned {type(target).__name__}, expected a tensor")
        if isinstance(target, str):
            if target != "predicted":
                raise TargetError(f"target={target!r}: the only string target is 'predicted'")
            idx = logits.detach().argmax(1)
        elif isinstance(target, bool):
            raise TargetError("target must be a class index, not a bool")
        elif isinstance(target, int):
            idx = torch.full((b,), target, dtype=torch.long, device=logits.device)
        elif isinstance(target, Tensor):
            if target.is_floating_point():
                if target.shape != logits.shape:
                    raise TargetError(
                        f"a float target is the output relevance and must have the logits' shape "
                        f"{tuple(logits.shape)}, got {tuple(target.shape)}"
                    )
                return target.to(logits), None
            idx = target.to(device=logits.device, dtype=torch.long).reshape(-1)
            if idx.numel() == 1:
                idx = idx.expand(b)
            if idx.numel() != b:
                raise TargetError(f"target has {idx.numel()} indices but the batch has {b} samples")
        else:
            raise TargetError(f"unsupported target {target!r}: use an int, 'predicted', a tensor or a callable")
        bad = (idx < 0) | (idx >= c)
        if bool(bad.any()):
            value = int(idx[bad][0])
            raise TargetError(f"target class {value} is out of range: the model has {c} outputs (0..{c - 1})")
        onehot = torch.nn.functional.one_hot(idx, c).to(logits.dtype)
        seed = onehot * logits if self.composite.seed == "logit" else onehot
        return seed, idx

    # -- relevance backward ------------------------------------------------------------------------
    def _backward(
        self, env: dict[Any, Any], seed: Tensor, x: Tensor, create_graph: bool
    ) -> tuple[Tensor, Tensor | None]:
        out_step = self.graph.output
        relevance: dict[Step, Any] = {out_step.inputs[0]: seed}
        # with per-step rescaling, relevance is kept as (R, log s) with true relevance R·s per sample
        rescale = self.composite.rescale
        scales: dict[Step, Tensor] = (
            {out_step.inputs[0]: seed.new_zeros(seed.shape[0], dtype=torch.float64)} if rescale else {}
        )
        by_node = self.graph.by_node
        shares: dict[tuple[Step, int], tuple[Tensor, Tensor | None]] = {}
        for step in reversed(self.graph.steps):
            if step.kind == "output":
                continue
            r = relevance.pop(step, None)
            if r is None:
                continue
            log_s = scales.pop(step, None)
            if log_s is not None and isinstance(r, Tensor) and step.kind == "linear":
                # before each weighted layer (where the magnitude changes), when it has drifted far from 1
                r, log_s = _normalise(r, log_s, only_if_far=True)
            if step.kind == "input":
                relevance[step] = r
                if log_s is not None:
                    scales[step] = log_s
                break
            if step in self._branch_adds:
                self._record_shares(step, env, r, log_s, shares)
            for node, r_in in self._step_backward(step, env, r, create_graph):
                src = by_node[node]
                if src.kind in ("const", "meta"):
                    continue
                in_log_s = log_s
                fork = self._forks.get((step, src))
                if fork is not None:  # a residual branch reaches its fork: rescale it to its share
                    share, in_log_s = shares.pop(fork)
                    total = r_in.flatten(1).sum(1)
                    factor = safe_divide(share.double(), total.double())
                    if in_log_s is None:
                        r_in = r_in * _per_sample(factor.to(r_in.dtype), r_in)
                    else:  # |factor| is huge where the branch's signed relevance cancels: keep it in the log-scale
                        r_in = r_in * _per_sample(torch.sign(factor).to(r_in.dtype), r_in)
                        magnitude = factor.abs()
                        in_log_s = in_log_s + torch.log(torch.where(magnitude > 0, magnitude, 1.0))
                prev = relevance.get(src)
                if in_log_s is None:
                    relevance[src] = r_in if prev is None else _accumulate(prev, r_in)
                elif prev is None:
                    relevance[src], scales[src] = r_in, in_log_s
                else:
                    relevance[src], scales[src] = _accumulate_scaled(prev, scales[src], r_in, in_log_s)
            env.pop(step.node, None)
        result = relevance.get(self.graph.input)
        log_scale = scales.get(self.graph.input)
        if result is None:
            result = torch.zeros_like(x)
        elif log_scale is not None:
            result, log_scale = _normalise(result, log_scale)
        if self.composite.multiply_input:
            result = result * x
        return result, log_scale

    def _record_shares(
        self, step: Step, env: dict[Any, Any], r: Tensor, log_s: Tensor | None, shares: dict[Any, Any]
    ) -> None:
        """At an addition y = u + v whose branches are rescaled at their fork: each branch's share of R,
        Σ u ⊙ R / y and Σ v ⊙ R / y per sample (0/0 := 0)."""
        s = safe_divide(r, env[step.node])
        for b, (sign, n) in enumerate(zip(step.signs, step.node.args[:2])):
            part = env[n] if sign > 0 else -env[n]
            shares[(step, b)] = ((part * s).flatten(1).sum(1), log_s)

    def _step_backward(self, step: Step, env: dict[Any, Any], r: Any, create_graph: bool) -> list[tuple[Any, Tensor]]:
        kind = step.kind
        rule = self.rules.get(step)
        if kind in ("linear", "avgpool"):
            assert rule is not None
            in_node = step.inputs[0].node
            a, z = env[in_node], env[step.node]
            layer = env.pop((step.node, "map"), None) or LinearMap(step, a, z, env)
            layer.input_nonneg = self._nonneg.get(step.inputs[0])
            layer.negative_outputs_silent = self._neg_silent.get(step, False)
            layer.output_proportional = self._proportional.get(step, False)
            try:
                r_in = rule.linear(layer, a, z, r)
            except NotImplementedError as exc:
                raise RelpropError(f"step '{step.name}': {exc}") from exc
            return [(in_node, r_in)]
        if kind == "add":
            assert rule is not None
            arg_nodes = list(step.node.args[:2])
            parts = [env[n] if sign > 0 else -env[n] for sign, n in zip(step.signs, arg_nodes)]
            outs = rule.add(parts, env[step.node], r, self._neg_silent.get(step, False))
            # relevance belongs to the term (−y for x − y); a gradient changes sign with it
            return [(n, -o if sign < 0 and rule.is_gradient else o) for sign, n, o in zip(step.signs, arg_nodes, outs)]
        if kind == "activation":
            assert rule is not None
            in_node = step.inputs[0].node
            xin = env[in_node]

            def fn(t: Tensor, _s: Step = step, _n: Any = in_node) -> Tensor:
                return _s.call({**env, _n: t})  # type: ignore[misc]

            return [(in_node, rule.activation(fn, xin, env[step.node], r))]
        if kind == "pass" and not (rule is not None and rule.is_gradient):
            in_node = step.inputs[0].node
            if env[in_node].shape == r.shape:
                return [(in_node, r)]
        if kind == "pass" and _is_dropout(step):
            # the gradient of dropout uses the forward pass's mask, which a re-evaluation would redraw
            in_node = step.inputs[0].node
            x, y = env[in_node], env[step.node]
            p = _dropout_p(step)
            return [(in_node, r * (y != 0) / (1 - p) if p < 1 else torch.zeros_like(r))] if x.shape == r.shape else []
        if kind == "maxpool":
            in_node = step.inputs[0].node
            x = env[in_node]
            idx = env.pop((step.node, "indices"))
            flat = torch.zeros(x.shape[:2] + (x[0, 0].numel(),), dtype=r.dtype, device=r.device)
            routed = flat.scatter_add(2, idx.flatten(2), r.flatten(2)).view_as(x)
            return [(in_node, routed if rule is None else rule.maxpool(x, routed))]
        return self._route(step, env, r, create_graph)

    def _route(self, step: Step, env: dict[Any, Any], r: Any, create_graph: bool) -> list[tuple[Any, Tensor]]:
        """Relevance follows the gradient of a step that only moves values around."""
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
                    for k, item in enumerate(v):
                        t = item.detach().requires_grad_(True)
                        items.append(t)
                        leaves.append(t)
                        owners.append((n, k))
                    local[n] = type(v)(items)
            assert step.call is not None
            out = step.call(local)
            outs, grads = _pair_outputs(out, r)
            if not outs:
                return []
            got = torch.autograd.grad(outs, leaves, grads, allow_unused=True, create_graph=create_graph)
        result: list[tuple[Any, Tensor]] = []
        tuples: dict[Any, list[Tensor | None]] = {}
        for (n, k), g in zip(owners, got):
            if k is None:
                if g is not None:
                    result.append((n, g if create_graph else g.detach()))
            else:
                tuples.setdefault(n, [None] * len(env[n]))[k] = g
        for n, gs in tuples.items():
            result.append((n, tuple(gs)))  # type: ignore[arg-type]
        return result


def _is_dropout(step: Step) -> bool:
    if step.module is not None:
        return isinstance(step.module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d))
    return step.name in ("dropout", "dropout1d", "dropout2d", "dropout3d")


def _dropout_p(step: Step) -> float:
    """Drop probability of a dropout step, 0 when it is inactive (eval mode)."""
    if step.module is not None:
        return float(step.module.p) if step.module.training else 0.0
    args = dict(zip(("input", "p", "training", "inplace"), step.node.args))
    args.update(step.node.kwargs)
    return float(args.get("p", 0.5)) if args.get("training", True) else 0.0


def _batch_statistics(bn: nn.Module) -> bool:
    return bool(bn.training) or getattr(bn, "running_mean", None) is None


_RELU_LIKE = {"relu", "relu_", "relu6"}
_ZERO_AT_ZERO = _RELU_LIKE | {
    "leakyrelu", "leaky_relu", "elu", "celu", "selu", "gelu", "silu", "mish", "tanh", "tanh_", "hardtanh",
    "hardswish", "prelu",
}  # fmt: skip
_NONNEG_ACTIVATIONS = _RELU_LIKE | {"sigmoid", "sigmoid_", "softplus", "hardsigmoid"}
_SCALING_CALLS = {"clone", "float", "double", "half", "bfloat16", "to", "type_as", "contiguous", "dropout",
                  "dropout1d", "dropout2d", "dropout3d", "mul", "truediv", "div", "neg", "pos"}  # fmt: skip


def _scaling_pass(step: Step) -> bool:
    """A ``pass`` step of the form y = c ⊙ x (identity, dropout, casts, scaling by a constant): y is zero
    exactly where x is (c != 0), so relevance that vanishes on zero outputs vanishes on zero inputs."""
    if step.custom:
        return False
    if step.module is not None:
        return isinstance(step.module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity))
    if step.name not in _SCALING_CALLS:
        return False
    consts = [a for a in step.node.args if not isinstance(a, fx.Node)]
    return all(not isinstance(c, (int, float)) or c != 0 for c in consts)


def _sign_preserving(step: Step) -> bool:
    """A ``pass`` step that keeps non-negative values non-negative (dropout, copies, positive scaling)."""
    if not _scaling_pass(step) or step.name in ("neg",):
        return False
    consts = [a for a in step.node.args if not isinstance(a, fx.Node)]
    return (
        all(isinstance(c, (int, float)) and c > 0 for c in consts) if step.name in ("mul", "truediv", "div") else True
    )


def _activation_name(step: Step) -> str:
    if step.custom:
        return "custom"
    if step.module is not None:
        return type(step.module).__name__.lower()
    return step.name.lower()


def _analyse(
    graph: RelevanceGraph, rules: Mapping[Step, Rule]
) -> tuple[dict[Step, bool], dict[Step, bool], dict[Step, bool]]:
    """Static facts that let rules skip work that is provably zero.

    ``nonneg[s]``: the output of ``s`` is never negative (ReLU outputs, and pooling, reshaping, concatenation
    and sums of such values). ``neg_silent[s]``: no relevance can arrive at negative outputs of linear step
    ``s``, because every user is a ReLU whose own output relevance vanishes where the output is zero
    (all rules downstream multiply by their input). ``proportional[s]``: relevance at the output of ``s``
    vanishes wherever the output is zero. The input's sign is not known statically (absent from nonneg).
    """
    from ..rules import RLRP, AlphaBeta, Epsilon, Gamma, Pass, ZPlus

    proportional_rules = (Epsilon, ZPlus, AlphaBeta, Gamma)
    users: dict[Step, list[Step]] = {s: [] for s in graph.steps}
    for s in graph.steps:
        for i in s.inputs:
            users[i].append(s)
    nonneg: dict[Step, bool] = {}
    for s in graph.steps:
        ins = [nonneg.get(i) is True for i in s.inputs]
        if s.kind == "activation":
            nonneg[s] = _activation_name(s) in _NONNEG_ACTIVATIONS
        elif s.kind in ("route", "maxpool", "avgpool"):
            nonneg[s] = bool(ins) and all(ins) and not s.custom
        elif s.kind == "pass":
            nonneg[s] = bool(ins) and all(ins) and _sign_preserving(s)
        elif s.kind == "add":
            terms = [graph.by_node.get(a) for a in s.node.args[:2]]
            nonneg[s] = all(t is not None and nonneg.get(t) is True for t in terms) and all(v > 0 for v in s.signs)
        elif s.kind != "input":
            nonneg[s] = False
    proportional: dict[Step, bool] = {}

    def consumes_proportionally(u: Step) -> bool:
        rule = rules.get(u)
        if isinstance(rule, RLRP) and u.kind in ("linear", "avgpool", "add"):
            # a ⊙ Wᵀ R, except the transposed average pooling and branch rescaling
            if u.kind == "add":
                return rule.skip == "proportional"
            return u.kind == "linear" or rule.pool == "contribution"
        if u.kind in ("linear", "avgpool"):
            return isinstance(rule, proportional_rules)
        if u.kind == "add":
            return isinstance(rule, Epsilon)
        if u.kind == "activation":
            return (
                isinstance(rules.get(u), (Pass, RLRP))
                and _activation_name(u) in _ZERO_AT_ZERO
                and proportional.get(u, False)
            )
        if u.kind in ("route", "maxpool"):
            return proportional.get(u, False) and not u.custom
        if u.kind == "pass":
            return proportional.get(u, False) and _scaling_pass(u) and isinstance(rules.get(u), (Pass, RLRP))
        return u.kind in ("meta", "const")

    for s in reversed(graph.steps):
        proportional[s] = all(consumes_proportionally(u) for u in users[s])
    neg_silent = {
        s: bool(users[s])
        and all(
            u.kind == "activation"
            and _activation_name(u) in _RELU_LIKE
            and isinstance(rules.get(u), (Pass, RLRP))
            and proportional[u]
            for u in users[s]
        )
        for s in graph.steps
        if s.kind in ("linear", "add")
    }
    return nonneg, neg_silent, proportional


def _branch_forks(graph: RelevanceGraph, rules: Mapping[Step, Rule]) -> dict[tuple[Step, Step], tuple[Step, int]]:
    """For additions whose rule rescales branches at their fork (``skip="rescale_branches"``): map
    (first step of branch b after the fork, fork step) -> (addition, b). The fork is the latest common
    ancestor of the two terms; each branch must leave the fork through one step and be used only
    inside itself, as in residual blocks."""
    from ..errors import UnsupportedLayerError

    index = {s: i for i, s in enumerate(graph.steps)}
    users: dict[Step, list[Step]] = {s: [] for s in graph.steps}
    for s in graph.steps:
        for i in s.inputs:
            users[i].append(s)

    def ancestors(s: Step) -> set[Step]:
        seen, todo = set(), [s]
        while todo:
            t = todo.pop()
            if t not in seen:
                seen.add(t)
                todo.extend(t.inputs)
        return seen

    forks: dict[tuple[Step, Step], tuple[Step, int]] = {}
    for add in graph.steps:
        if add.kind != "add" or getattr(rules.get(add), "skip", None) != "rescale_branches":
            continue
        terms = [graph.by_node.get(n) for n in add.node.args[:2]]
        problem = "" if all(t is not None for t in terms) and terms[0] is not terms[1] else "it adds a tensor to itself"
        if not problem:
            anc = [ancestors(t) for t in terms]  # type: ignore[arg-type]
            common = anc[0] & anc[1]
            if not common:
                problem = "its terms share no ancestor"
            else:
                fork = max(common, key=index.__getitem__)
                branches = [{s for s in a if index[s] > index[fork]} for a in anc]
                if branches[0] & branches[1]:
                    problem = "its branches share steps"
                for b, branch in enumerate(branches):
                    leaving = [s for s in branch if fork in s.inputs] or [add]
                    closed = all(u in branch or u is add for s in branch for u in users[s])
                    if problem or len(leaving) != 1 or not closed:
                        problem = problem or "a branch leaves its fork more than once or is used outside the block"
                        break
                    forks[(leaving[0], fork)] = (add, b)
        if problem:
            raise UnsupportedLayerError(
                f"skip='rescale_branches' cannot handle the addition '{add.name}'{_src(add)}: {problem}; "
                "use skip='proportional'"
            )
    return forks


def _src(step: Step) -> str:
    return f" ({step.node.name})"


def _per_sample(v: Tensor, like: Tensor) -> Tensor:
    return v.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


_FAR = 2.0**16  # rescale when the per-sample max leaves [2⁻¹⁶, 2¹⁶]: far inside every float format's range


def _normalise(r: Tensor, log_s: Tensor, only_if_far: bool = False) -> tuple[Tensor, Tensor]:
    """Divide r by its per-sample max |r| (samples with r == 0 stay), adding the log to log_s.
    With ``only_if_far`` nothing is done while every max lies within [1/_FAR, _FAR] (saves a pass)."""
    lo, hi = torch.aminmax(r.detach().flatten(1), dim=1)
    m = torch.maximum(-lo, hi).to(log_s.dtype)
    m = torch.where(m > 0, m, 1.0)
    if only_if_far and bool(((m <= _FAR) & (m >= 1 / _FAR)).all()):
        return r, log_s
    return r / _per_sample(m.to(r.dtype), r), log_s + torch.log(m)


def _accumulate_scaled(r1: Any, s1: Tensor, r2: Any, s2: Tensor) -> tuple[Any, Tensor]:
    """r1·e^s1 + r2·e^s2 as (r, s) without overflow: both brought to the larger scale."""
    s = torch.maximum(s1, s2)
    if not isinstance(r1, Tensor):
        f1, f2 = torch.exp(s1 - s), torch.exp(s2 - s)
        return tuple(
            b * _per_sample(f2, b) if a is None else a * _per_sample(f1, a) if b is None else
            a * _per_sample(f1, a) + b * _per_sample(f2, b)
            for a, b in zip(r1, r2)
        ), s  # fmt: skip
    return r1 * _per_sample(torch.exp(s1 - s), r1) + r2 * _per_sample(torch.exp(s2 - s), r2), s


def _pair_outputs(out: Any, r: Any) -> tuple[list[Tensor], list[Tensor]]:
    if isinstance(out, Tensor):
        return [out], [r]
    outs, grads = [], []
    for o, g in zip(out, r):
        if g is not None:
            outs.append(o)
            grads.append(g)
    return outs, grads


def _accumulate(prev: Any, new: Any) -> Any:
    if isinstance(prev, Tensor):
        return prev + new
    return tuple(b if a is None else a if b is None else a + b for a, b in zip(prev, new))


def explain(
    model: nn.Module,
    x: Tensor,
    target: Target = "predicted",
    composite: str | Composite | Rule = "epsilon_plus_flat",
    *,
    create_graph: bool = False,
    leaf_modules: Mapping[type, str] | None = None,
) -> Tensor:
    """Relevance of input ``x`` for ``target`` under ``composite``, shaped like ``x``.

    Traces the model on every call; use :class:`Explainer` for repeated calls.
    """
    return Explainer(model, composite, leaf_modules=leaf_modules)(x, target, create_graph=create_graph)
