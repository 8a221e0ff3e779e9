"""The R-LRP study's measurements of one model: one function per measured property, all filling one result
dict (its key order is that of results.json), and the full-size NaN/Inf, bfloat16 and timing checks."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from tqdm import tqdm

from ...composites import Composite, epsilon_plus_flat, zero
from ...evaluation import metrics
from ...explainer import Explainer
from ...rules import Epsilon, Zero
from .cases import Case, imagenet_bounds, imagenet_norm
from .config import Config
from .methods import ALL_METHODS, EPS_SERIES, GAMMA_SERIES, MAIN_METHODS, sign_free_split_rlrp
from .perturb import bias_of, biased_modules, nudge_biases, randomised_copies, weight_noise_copy

#: models whose time per image is measured at the small size (the others at full size)
TIMED_CASES = ("lenet5", "simplecnn")


class NonFinite:
    """Counts NaN/Inf relevance values per method over every explanation a study computes."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.values: dict[str, int] = {}

    def explain(self, explainer: Explainer, key: str, x: Tensor, target: Tensor) -> Tensor:
        r = explainer(x, target)
        self.counts[key] = self.counts.get(key, 0) + int((~torch.isfinite(r)).sum())
        self.values[key] = self.values.get(key, 0) + r.numel()
        return r


def finite(r: Tensor) -> bool:
    return bool(torch.isfinite(r).all())


def mean(v: Tensor) -> float:
    return float(v.double().mean())


def sem(v: Tensor) -> float:
    """Standard error of the mean (0 for a single value)."""
    return float(v.double().std() / math.sqrt(v.numel())) if v.numel() > 1 else 0.0


def one_minus(r: Tensor) -> tuple[float, float]:
    """1 − mean r and the worst input's 1 − r."""
    d = 1.0 - r.double()
    return float(d.mean()), float(d.max())


def relative_change(new: Tensor, old: Tensor) -> Tensor:
    """|new − old| / |old| (old clamped away from 0)."""
    return (new - old).abs() / old.abs().clamp_min(1e-30)


def abs_similarity(reference: Tensor, r: Tensor) -> Tensor:
    """Spearman correlation of |channel-summed heatmap|, as in
    :func:`relprop.evaluation.metrics.randomisation_check`."""
    return metrics.heatmap_correlation(reference.sum(1, keepdim=True).abs(), r.sum(1, keepdim=True).abs(), "spearman")


def time_per_image(explainer: Explainer, x1: Tensor, target: Tensor, reps: int) -> float:
    """Median seconds of one explanation of one image on one thread (after one untimed warm-up)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        explainer(x1, target)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            explainer(x1, target)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times))


@dataclass
class Measurement:
    """What the measures of one case share: the case, the settings, the progress bar, the unperturbed
    logits and targets, every method's composite and explainer, the NaN/Inf counter and the clean relevance,
    and the result dict they fill."""

    case: Case
    cfg: Config
    bar: tqdm
    logits: Tensor
    target: Tensor
    composites: dict[str, Composite]
    explainers: dict[str, Explainer]
    nonfinite: NonFinite = field(default_factory=NonFinite)
    relevance: dict[str, Tensor] = field(default_factory=dict)
    res: dict[str, Any] = field(default_factory=dict)

    def status(self, text: str) -> None:
        self.bar.set_postfix_str(f"{self.case.key}: {text}")

    def method(self, key: str) -> dict[str, Any]:
        """The result dict of method ``key``."""
        out: dict[str, Any] = self.res["methods"][key]
        return out

    def pair(self, a: str, b: str) -> float:
        """Mean Pearson correlation of the clean heatmaps of methods ``a`` and ``b``."""
        return mean(metrics.heatmap_correlation(self.relevance[a], self.relevance[b]))


def start_run(case: Case, cfg: Config, bar: tqdm) -> Measurement:
    with torch.no_grad():
        logits = case.model(case.x)
    composites = {m.key: m.build(case.low, case.high) for m in ALL_METHODS}
    explainers = {k: Explainer(case.model, c) for k, c in composites.items()}
    run = Measurement(case, cfg, bar, logits, logits.argmax(1), composites, explainers)
    run.res = {"label": case.label, "methods": {k: {} for k in composites}, "curves": {}}
    return run


def explain_all(run: Measurement) -> None:
    """The clean heatmap of every method for the predicted class."""
    for k, e in run.explainers.items():
        run.status(f"explain {k}")
        run.relevance[k] = run.nonfinite.explain(e, k, run.case.x, run.target)


def pixel_flipping(run: Measurement) -> None:
    """Faithfulness: MoRF and LeRF AOPC (mean and standard error) and the mean perturbation curves."""
    case = run.case
    for m in MAIN_METHODS:
        run.status(f"pixel flipping {m.key}")
        out = run.method(m.key)
        r = run.relevance[m.key]
        curves = {}
        for order in ("morf", "lerf"):
            if not finite(r):
                out[order] = out[f"{order}_sem"] = float("nan")
                continue
            c = metrics.pixel_flipping(
                case.model, case.x, r, run.target, order=order, steps=case.pf_steps, patch=case.patch,
                baseline=0.0, batch_size=run.cfg.pf_batch,
            )  # fmt: skip
            a = metrics.aopc(c)
            out[order], out[f"{order}_sem"] = mean(a), sem(a)
            curves[order] = c.scores.double().mean(0).tolist()
            run.res["fractions"] = c.fractions.tolist()
        out["morf_minus_lerf"] = out["morf"] - out["lerf"]
        run.res["curves"][m.key] = curves


def input_noise(run: Measurement) -> None:
    """Stability under tiny input noise: 1 − r with the clean heatmap (mean and worst input)."""
    for m in MAIN_METHODS:
        run.status(f"input noise {m.key}")
        e = run.explainers[m.key]

        def fn(xx: Tensor, tt: Tensor, _e: Explainer = e, _k: str = m.key) -> Tensor:
            return run.nonfinite.explain(_e, _k, xx, tt)

        r = metrics.stability(fn, run.case.x, run.target, noise=run.cfg.noise, n=run.case.draws, seed=run.cfg.seed)
        run.method(m.key)["noise"], run.method(m.key)["noise_worst"] = one_minus(r)


def weight_noise(run: Measurement) -> None:
    """Every weight and bias scaled by (1 + u), |u| ≤ weight_noise: 1 − r with the clean heatmap."""
    x, target = run.case.x, run.target
    noisy = weight_noise_copy(run.case.model, run.cfg.weight_noise, run.cfg.seed)
    with torch.no_grad():
        lg = noisy(x)
    t = target[:, None]
    run.res["weight_noise_logit_change"] = float(relative_change(lg.gather(1, t), run.logits.gather(1, t)).median())
    for m in MAIN_METHODS:
        run.status(f"weight noise {m.key}")
        r2 = run.nonfinite.explain(Explainer(noisy, run.composites[m.key]), m.key, x, target)
        c = metrics.heatmap_correlation(run.relevance[m.key], r2)
        run.method(m.key)["wnoise"], run.method(m.key)["wnoise_worst"] = one_minus(c)


def bias_nudge(run: Measurement) -> None:
    """Per input, hidden biases nudged so that pre-activations sit at ≈ 0: 1 − r with the clean heatmap, and
    the size of the nudge (neurons, layers, relative change of the target logit)."""
    case, cfg, x, target = run.case, run.cfg, run.case.x, run.target
    nudged = copy.deepcopy(case.model)
    modules = biased_modules(nudged, x)
    originals = [bias_of(m).detach().clone() for m in modules]
    explainers = {m.key: Explainer(nudged, run.composites[m.key]) for m in MAIN_METHODS}
    per_method: dict[str, list[Tensor]] = {m.key: [] for m in MAIN_METHODS}
    counts, changes = [], []
    n_nudge = min(case.nudge_n, x.shape[0])
    for i in range(n_nudge):
        run.status(f"bias nudge, input {i + 1}/{n_nudge}")
        xi, ti = x[i : i + 1], target[i : i + 1]
        with torch.no_grad():
            for mod, b in zip(modules, originals):
                bias_of(mod).copy_(b)
        counts.append(nudge_biases(nudged, modules, xi, cfg.nudge_delta, cfg.nudge_limit))
        with torch.no_grad():
            li = nudged(xi)[0, ti[0]]
        changes.append(float(relative_change(li, run.logits[i, ti[0]])))
        for m in MAIN_METHODS:
            per_method[m.key].append(run.nonfinite.explain(explainers[m.key], m.key, xi, ti))
    for m in MAIN_METHODS:
        c = metrics.heatmap_correlation(run.relevance[m.key][:n_nudge], torch.cat(per_method[m.key]))
        run.method(m.key)["nudge"], run.method(m.key)["nudge_worst"] = one_minus(c)
    run.res["nudge_neurons"] = float(np.median(counts))
    run.res["nudge_logit_change"] = float(np.median(changes))
    run.res["nudge_modules"] = len(modules)


def sanity_check(run: Measurement) -> None:
    """Cascading randomisation, first and last step: similarity of the heatmap after the top layer and after
    all layers are re-initialised with the clean one (Spearman of |map|, and |Pearson r| of the signed maps)."""
    n = run.case.sanity_n
    xs, ts = run.case.x[:n], run.target[:n]
    top_model, all_model = randomised_copies(run.case.model, run.cfg.seed)
    for m in MAIN_METHODS:
        run.status(f"sanity check {m.key}")
        ref = run.relevance[m.key][:n]
        for name, randomised in (("top", top_model), ("all", all_model)):
            r = Explainer(randomised, run.composites[m.key])(xs, ts)
            run.method(m.key)[f"sanity_{name}"] = mean(abs_similarity(ref, r))
            run.method(m.key)[f"sanity_{name}_signed"] = mean(metrics.heatmap_correlation(ref, r).abs())


def class_sensitivity(run: Measurement) -> None:
    """The heatmap of the runner-up class against that of the predicted class (Pearson r)."""
    second = run.logits.topk(2, dim=1).indices[:, 1]
    for m in MAIN_METHODS:
        run.status(f"second class {m.key}")
        r2 = run.nonfinite.explain(run.explainers[m.key], m.key, run.case.x, second)
        run.method(m.key)["class_r"] = mean(metrics.heatmap_correlation(run.relevance[m.key], r2))


def hyperparameter_sensitivity(run: Measurement) -> None:
    """Correlations between the LRP-ε maps and between the LRP-γ maps as the parameter moves (R-LRP has none),
    LRP-0 against Gradient×Input, and R-LRP against every other method."""
    series = {"eps": EPS_SERIES, "gamma": GAMMA_SERIES}
    run.res["sensitivity"] = {
        name: {f"{a}|{b}": run.pair(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]}
        for name, keys in series.items()
    }
    run.res["lrp0_vs_gxi"] = run.pair("lrp0", "gxi")
    run.res["rlrp_vs"] = {m.key: run.pair("rlrp", m.key) for m in MAIN_METHODS if m.key != "rlrp"}


def batchnorm_diagnostic(run: Measurement) -> None:
    """For BatchNorm that cannot be folded (DenseNet: BN after a concatenation, before the ReLU): the presets
    pass relevance through it (as zennit does), so the relevance reaching the convolution below is no longer
    proportional to its output z, and the classical rules divide by z. Input-noise stability of LRP-0 and
    epsilon_plus_flat with an LRP rule on those BatchNorm layers instead."""
    steps = run.explainers["lrp0"].graph.steps
    if not any(step.kind == "linear" and isinstance(step.module, nn.BatchNorm2d) for step in steps):
        return
    run.status("stand-alone BatchNorm diagnostic")
    variants = {"lrp0": (zero(), Zero()), "epf": (epsilon_plus_flat(), Epsilon(1e-6))}
    run.res["bn_rule_diagnostic"] = {}
    for key, (comp, bn_rule) in variants.items():
        comp.batchnorm = bn_rule
        e = Explainer(run.case.model, comp)
        r = metrics.stability(e, run.case.x, run.target, noise=run.cfg.noise, n=run.case.draws, seed=run.cfg.seed)
        run.res["bn_rule_diagnostic"][key] = one_minus(r)


def additions_diagnostic(run: Measurement) -> None:
    """For residual networks: input-noise stability of R-LRP with a sign-free split at the additions (not the
    rule), and its correlation with R-LRP's map."""
    if not any(step.kind == "add" for step in run.explainers["rlrp"].graph.steps):
        return
    run.status("R-LRP additions diagnostic")
    x, target = run.case.x, run.target
    diag = Explainer(run.case.model, sign_free_split_rlrp())
    r = metrics.stability(diag, x, target, noise=run.cfg.noise, n=run.case.draws, seed=run.cfg.seed)
    run.res["rlrp_sign_free_split_noise"], run.res["rlrp_sign_free_split_noise_worst"] = one_minus(r)
    run.res["rlrp_sign_free_split_vs_rlrp"] = mean(metrics.heatmap_correlation(run.relevance["rlrp"], diag(x, target)))


def timing(run: Measurement) -> None:
    """Time per image on one thread, for the MNIST models (the others are timed at full size)."""
    if run.case.key not in TIMED_CASES:
        return
    for m in MAIN_METHODS:
        run.status(f"timing {m.key}")
        run.method(m.key)["time_s"] = time_per_image(
            run.explainers[m.key], run.case.x[:1], run.target[:1], run.cfg.mnist_timing_reps
        )


#: the measures in the order they run; the progress bar advances after each group
STAGES = (
    (explain_all,),
    (pixel_flipping,),
    (input_noise,),
    (weight_noise,),
    (bias_nudge,),
    (sanity_check,),
    (class_sensitivity, hyperparameter_sensitivity, batchnorm_diagnostic, additions_diagnostic, timing),
)


def measure_case(case: Case, cfg: Config, bar: tqdm) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Every small-size measure for one model; returns the numbers and the relevance per method."""
    run = start_run(case, cfg, bar)
    for stage in STAGES:
        for measure in stage:
            measure(run)
        bar.update(1)
    res = run.res
    for m in ALL_METHODS:
        res["methods"][m.key]["nonfinite"] = run.nonfinite.counts.get(m.key, 0)
        res["methods"][m.key]["values"] = run.nonfinite.values.get(m.key, 0)
    res["n_inputs"] = int(case.x.shape[0])
    res["input_shape"] = list(case.x.shape[1:])
    res.update(case.facts)
    return res, run.relevance


def _float32_pass(
    name: str, model: nn.Module, cfg: Config, x: Tensor, target: Tensor, bar: tqdm, out: dict[str, Any]
) -> dict[str, Tensor]:
    """NaN/Inf counts and the time per image in float32, one thread, image by image; R-LRP's removed scale."""
    low, high = imagenet_bounds()
    relevance: dict[str, Tensor] = {}
    threads = torch.get_num_threads()
    for m in MAIN_METHODS:
        bar.set_postfix_str(f"{name} {cfg.full_size}² float32: {m.key}")
        e = Explainer(model, m.build(low, high))
        rs, times, log10 = [], [], []
        torch.set_num_threads(1)
        try:
            for i in range(x.shape[0]):
                t0 = time.perf_counter()
                ex = e.explain(x[i : i + 1], target[i : i + 1])
                times.append(time.perf_counter() - t0)
                rs.append(ex.relevance)
                if ex.log_scale is not None:
                    log10.append(float(ex.log_scale[0]) / math.log(10.0))
        finally:
            torch.set_num_threads(threads)
        r = torch.cat(rs)
        relevance[m.key] = r
        out["f32"][m.key] = int((~torch.isfinite(r)).sum())
        out["values_f32"] = r.numel()
        out["time_s"][m.key] = float(np.median(times[1:] if len(times) > 1 else times))
        if log10:
            out["rlrp_log10_scale"] = log10
    return relevance


def _bfloat16_pass(
    name: str, model: nn.Module, cfg: Config, x: Tensor, target: Tensor, bar: tqdm, out: dict[str, Any],
    relevance: dict[str, Tensor],
) -> None:  # fmt: skip
    """NaN/Inf counts in bfloat16 (cfg.threads threads) and the correlation with the float32 maps."""
    low, high = imagenet_bounds()
    mb = copy.deepcopy(model).to(torch.bfloat16)
    xb = x[: cfg.bf16_n].to(torch.bfloat16)
    for m in MAIN_METHODS:
        bar.set_postfix_str(f"{name} {cfg.full_size}² bfloat16: {m.key}")
        r = Explainer(mb, m.build(low.to(torch.bfloat16), high.to(torch.bfloat16)))(xb, target[: cfg.bf16_n])
        out["bf16"][m.key] = int((~torch.isfinite(r)).sum())
        out["values_bf16"] = r.numel()
        ref = relevance[m.key][: cfg.bf16_n]
        ok = finite(r) and finite(ref)
        out["bf16_vs_f32"][m.key] = mean(metrics.heatmap_correlation(ref, r.float())) if ok else float("nan")


def measure_full_size(
    name: str, model: nn.Module, cfg: Config, x01: Tensor, bar: tqdm
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """NaN/Inf counts at full size in float32 (one thread, image by image; time per image from the images
    after the first) and bfloat16 (cfg.threads threads), R-LRP's removed scale, and bf16-vs-f32 agreement."""
    x = imagenet_norm(x01)
    with torch.no_grad():
        target = model(x).argmax(1)
    out: dict[str, Any] = {"f32": {}, "bf16": {}, "bf16_vs_f32": {}, "time_s": {}, "values_f32": 0, "values_bf16": 0}
    relevance = _float32_pass(name, model, cfg, x, target, bar, out)
    bar.update(1)
    _bfloat16_pass(name, model, cfg, x, target, bar, out, relevance)
    bar.update(1)
    return out, relevance


__all__ = [
    "STAGES", "TIMED_CASES", "Measurement", "NonFinite", "abs_similarity", "additions_diagnostic",
    "batchnorm_diagnostic", "bias_nudge", "class_sensitivity", "explain_all", "hyperparameter_sensitivity",
    "input_noise", "measure_case", "measure_full_size", "pixel_flipping", "sanity_check", "start_run",
    "time_per_image", "timing", "weight_noise",
]  # fmt: skip
