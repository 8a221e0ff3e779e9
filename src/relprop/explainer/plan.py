"""A composite resolved on one relevance graph: the rule of every step, why it was chosen, and the static
facts that let rules skip work that is provably zero.

Everything here is computed once per (graph, composite) from the steps' facts (:mod:`relprop.graph.kinds`)
and the rules' declarations (:class:`relprop.rules.Rule`); nothing tests a rule's class or name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

from ..composites import Composite
from ..errors import UnsupportedLayerError
from ..graph import RelevanceGraph, Step
from ..graph.steps import has_hooks
from ..rules import Rule


@dataclass
class Plan:
    """How one composite explains one graph.

    Attributes:
        composite: the composite.
        rules: the rule of each step that has one.
        reasons: why each step got its rule (name pattern, first layer, layer type, kind default).
        neg_silent: linear/add steps at whose negative outputs no relevance can arrive (every user is a
            ReLU-like step that passes relevance to a consumer that multiplies by its input).
        proportional: steps whose output relevance vanishes wherever the output is zero.
        alias: activations whose pre-activation may be replaced by their output in the forward pass (their
            input is ``neg_silent``: every rule gives the same result from a = relu(z)).
        forks: for additions whose rule rescales branches at their fork: (first step of branch b after the
            fork, fork) -> (addition, b).
        seed: ``"logit"`` or ``"unit"``: what the output relevance starts from (declared by the first rule the
            output relevance meets).
        rescale: rescale relevance per step (a rule declares ``rescaled``), unless overridden.
        exact_forward: linear steps whose folded BatchNorm must run as the model's own module in the forward
            pass (their rule declares ``folded_forward = False``).
    """

    composite: Composite
    rules: dict[Step, Rule]
    reasons: dict[Step, str]
    neg_silent: dict[Step, bool] = field(default_factory=dict)
    proportional: dict[Step, bool] = field(default_factory=dict)
    alias: frozenset[Step] = frozenset()
    forks: dict[tuple[Step, Step], tuple[Step, int]] = field(default_factory=dict)
    seed: str = "logit"
    rescale: bool = False
    exact_forward: frozenset[Step] = frozenset()
    #: what the plan was made from (a preset name, a Composite or a Rule)
    source: Any = None

    @property
    def branch_adds(self) -> set[Step]:
        return {add for add, _ in self.forks.values()}


def make_plan(graph: RelevanceGraph, composite: Composite, rescale: bool | None = None) -> Plan:
    """Resolve ``composite`` on ``graph``; ``rescale`` overrides the rules' ``rescaled`` declaration."""
    rules: dict[Step, Rule] = {}
    reasons: dict[Step, str] = {}
    for step in graph.steps:
        rule, why = composite.match(step)
        if rule is not None:
            rules[step] = rule
            reasons[step] = why
    plan = Plan(composite, rules, reasons)
    plan.proportional = _proportional(graph, rules)
    plan.neg_silent = {
        s: bool(graph.users[s])
        and all(
            u.facts.relu_like
            and u in rules
            and "activation" in rules[u].passes_relevance
            and plan.proportional[u]
            for u in graph.users[s]
        )
        for s in graph.steps
        if s.kind in ("linear", "add")
    }
    plan.alias = frozenset(
        s for s in graph.steps if s.kind == "activation" and s.inputs and plan.neg_silent.get(s.inputs[0], False)
    )
    plan.forks = _branch_forks(graph, rules)
    first = next((rules[s] for s in reversed(graph.steps) if s in rules and s.kind != "input"), None)
    plan.seed = first.seed if first is not None else "logit"
    plan.rescale = any(r.rescaled for r in rules.values()) if rescale is None else bool(rescale)
    plan.exact_forward = frozenset(
        s for s, r in rules.items()
        if s.kind == "linear" and s.batchnorm is not None
        and (not r.folded_forward or has_hooks(s.module) or has_hooks(s.batchnorm))  # (hooks run on the modules)
    )  # fmt: skip
    return plan


def _proportional(graph: RelevanceGraph, rules: Mapping[Step, Rule]) -> dict[Step, bool]:
    """``proportional[s]``: relevance at the output of ``s`` vanishes wherever the output is zero, because
    every consumer either multiplies by its input or passes relevance through an operation that keeps zeros
    to a consumer that does."""
    proportional: dict[Step, bool] = {}

    def consumes_proportionally(u: Step) -> bool:
        if u.kind in ("meta", "const"):
            return True
        rule = rules.get(u)
        if rule is not None and u.kind in rule.multiplies_input:
            return True
        routes = u.kind in ("route", "maxpool") if rule is None else u.kind in rule.passes_relevance
        return routes and u.facts.zero_at_zero and proportional.get(u, False)

    for s in reversed(graph.steps):
        proportional[s] = all(consumes_proportionally(u) for u in graph.users[s])
    return proportional


def _branch_forks(graph: RelevanceGraph, rules: Mapping[Step, Rule]) -> dict[tuple[Step, Step], tuple[Step, int]]:
    """For additions whose rule rescales branches at their fork: map (first step of branch b after the fork,
    fork step) -> (addition, b). The fork is the latest common ancestor of the two terms; each branch must
    leave the fork through one step and be used only inside itself, as in residual blocks."""
    index = {s: i for i, s in enumerate(graph.steps)}
    users = graph.users

    def ancestors(s: Step) -> set[Step]:
        seen: set[Step] = set()
        todo = [s]
        while todo:
            t = todo.pop()
            if t not in seen:
                seen.add(t)
                todo.extend(t.inputs)
        return seen

    forks: dict[tuple[Step, Step], tuple[Step, int]] = {}
    for add in graph.steps:
        rule = rules.get(add)
        if add.kind != "add" or rule is None or not rule.rescales_branches:
            continue
        found = [graph.by_node.get(n) if isinstance(n, fx.Node) else None for n in add.node.args[:2]]
        terms = [t for t in found if t is not None]
        problem = "" if len(terms) == 2 and terms[0] is not terms[1] else "it adds a tensor to itself"
        if not problem:
            anc = [ancestors(t) for t in terms]
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
                f"skip='rescale_branches' cannot handle the addition '{add.name}' ({add.node.name}): {problem}; "
                "use skip='proportional'"
            )
    return forks


__all__ = ["Plan", "make_plan"]
