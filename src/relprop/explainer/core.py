"""The Explainer: one forward pass over the relevance graph, then any number of relevance passes.

Relevance is computed like a gradient: the forward pass keeps each step's output, then steps are visited in
reverse and each one maps the relevance at its output to relevance at its inputs with its rule (see
:mod:`relprop.explainer.backward`). The walk uses ordinary differentiable torch operations, so with
``create_graph=True`` the relevance can be differentiated with respect to the model's parameters (double
backpropagation, as ISNet training needs); without it everything runs under ``no_grad`` and costs about as
much as a plain input gradient.

One forward feeds many passes: :meth:`Explainer.forward` returns a :class:`ForwardPass` whose
:meth:`~ForwardPass.explain` takes any target and any composite (ISNet's maps, per-class heatmaps, metrics).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from ..composites import Composite, resolve
from ..errors import InputError, ModelOutputError, RelpropError, UsageError, WrappedModelError
from ..graph import LINEAR_MODULES, LinearMap, RelevanceGraph, Step
from ..graph.batchnorm import running_stats_kept
from ..graph.linear_map import modified_cache
from ..graph.tracer import SizeDependentTracingError
from ..rules import Rule
from .backward import relevance_pass
from .layers import LayerIndex
from .plan import Plan, make_plan
from .rescale import normalise
from .summary import summary
from .targets import Target, output_relevance

CompositeLike = str | Composite | Rule
#: which returned tensor holds the logits: a tuple index, a dict key / NamedTuple field, or a callable picking one
OutputSelector = int | str | Callable[[Any], Any]
_MAX_PLANS = 16
#: traces kept per input shape, for a model whose forward branches on input sizes
_MAX_SHAPES = 4


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
        layers: the relevance at the output of each module named in ``explain(..., layers=[...])``, shaped like
            that module's output: the relevance that arrives at that tensor in the backward pass (summed over the
            steps that read it), differentiable like ``relevance`` with ``create_graph=True``. Empty unless asked.
        layer_log_scale: for composites that rescale relevance (see ``log_scale``), each layer's own per-sample
            log factor: the unscaled relevance is ``layers[name] * exp(layer_log_scale[name])`` (``layers[name]``
            has max |R| = 1 per sample). Empty otherwise.
    """

    relevance: Tensor
    logits: Tensor
    targets: Tensor | None
    output_relevance: Tensor
    log_scale: Tensor | None = None
    layers: dict[str, Tensor] = field(default_factory=dict)
    layer_log_scale: dict[str, Tensor] = field(default_factory=dict)

    @property
    def conservation_error(self) -> Tensor:
        """Per sample |Σ R_input − Σ R_output| / |Σ R_output| (in float64, per-step rescaling undone).

        The one definition (``relprop.evaluation.conservation_error`` is this). A sample without output
        relevance (Σ R_output = 0, e.g. a zero seed) has no relative error: NaN where Σ R_input = 0 too,
        Inf where relevance appeared from nothing."""
        r_in = self.relevance.detach().double().flatten(1).sum(1)
        if self.log_scale is not None:
            r_in = r_in * self.log_scale.detach().double().exp()
        r_out = self.output_relevance.detach().double().flatten(1).sum(1)
        return (r_in - r_out).abs() / r_out.abs()


class Explainer:
    """Explains one model; reuse it for repeated calls (the graph is traced once, modified weights are cached).

    Args:
        model: a PyTorch model mapping a tensor (B, ...) to logits (B, C). It is never modified: its
            parameters, buffers, hooks and training flag are left as they were (in training mode too,
            BatchNorm's running statistics are not updated, unless a training step asks for it with
            ``forward(x, update_stats=True)``). Explanations use the mode the model is in (call
            ``model.eval()`` first for the usual explanations).
        composite: the default composite: a preset name (see :mod:`relprop.composites`), a
            :class:`Composite`, or a single :class:`~relprop.rules.Rule`.
        leaf_modules: module classes to treat as one step instead of tracing into them, with the kind
            of step: ``"pass"``, ``"route"`` or ``"activation"``.
        rescale: rescale relevance at every step (keeping the factor in ``Explanation.log_scale``); None:
            where a rule declares it needs it (R-LRP).
        output: for a model that returns several tensors, which one holds the logits: an index into a
            returned tuple (``0``), a key of a returned dict or a field of a returned NamedTuple
            (``"logits"``), or a callable on the returned structure that picks one entry
            (``lambda out: out["logits"]``). The other entries are computed but not explained.
        input_shape: for a model whose forward branches in Python on input sizes (``if H % 2:``, timm's
            dynamic "same" padding, MobileViT's patch resizing), which ``torch.fx`` cannot trace for every
            shape: the input shape (B, C, H, W) to trace it for now. Without it such a model is traced at the
            first call, for that input's shape; an input of another shape is traced again (a few traces are
            kept, one per shape). Models without such branches are traced once for every shape and ignore it.

    Example::

        explainer = relprop.Explainer(model.eval(), "epsilon_plus_flat")
        relevance = explainer(images, target="predicted")
        print(explainer.summary())                      # which rule each step got, and why

        fp = explainer.forward(images, composites=["epsilon"])   # one forward ...
        per_class = [fp.explain(c).relevance for c in range(10)]  # ... many relevance passes
        eps = fp.explain(labels, composite="epsilon")

    Modified weights (W⁺, folded BatchNorm, ...) are cached between calls and recomputed when a
    parameter or buffer changes through PyTorch (optimiser steps, ``load_state_dict``, in-place edits
    under ``torch.no_grad()``). Edits through ``param.data`` bypass PyTorch's version counters: call
    :meth:`clear_cache` after them.
    """

    def __init__(
        self,
        model: nn.Module,
        composite: CompositeLike = "epsilon_plus_flat",
        *,
        leaf_modules: Mapping[type, str] | None = None,
        rescale: bool | None = None,
        output: OutputSelector | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self._model: nn.Module | None = model  # None when held only weakly (the functional cache)
        self._model_ref = weakref.ref(model)
        self._leaf_modules = dict(leaf_modules or {})
        self._rescale = rescale
        self._output = output
        self.composite = resolve(composite)
        #: traces specialised to one input shape (the model branches on sizes), newest last
        self._by_shape: OrderedDict[tuple[int, ...], _Trace] = OrderedDict()
        #: why the model cannot be traced for every shape (None: it can, or it was not tried yet)
        self._size_dependent: SizeDependentTracingError | None = None
        self._structure = model_structure(model)
        #: the trace last used: the one trace of the model, or the last shape-specialised one (None before the
        #: first call of a model traced per shape)
        self._trace: _Trace | None = self._plain_trace(model)
        if self._trace is None and input_shape is not None:
            self._trace = self._trace_for(model, _example(model, tuple(int(d) for d in input_shape)))

    @property
    def model(self) -> nn.Module:
        if self._model is not None:
            return self._model
        model = self._model_ref()
        if model is None:
            raise RuntimeError("the model of this explainer has been deleted")
        return model

    @property
    def graph(self) -> RelevanceGraph:
        """The relevance graph of the model as it was last traced (again when its training flags, submodules
        or hooks changed: see :func:`model_structure`; for a model traced per input shape, the last shape's)."""
        return self._traced().graph

    @property
    def specialised_to(self) -> tuple[int, ...] | None:
        """The input shape :attr:`graph` is traced for, where the model's forward branches on input sizes
        (another shape is traced again at its call); None when the graph holds for every input shape."""
        return self._traced().graph.specialised_to

    @property
    def plan(self) -> Plan:
        """The default composite's plan on :attr:`graph`."""
        return self._traced().plan

    @property
    def rules(self) -> dict[Step, Rule]:
        """The rule of each step under the default composite."""
        return self.plan.rules

    def plan_for(self, composite: CompositeLike | None) -> Plan:
        """The default composite's plan (None), or another composite's, resolved on this graph once."""
        return self._traced().plan_for(composite)

    def _plain_trace(self, model: nn.Module) -> _Trace | None:
        """The trace for every input shape, or None where the forward branches on input sizes."""
        try:
            return _Trace(model, self._leaf_modules, self.composite, self._rescale, self._output)
        except SizeDependentTracingError as exc:
            self._size_dependent = exc
            return None

    def _trace_for(self, model: nn.Module, x: Tensor) -> _Trace:
        """The trace specialised to ``x``'s shape (cached per shape)."""
        shape = tuple(x.shape)
        hit = self._by_shape.get(shape)
        if hit is None:
            hit = _Trace(model, self._leaf_modules, self.composite, self._rescale, self._output, example_input=x)
            self._by_shape[shape] = hit
            while len(self._by_shape) > _MAX_SHAPES:
                self._by_shape.popitem(last=False)
        self._by_shape.move_to_end(shape)
        return hit

    def _current(self, x: Tensor | None = None) -> _Trace | None:
        """The trace of the model as it is now: traced again when a training flag, a submodule or a hook changed
        since (``F.dropout(x, p, self.training)`` and ``if self.training:`` are fixed when fx traces, and the
        graph calls the submodules it found). For a model whose forward branches on input sizes, the trace for
        ``x``'s shape (without ``x``: the last one used, None before any)."""
        model = self.model
        structure = model_structure(model)
        if structure != self._structure:
            self._structure = structure
            self._by_shape.clear()
            self._size_dependent = None
            self._trace = self._plain_trace(model)
        if x is not None and self._size_dependent is not None:
            self._trace = self._trace_for(model, x)
        return self._trace

    def _traced(self) -> _Trace:
        """The current trace; for a model traced per input shape before its first call, an error saying so."""
        trace = self._current()
        if trace is None:
            assert self._size_dependent is not None
            raise SizeDependentTracingError(
                f"{type(self.model).__name__} has no graph yet: {_deferred(self._size_dependent)}; call "
                "explain(x) / forward(x) first, or pass Explainer(..., input_shape=x.shape)"
            )
        return trace

    # -- public ----------------------------------------------------------------------------------
    def clear_cache(self) -> None:
        """Forget cached modified weights (needed only after edits through ``param.data``)."""
        traces = {id(t): t for t in (self._trace, *self._by_shape.values()) if t is not None}
        for trace in traces.values():
            for step in trace.graph.steps:
                if step.module is not None:
                    modified_cache(step.module).clear()

    def __call__(self, x: Tensor, target: Target = "predicted", *, create_graph: bool = False) -> Tensor:
        """Relevance of ``x`` for ``target``, shaped like ``x``."""
        return self.explain(x, target, create_graph=create_graph).relevance

    def explain(
        self, x: Tensor, target: Target = "predicted", *, create_graph: bool = False, layers: Sequence[str] = (),
    ) -> Explanation:  # fmt: skip
        """Explain ``x`` with the default composite.

        Args:
            x: input batch (B, ...), floating point, finite.
            target: class index (int), indices per sample (int tensor of shape (B,)), ``"predicted"``
                (the arg-max logit), a float tensor (B, C) used directly as output relevance, or a
                callable on the logits returning either of the tensor forms.
            create_graph: keep the computation graph so the relevance can be differentiated with
                respect to the input and the model's parameters.
            layers: names of submodules (as in ``model.named_modules()``) whose output relevance to return too,
                in :attr:`Explanation.layers` (each module must be called once and return one tensor).
        """
        trace = self._ready(x)
        hidden = trace.layer_steps(layers) if layers else None
        with torch.enable_grad() if create_graph else torch.no_grad(), running_stats_kept(self.model):
            env, logits = self._forward(trace, x, (trace.plan,))
            return _pass(trace.graph, trace.plan, env, logits, x, target, create_graph, trace.plan.alias, hidden)

    def forward(
        self, x: Tensor, *, composites: Iterable[CompositeLike] = (), create_graph: bool = False,
        update_stats: bool = False,
    ) -> ForwardPass:  # fmt: skip
        """One forward pass of ``x``, ready for any number of relevance passes (:meth:`ForwardPass.explain`).

        Args:
            x: input batch (B, ...), floating point, finite.
            composites: other composites the passes will use besides the default one: the forward pass
                then keeps what every one of them needs.
            create_graph: the passes keep the computation graph (for losses on the relevance).
            update_stats: update the running statistics of BatchNorm layers in training mode, exactly as one
                ``model(x)`` would: for a training step whose logits are this forward pass's (ISNet). By
                default (and always in the relevance passes) no buffer of the model changes.
        """
        trace = self._ready(x)
        plans = (trace.plan, *(trace.plan_for(c) for c in composites))
        with (
            torch.enable_grad() if create_graph else torch.no_grad(),
            nullcontext() if update_stats else running_stats_kept(self.model),
        ):
            env, logits = self._forward(trace, x, plans)
        alias = frozenset.intersection(*(p.alias for p in plans))
        return ForwardPass(self, x, env, logits, alias, create_graph, trace)

    def summary(self, composite: CompositeLike | None = None) -> str:
        """A table of the steps: kind, module, the rule each got and why, and what the engine knows there."""
        trace = self._current()
        if trace is None:
            assert self._size_dependent is not None
            return (
                f"{type(self.model).__name__}: the graph is traced at the first call, for that input's shape "
                f"({_deferred(self._size_dependent)}); call explain(x) first, or pass "
                "Explainer(..., input_shape=x.shape), to see its steps"
            )
        text = summary(trace.graph, trace.plan_for(composite))
        shape = trace.graph.specialised_to
        if shape is not None:
            text += (
                f"\nTraced for input shape {shape} (the forward branches on input sizes); "
                "an input of another shape is traced again."
            )
        return text

    # -- forward ---------------------------------------------------------------------------------
    def _ready(self, x: Tensor) -> _Trace:
        """The current trace, once ``x`` and the model's output are known to be explainable."""
        self._check_tensor(x)
        trace = self._current(x)
        assert trace is not None  # (traced for x's shape where the model needs one)
        self._check_first_layer(trace.graph, x)
        if not trace.reaches_input:
            raise ModelOutputError(
                f"no relevance reaches the input: the output of {type(self.model).__name__} does not depend on "
                "the input (it is computed from parameters or constants only, or the input is used only for its "
                "shape); relprop explains outputs computed from the input tensor"
            )
        return trace

    def _check_tensor(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise InputError(f"input must be a torch.Tensor, not {type(x).__name__}")
        if x.device.type == "meta":
            raise InputError(
                f"the input (shape {tuple(x.shape)}) is on the meta device: it has a shape but no values to "
                "explain; pass a tensor with data (e.g. on 'cpu' or 'cuda')"
            )
        if not x.is_floating_point():
            raise InputError(f"input has dtype {x.dtype}; relprop needs a floating-point input (e.g. x.float() / 255)")
        if x.dim() == 0 or x.shape[0] == 0:
            raise InputError(
                f"the batch is empty (input shape {tuple(x.shape)}): explain at least one sample, shape (B, ...) "
                "with B >= 1"
            )
        _check_model_matches(self.model, x)
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise InputError(
                f"input contains {n_nan} NaN and {n_inf} Inf values (first at index {where}); "
                "relevance of non-finite inputs is undefined"
            )

    def _check_first_layer(self, graph: RelevanceGraph, x: Tensor) -> None:
        first = next((s for s in graph.steps if s.kind == "linear"), None)
        if first is None or first.inputs[:1] != [graph.input]:
            return
        module = first.module
        if isinstance(module, nn.Linear) and x.shape[-1] != module.in_features:
            raise InputError(
                f"input has shape {tuple(x.shape)} but the first layer '{first.name}' (Linear) expects "
                f"{module.in_features} features in the last dimension: shape (B, {module.in_features})"
            )
        if isinstance(module, LINEAR_MODULES) and not isinstance(module, nn.Linear):
            nd = len(module.kernel_size)
            cin = module.in_channels
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

    def _forward(self, trace: _Trace, x: Tensor, plans: Iterable[Plan]) -> tuple[dict[Any, Any], Tensor]:
        """Run the model step by step; returns the environment (every step's value) and the logits. Activations
        in every plan's alias set keep only their output; BatchNorm is folded into the forward pass except where
        a plan's rule asks for the model's own layers."""
        plans = tuple(plans)
        alias = frozenset.intersection(*(p.alias for p in plans))
        exact = frozenset().union(*(p.exact_forward for p in plans))
        env: dict[Any, Any] = {}
        logits: Any = None
        graph = trace.graph
        for step in graph.steps:
            if step.kind == "input":
                env[step.node] = x
                continue
            if step.kind == "output":
                logits = env[graph.output.inputs[0].node] if graph.output.inputs else None
                break
            assert step.call is not None
            try:
                if step.kind == "maxpool":
                    env[step.node], env[(step.node, "indices")] = step.call(env)
                elif step.batchnorm is not None and step not in exact and not _batch_statistics(step.batchnorm):
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
            raise ModelOutputError(
                f"{type(self.model).__name__} returned {got}; relprop explains models that return logits "
                "of shape (B, C). Wrap the model so that forward returns that tensor."
            )
        return env, logits


class ForwardPass:
    """One forward pass of a batch (from :meth:`Explainer.forward`), shared by any number of relevance passes.

    Attributes:
        logits: the model's output (B, C) (with its graph when the forward pass was made with
            ``create_graph=True``).
        x: the input batch.
    """

    def __init__(
        self, explainer: Explainer, x: Tensor, env: dict[Any, Any], logits: Tensor, alias: frozenset[Step],
        create_graph: bool, trace: _Trace | None = None,
    ) -> None:  # fmt: skip
        self.explainer = explainer
        self._trace = trace if trace is not None else explainer._traced()  # the graph this forward pass ran
        self.x = x
        self.logits = logits
        self.create_graph = create_graph
        self._env = env
        self._alias = alias

    def explain(
        self, target: Target = "predicted", *, composite: CompositeLike | None = None, layers: Sequence[str] = (),
    ) -> Explanation:  # fmt: skip
        """A relevance pass from ``target`` (any :class:`Explainer.explain` target; a float (B, C) tensor is the
        output relevance itself, e.g. computed from :attr:`logits`) with ``composite`` (default: the
        explainer's). The forward pass is not repeated. ``layers``: submodule names whose output relevance to
        return too (:attr:`Explanation.layers`, see :meth:`Explainer.explain`)."""
        ex = self.explainer
        plan = self._trace.plan_for(composite)
        hidden = self._trace.layer_steps(layers) if layers else None
        if not self._alias <= plan.alias:
            raise ValueError(
                f"composite {plan.composite.name!r} needs pre-activations that this forward pass did not keep; "
                f"pass it to Explainer.forward(x, composites=[...]) so the forward pass keeps them"
            )
        with torch.enable_grad() if self.create_graph else torch.no_grad(), running_stats_kept(ex.model):
            return _pass(
                self._trace.graph, plan, dict(self._env), self.logits, self.x, target, self.create_graph, self._alias,
                hidden,
            )  # fmt: skip

    def relevance(self, target: Target = "predicted", *, composite: CompositeLike | None = None) -> Tensor:
        """``explain(target, composite=...).relevance``."""
        return self.explain(target, composite=composite).relevance


def _pass(
    graph: RelevanceGraph, plan: Plan, env: dict[Any, Any], logits: Tensor, x: Tensor, target: Target,
    create_graph: bool, alias: frozenset[Step], hidden: Mapping[str, Step] | None = None,
) -> Explanation:  # fmt: skip
    seed, targets = output_relevance(logits, target, plan.seed)
    if not hidden:
        relevance, log_scale = relevance_pass(graph, plan, env, seed, x, create_graph, alias)
        return Explanation(relevance, logits if create_graph else logits.detach(), targets, seed, log_scale)
    outputs: dict[Step, Tensor] = {}
    for name, step in hidden.items():
        value = env.get(step.node)
        if not isinstance(value, Tensor):
            raise UsageError(
                f"module {name!r} returns {type(value).__name__}, not one tensor; hidden-layer relevance needs a "
                "module whose output is a tensor: ask for a submodule that returns one"
            )
        outputs[step] = value
    capture: dict[Step, Any] = dict.fromkeys(outputs)
    relevance, log_scale = relevance_pass(graph, plan, env, seed, x, create_graph, alias, capture)
    layers: dict[str, Tensor] = {}
    layer_log_scale: dict[str, Tensor] = {}
    batch = seed.shape[0]
    for name, step in hidden.items():
        got = capture[step]
        if got is None:  # no relevance reaches this output (it is not on a path to the explained logits)
            r = torch.zeros_like(outputs[step])
            log_s = seed.new_zeros(batch, dtype=torch.float64) if plan.rescale else None
        else:
            r, log_s = got
        if log_s is not None:
            r, log_s = normalise(r, log_s, uniform=r.dim() == 0 or r.shape[0] != batch)
            layer_log_scale[name] = log_s
        layers[name] = r
    if not create_graph:
        logits = logits.detach()
    return Explanation(relevance, logits, targets, seed, log_scale, layers, layer_log_scale)


def model_structure(model: nn.Module) -> tuple[Any, ...]:
    """What a trace of ``model`` depends on besides its parameters: every submodule (name and identity), its
    training flag and its number of forward hooks. A trace is used only while this is unchanged."""
    return tuple(
        (name, id(m), m.training, len(m._forward_hooks), len(m._forward_pre_hooks))
        for name, m in model.named_modules(remove_duplicate=False)
    )


class _Trace:
    """One trace of the model: its relevance graph, the plans resolved on it, and what it depends on."""

    def __init__(
        self, model: nn.Module, leaf_modules: Mapping[type, str], composite: Composite, rescale: bool | None,
        output: OutputSelector | None = None, example_input: Tensor | None = None,
    ) -> None:  # fmt: skip
        _check_not_wrapped(model)
        self.structure = model_structure(model)
        self.graph = RelevanceGraph(model, leaf_modules, example_input=example_input)
        _select_output(self.graph, model, output)
        self.rescale = rescale
        self.plans: dict[Any, Plan] = {}
        self.plan: Plan = self.plan_for(composite)
        self.reaches_input = _reaches_input(self.graph)
        self._layers: LayerIndex | None = None

    def layer_steps(self, names: Sequence[str]) -> dict[str, Step]:
        """The step whose output is each named module's output (for ``explain(..., layers=names)``)."""
        if self._layers is None:
            self._layers = LayerIndex(self.graph)
        return self._layers.resolve(names)

    def plan_for(self, composite: CompositeLike | None) -> Plan:
        if composite is None:
            return self.plan
        key: Any = composite if isinstance(composite, str) else id(composite)
        hit = self.plans.get(key)
        if hit is None or hit.source is not composite:
            if len(self.plans) >= _MAX_PLANS:  # composites built per call: keep the newest
                del self.plans[next(iter(self.plans))]
            hit = make_plan(self.graph, resolve(composite), self.rescale)
            hit.source = composite
            self.plans[key] = hit
        return hit


def _deferred(exc: SizeDependentTracingError) -> str:
    """Where the forward needs an input size, from the tracing error."""
    where = exc.where if exc.where and exc.where != "unknown location" else ""
    return f"its forward branches on input sizes at {where}" if where else "its forward branches on input sizes"


def _example(model: nn.Module, shape: tuple[int, ...]) -> Tensor:
    """An (uninitialised) input of ``shape`` on the model's device and of its dtype: tracing reads only its shape."""
    param = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    if param is None:
        return torch.empty(shape)
    return torch.empty(shape, dtype=param.dtype, device=param.device)


def _reaches_input(graph: RelevanceGraph) -> bool:
    """Whether the explained output is computed from the input through the graph's steps."""
    seen: set[int] = set()
    todo = list(graph.output.inputs)
    while todo:
        step = todo.pop()
        if step is graph.input:
            return True
        if id(step) not in seen:
            seen.add(id(step))
            todo.extend(step.inputs)
    return False


# -- what is explained: the model itself, its logits, an input that fits it -------------------------------------
def _wrapper(m: nn.Module) -> tuple[str, str, str] | None:
    """For a wrapper relprop cannot trace: why, what to explain instead, and what to put in its place as a
    submodule; None for any other module."""
    if isinstance(m, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return (
            "it runs the wrapped model on several devices", "the wrapped model itself: model.module",
            "the module it wraps (its .module)",
        )  # fmt: skip
    if isinstance(m, torch.jit.ScriptModule):
        return (
            "TorchScript (torch.jit.script/trace/load) has no Python forward to trace",
            "the eager nn.Module it was made from, or build the architecture and load the TorchScript weights "
            "into it: eager = MyModel(); eager.load_state_dict(scripted.state_dict())",
            "the eager module it was made from (with load_state_dict(scripted.state_dict()))",
        )
    if type(m).__name__ == "OptimizedModule" and isinstance(getattr(m, "_orig_mod", None), nn.Module):
        return (
            "torch.compile'd modules run through TorchDynamo", "the original module: model._orig_mod",
            "the original module (its ._orig_mod)",
        )  # fmt: skip
    return None


def _check_not_wrapped(model: nn.Module) -> None:
    """Wrappers are refused before tracing (fx's own message about them names unrelated control flow)."""
    for name, m in model.named_modules():
        found = _wrapper(m)
        if found is None:
            continue
        why, root_fix, sub_fix = found
        if not name:
            raise WrappedModelError(f"relprop cannot trace a {type(m).__name__} model ({why}); explain {root_fix}")
        raise WrappedModelError(
            f"submodule '{name}' is a {type(m).__name__}, which relprop cannot trace ({why}); replace it in the "
            f"model by {sub_fix}"
        )


def _describe_output(arg: Any) -> str:
    if isinstance(arg, dict):
        return f"a dict with keys {', '.join(repr(k) for k in arg)}"
    if isinstance(arg, tuple) and hasattr(arg, "_fields"):
        return f"a {type(arg).__name__} with fields {', '.join(repr(k) for k in arg._fields)}"
    if isinstance(arg, (tuple, list)):
        return f"a {type(arg).__name__} of {len(arg)} outputs"
    return type(arg).__name__


def _output_hint(arg: Any) -> str:
    """An ``output=`` that would select the logits from the structure ``arg``."""
    if isinstance(arg, dict):
        key = next((k for k in arg if str(k).lower() in ("logits", "out", "output", "scores")), next(iter(arg), None))
        return f"output={key!r} (or a callable, output=lambda out: out[{key!r}])"
    if isinstance(arg, tuple) and hasattr(arg, "_fields"):
        field = next((f for f in arg._fields if f.lower() in ("logits", "out", "output")), arg._fields[0])
        return f"output={field!r} (or output=0, or a callable, output=lambda out: out.{field})"
    return "output=0 for the first (or a callable, output=lambda out: out[0])"


def _select_output(graph: RelevanceGraph, model: nn.Module, output: OutputSelector | None) -> None:
    """Make the graph's output step the selected logits: the relevance pass starts there, and the other
    returned tensors become ordinary values nobody reads."""
    out_step = graph.output
    arg = out_step.node.args[0]
    name = type(model).__name__
    if output is None:
        if isinstance(arg, fx.Node):
            return
        raise ModelOutputError(
            f"{name} returns {_describe_output(arg)}; relprop explains one tensor of logits of shape (B, C): say "
            f"which with Explainer(model, ..., {_output_hint(arg)}) or relprop.explain(..., output=...)"
        )
    if isinstance(arg, fx.Node) and not callable(output):
        raise ModelOutputError(
            f"output={output!r}, but {name} returns a single tensor (as traced): leave out output=, which selects "
            "among the entries of a returned tuple or dict"
        )
    try:
        if callable(output):
            picked = output(arg)
        elif isinstance(output, str) and isinstance(arg, tuple) and hasattr(arg, "_fields"):
            picked = getattr(arg, output)
        else:
            picked = cast(Any, arg)[output]
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ModelOutputError(
            f"output={output!r} selects nothing from what {name} returns, {_describe_output(arg)} "
            f"({type(exc).__name__}: {exc}); use {_output_hint(arg)}"
        ) from exc
    step = graph.by_node.get(picked) if isinstance(picked, fx.Node) else None
    if step is None or step.kind in ("const", "meta"):
        raise ModelOutputError(
            f"output={output!r} must select one tensor computed by {name}, got {type(picked).__name__} from "
            f"{_describe_output(arg)}; use {_output_hint(arg)}"
        )
    for other in out_step.inputs:
        graph.users[other] = [u for u in graph.users[other] if u is not out_step]
    out_step.inputs = [step]
    graph.users[step].append(out_step)


def _check_model_matches(model: nn.Module, x: Tensor) -> None:
    """The input is on the model's device and of its dtype (where the model's floating-point tensors agree)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    devices = {t.device for t in tensors}
    if len(devices) == 1:
        (device,) = devices
        if device.type == "meta":
            raise InputError(
                f"the model's parameters are on the meta device (shapes without values) and the input is on "
                f"{x.device}: materialise the model on the input's device and load its weights first, "
                f"model.to_empty(device='{x.device}') then model.load_state_dict(state_dict)"
            )
        if device != x.device:
            raise InputError(
                f"the input is on {x.device} but the model's parameters are on {device}: move the input with "
                f"x.to('{device}') (or the model with model.to('{x.device}'))"
            )
    dtypes = {t.dtype for t in model.parameters() if t.is_floating_point()}
    if len(dtypes) == 1:
        (dtype,) = dtypes
        if dtype != x.dtype:
            to_x = _DTYPE_METHOD.get(dtype, f"to({dtype})")
            to_m = _DTYPE_METHOD.get(x.dtype, f"to({x.dtype})")
            raise InputError(
                f"the input has dtype {x.dtype} but the model's parameters are {dtype}: convert the input with "
                f"x.{to_x} (or the model with model.{to_m})"
            )


_DTYPE_METHOD = {
    torch.float32: "float()", torch.float64: "double()", torch.float16: "half()", torch.bfloat16: "bfloat16()",
}  # fmt: skip


def _batch_statistics(bn: nn.Module) -> bool:
    return bool(bn.training) or getattr(bn, "running_mean", None) is None


__all__ = ["Explainer", "Explanation", "ForwardPass", "OutputSelector", "Target", "model_structure"]
