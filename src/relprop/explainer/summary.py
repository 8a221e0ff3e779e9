"""``Explainer.summary()``: which rule each step got and why, and what the engine knows there."""

from __future__ import annotations

from ..graph import RelevanceGraph, Step
from .plan import Plan


def _facts(graph: RelevanceGraph, plan: Plan, step: Step) -> str:
    notes = []
    rule = plan.rules.get(step)
    if step.batchnorm is not None:
        notes.append("BN folded" + (" (forward: model's own)" if step in plan.exact_forward else ""))
    if step.kind == "linear" and rule is not None and rule.uses_input_sign and step.inputs:
        known = graph.nonneg.get(step.inputs[0])
        notes.append("input >= 0" if known else "input sign checked at run time")
    if plan.neg_silent.get(step):
        notes.append("no R at z < 0")
    if step in plan.alias:
        notes.append("keeps output only")
    if step.custom:
        notes.append("leaf module")
    return ", ".join(notes)


_NO_RULE = {"maxpool": "to each window's winner", "route": "follows the gradient"}


def summary(graph: RelevanceGraph, plan: Plan) -> str:
    """One row per step that relevance crosses: index, name, kind, module type, rule, why, facts."""
    rows = [("#", "step", "kind", "type", "rule", "why", "engine knows")]
    for i, step in enumerate(graph.steps):
        if step.kind in ("const", "meta", "output"):
            continue
        rule = plan.rules.get(step)
        rows.append((
            str(i), step.name, step.kind, step.type_name + ("+BN" if step.batchnorm is not None else ""),
            repr(rule) if rule is not None else "-", plan.reasons.get(step, _NO_RULE.get(step.kind, "")),
            _facts(graph, plan, step),
        ))  # fmt: skip
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = (
        f"relprop Explainer: {type(graph.model).__name__}, composite {plan.composite.name!r}; output relevance "
        f"starts from {'the logit' if plan.seed == 'logit' else '1'}"
        + ("; relevance rescaled per step" if plan.rescale else "")
    )
    return head + "\n" + "\n".join(lines)


__all__ = ["summary"]
