"""The R-LRP study's report.md: tables, rankings and diagnostics computed from the results, with the prose of
:mod:`.text`. One function per section; each returns its paragraphs (joined by newlines)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..._io import atomic_write_bytes
from . import text
from .config import Config
from .methods import ALL_METHODS, MAIN_METHODS, METHOD_BY_KEY


def fmt(v: float | None, kind: str) -> str:
    """A number for a table: ``kind`` is aopc, sci, corr, ms (seconds shown in ms) or int."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    if kind == "aopc":
        return f"{v:.3g}"
    if kind == "sci":
        return "0" if v <= 0 else f"{v:.1e}"
    if kind == "corr":
        return f"{v:.3f}"
    if kind == "ms":
        return f"{v * 1e3:.3g}"
    if kind == "int":
        return str(int(v))
    return f"{v:.3g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def ranks(values: dict[str, float], higher_better: bool) -> dict[str, int]:
    """Competition ranks (1 = best; ties share a rank) of the non-NaN values."""
    items = [(k, v) for k, v in values.items() if not math.isnan(v)]
    items.sort(key=lambda kv: -kv[1] if higher_better else kv[1])
    out: dict[str, int] = {}
    prev: float | None = None
    rank = 0
    for i, (k, v) in enumerate(items):
        if prev is None or v != prev:
            rank = i + 1
        out[k] = rank
        prev = v
    return out


MEASURES = (  # (key, short name, title, higher is better, format)
    ("morf", "MoRF AOPC", "MoRF AOPC (higher = more faithful)", True, "aopc"),
    ("lerf", "LeRF AOPC", "LeRF AOPC (lower = better)", False, "aopc"),
    ("morf_minus_lerf", "MoRF − LeRF", "MoRF − LeRF AOPC (higher = better)", True, "aopc"),
    ("noise", "input noise", "input noise: 1 − r (lower = more stable)", False, "sci"),
    ("wnoise", "weight noise", "weights × (1 ± 1e-3): 1 − r (lower = more stable)", False, "sci"),
    ("nudge", "bias nudge", "biases nudged so that pre-activations are ≈ 0: 1 − r (lower = more stable)", False, "sci"),
    (
        "sanity_top",
        "sanity, top layer (Spearman abs.)",
        "randomisation check, top layer randomised: Spearman similarity of absolute maps (lower = passes)",
        False,
        "corr",
    ),
    (
        "sanity_all",
        "sanity, all layers (Spearman abs.)",
        "randomisation check, all layers randomised: Spearman similarity of absolute maps (lower = passes)",
        False,
        "corr",
    ),
    (
        "sanity_top_signed",
        "sanity, top layer (abs. Pearson signed)",
        "randomisation check, top layer randomised: absolute Pearson r of the signed maps (lower = passes)",
        False,
        "corr",
    ),
    (
        "sanity_all_signed",
        "sanity, all layers (abs. Pearson signed)",
        "randomisation check, all layers randomised: absolute Pearson r of the signed maps (lower = passes)",
        False,
        "corr",
    ),
    (
        "class_r",
        "class sensitivity",
        "class sensitivity: r(predicted-class map, runner-up-class map) (lower = more class-specific)",
        False,
        "corr",
    ),
)


def measure_table(
    results: dict[str, Any], key: str, higher: bool, kind: str, sem: bool = False, worst: bool = False
) -> str:
    """One measure for every main method (rows) and model (columns), the best per model in bold; with its
    standard error (``sem``) or worst input (``worst``) where recorded."""
    keys = list(results)
    headers = ["method"] + [results[k]["label"] for k in keys]
    best: dict[str, set[str]] = {}
    for k in keys:
        vals = {m.key: results[k]["methods"][m.key].get(key, float("nan")) for m in MAIN_METHODS}
        r = ranks(vals, higher)
        best[k] = {mk for mk, rank in r.items() if rank == 1}
    rows = []
    for m in MAIN_METHODS:
        row = [f"**{m.label}**" if m.key == "rlrp" else m.label]
        for k in keys:
            v = results[k]["methods"][m.key].get(key, float("nan"))
            s = fmt(v, kind)
            if sem and f"{key}_sem" in results[k]["methods"][m.key]:
                s += f" ± {fmt(results[k]['methods'][m.key][f'{key}_sem'], kind)}"
            if worst and f"{key}_worst" in results[k]["methods"][m.key]:
                s += f" ({fmt(results[k]['methods'][m.key][f'{key}_worst'], kind)})"
            row.append(f"**{s}**" if m.key in best[k] else s)
        rows.append(row)
    return table(headers, rows)


def rank_summary(results: dict[str, Any], full: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """R-LRP's rank per measure and model, and sentences for its wins and losses."""
    keys = list(results)
    n = len(MAIN_METHODS)
    rows: list[list[str]] = []
    wins: list[str] = []
    losses: list[str] = []
    measures = [(k, short, h) for k, short, _, h, _ in MEASURES]
    measures.append(("time_s", "time per image", False))
    for key, title, higher in measures:
        row = [title]
        for k in keys:
            vals = {m.key: results[k]["methods"][m.key].get(key, float("nan")) for m in MAIN_METHODS}
            if key == "time_s" and k in full:
                vals = dict(full[k]["time_s"])
            if all(math.isnan(v) for v in vals.values()):
                row.append("–")
                continue
            r = ranks(vals, higher)
            rank = r.get("rlrp")
            row.append(f"{rank}/{n}" if rank is not None else "nan")
            if rank is None:
                continue
            best_key = min(r, key=lambda mk: r[mk])
            kind = "sci" if key in ("noise", "wnoise", "nudge") else "ms" if key == "time_s" else "aopc"
            unit = " ms" if key == "time_s" else ""
            if rank == 1:
                second = sorted(
                    ((v, mk) for mk, v in vals.items() if mk != "rlrp" and not math.isnan(v)), reverse=higher
                )[0]
                wins.append(
                    f"{results[k]['label']}, {title}: R-LRP first "
                    f"({fmt(vals['rlrp'], kind)}{unit}; next {METHOD_BY_KEY[second[1]].label} "
                    f"{fmt(second[0], kind)}{unit})"
                )
            elif rank > n // 2:
                losses.append(
                    f"{results[k]['label']}, {title}: R-LRP {rank}/{n} "
                    f"({fmt(vals['rlrp'], kind)}{unit}; best {METHOD_BY_KEY[best_key].label} "
                    f"{fmt(vals[best_key], kind)}{unit})"
                )
        rows.append(row)
    return table(["measure"] + [results[k]["label"] for k in keys], rows), wins, losses


@dataclass
class ReportData:
    """What the report is written from: the small-size results per model, the full-size results per
    architecture, the settings, the command line, the wall time, the CPU name and the heatmap-grid files."""

    results: dict[str, Any]
    full: dict[str, Any]
    cfg: Config
    command: str
    wall_s: float
    cpu: str
    grids: list[str]

    @property
    def keys(self) -> list[str]:
        return list(self.results)

    def labels(self) -> list[str]:
        return [self.results[k]["label"] for k in self.keys]


def header(d: ReportData) -> list[str]:
    cfg = d.cfg
    mode = "QUICK mode: tiny sizes, numbers not meaningful" if cfg.quick else "full run"
    generated = text.GENERATED.format(
        command=d.command, minutes=d.wall_s / 60, mode=mode, torch=torch.__version__, cfg=cfg,
        omp=os.environ.get("OMP_WAIT_POLICY", "unset"), cpu=d.cpu, cpus=os.cpu_count(),
    )  # fmt: skip
    return [text.TITLE, generated, text.PAPER_NOTE]


def setup(d: ReportData) -> list[str]:
    """What was run: the models, the perturbations and the methods."""
    rows = []
    for k in d.keys:
        r = d.results[k]
        shape = "×".join(map(str, r["input_shape"]))
        rows.append([r["label"], r["weights"], r["data"], shape, str(r["n_inputs"]), r.get("accuracy_text", "–")])
    values = {
        "cfg": d.cfg,
        "nan_models": ", ".join(d.cfg.nan_models),
        "mnist_patch": d.results[d.keys[0]].get("patch", 1),
    }
    return [
        "## What was run\n",
        table(["model", "weights", "inputs", "size (C×H×W)", "inputs explained", "accuracy"], rows),
        "",
        *(line.format(**values) for line in text.SETUP),
        "### Methods\n",
        table(["method", "composite"], [[m.label, m.definition] for m in ALL_METHODS]),
        text.METHODS_NOTE,
    ]


def findings(d: ReportData) -> list[str]:
    """R-LRP's ranks, wins and losses, NaN/Inf totals and how R-LRP's maps relate to the others'."""
    results, full, keys = d.results, d.full, d.keys
    rank_table, wins, losses = rank_summary(results, full)
    nf_all = {
        m.key: sum(results[k]["methods"][m.key]["nonfinite"] for k in keys)
        + sum(full[k]["f32"][m.key] + full[k]["bf16"][m.key] for k in full)
        for m in MAIN_METHODS
    }
    bad = [f"{METHOD_BY_KEY[k].label} ({v})" for k, v in nf_all.items() if v]
    shown = ("lrp0", "eps_1", "epf", "gradient")
    rlrp_vs = "; ".join(
        f"{results[k]['label']}: "
        + ", ".join(f"{METHOD_BY_KEY[mk].short} {v:.2f}" for mk, v in results[k]["rlrp_vs"].items() if mk in shown)
        for k in keys
    )
    return [
        "## Findings (computed from this run)\n",
        "R-LRP's rank among the methods, per measure and model (1 = best):\n",
        rank_table + "\n",
        "**Where R-LRP comes first:**\n",
        "\n".join(f"- {w}" for w in wins) if wins else "- nowhere",
        "\n**Where R-LRP loses (bottom half of the ranking):**\n",
        "\n".join(f"- {w}" for w in losses) if losses else "- nowhere",
        "",
        f"- NaN/Inf: R-LRP produced {nf_all['rlrp']} non-finite values in this run; "
        + (f"non-finite values from: {', '.join(bad)}." if bad else "no method produced any."),
        "- LRP-0 against Gradient×Input, Pearson correlation of the heatmaps: "
        + ", ".join(f"{results[k]['label']} {results[k]['lrp0_vs_gxi']:.6f}" for k in keys)
        + ".",
        "- R-LRP against the others (mean Pearson correlation of heatmaps; how different R-LRP's maps are): "
        + rlrp_vs
        + ".\n",
    ]


def faithfulness(d: ReportData) -> list[str]:
    lines = ["## Faithfulness: pixel flipping\n"]
    for key, _, title, higher, kind in MEASURES[:3]:
        lines.append(f"**{title}**, bold = best per model:\n")
        lines.append(measure_table(d.results, key, higher, kind, sem=key != "morf_minus_lerf") + "\n")
    return lines + ["![perturbation curves](curves.png)\n", text.CURVES_NOTE]


def _sign_free_diagnostic(results: dict[str, Any], keys: Sequence[str]) -> str:
    def numbers(r: dict[str, Any]) -> str:
        rl = r["methods"]["rlrp"]
        return (
            f"{r['label']}: {fmt(r['rlrp_sign_free_split_noise'], 'sci')} "
            f"(worst {fmt(r['rlrp_sign_free_split_noise_worst'], 'sci')}; R-LRP "
            f"{fmt(rl['noise'], 'sci')}, worst {fmt(rl['noise_worst'], 'sci')}), correlation with R-LRP's map "
            f"{r['rlrp_sign_free_split_vs_rlrp']:.2f}"
        )

    return text.SIGN_FREE_DIAGNOSTIC + "; ".join(numbers(results[k]) for k in keys) + ".\n"


def _bn_diagnostic(r: dict[str, Any]) -> str:
    d = r["bn_rule_diagnostic"]
    return text.BN_DIAGNOSTIC.format(
        label=r["label"], lrp0=fmt(d["lrp0"][0], "sci"), lrp0_worst=fmt(d["lrp0"][1], "sci"),
        lrp0_default=fmt(r["methods"]["lrp0"]["noise"], "sci"), epf=fmt(d["epf"][0], "sci"),
        epf_worst=fmt(d["epf"][1], "sci"), epf_default=fmt(r["methods"]["epf"]["noise"], "sci"),
    )  # fmt: skip


def robustness(d: ReportData) -> list[str]:
    """Input noise, weight noise and bias nudge tables, the size of the perturbations, the diagnostics and
    the NaN/Inf counts."""
    results, keys = d.results, d.keys
    lines = ["## Robustness\n"]
    for key, _, title, higher, kind in MEASURES[3:6]:
        lines.append(f"**{title}**, mean over inputs (worst input in brackets), bold = best mean:\n")
        lines.append(measure_table(results, key, higher, kind, worst=True) + "\n")
    lines.append(
        "Size of the weight perturbations (median relative change of the target logit): "
        + "; ".join(
            f"{results[k]['label']}: weight noise {results[k]['weight_noise_logit_change']:.1e}, "
            f"bias nudge {results[k]['nudge_logit_change']:.1e} "
            f"({results[k]['nudge_neurons']:.0f} neurons nudged per input in "
            f"{results[k]['nudge_modules']} layers)"
            for k in keys
        )
        + ".\n"
    )
    diag = [k for k in keys if "rlrp_sign_free_split_noise" in results[k]]
    if diag:
        lines.append(_sign_free_diagnostic(results, diag))
    lines += [_bn_diagnostic(results[k]) for k in keys if "bn_rule_diagnostic" in results[k]]
    lines.append("![robustness](robustness.png)\n")
    lines.append(
        "**NaN/Inf values** in all relevance computed above (clean, noisy and perturbed; "
        "out of " + ", ".join(f"{results[k]['methods']['rlrp']['values']:,}" for k in keys) + " values per method):\n"
    )
    counts = [[m.label] + [str(results[k]["methods"][m.key]["nonfinite"]) for k in keys] for m in MAIN_METHODS]
    return lines + [table(["method"] + d.labels(), counts), ""]


def full_size(d: ReportData) -> list[str]:
    """NaN/Inf in float32 and bfloat16 at full size, bf16-vs-f32 agreement and R-LRP's removed scale."""
    full, cfg = d.full, d.cfg
    fk = list(full)
    headers = ["method"] + [f"{k} f32" for k in fk] + [f"{k} bf16" for k in fk] + [f"{k} r(bf16, f32)" for k in fk]
    rows = [
        [m.label]
        + [str(full[k]["f32"][m.key]) for k in fk]
        + [str(full[k]["bf16"][m.key]) for k in fk]
        + [fmt(full[k]["bf16_vs_f32"][m.key], "corr") for k in fk]
        for m in MAIN_METHODS
    ]
    first = full[fk[0]]
    scales = "; ".join(f"{k}: " + ", ".join(f"{v:.0f}" for v in full[k].get("rlrp_log10_scale", [])) for k in fk)
    return [
        f"### Full size ({cfg.full_size}²): NaN/Inf in float32 and bfloat16\n",
        table(headers, rows),
        text.FULL_SIZE_NOTE.format(
            values_f32=first["values_f32"], values_bf16=first["values_bf16"], cfg=cfg, model=fk[0]
        ),  # fmt: skip
        text.LOG_SCALE + scales + text.LOG_SCALE_END,
    ]


def sensitivity(d: ReportData) -> list[str]:
    """Correlations of LRP-ε and LRP-γ maps as the parameter moves, and what ε does to MoRF."""
    results, keys = d.results, d.keys
    pairs_e = list(results[keys[0]]["sensitivity"]["eps"])
    pairs_g = list(results[keys[0]]["sensitivity"]["gamma"])

    def plabel(p: str) -> str:
        a, b = p.split("|")
        return f"{METHOD_BY_KEY[a].short} ↔ {METHOD_BY_KEY[b].short}"

    rows = [
        [results[k]["label"]]
        + [fmt(results[k]["sensitivity"]["eps"][p], "corr") for p in pairs_e]
        + [fmt(results[k]["sensitivity"]["gamma"][p], "corr") for p in pairs_g]
        for k in keys
    ]
    morf = "; ".join(
        f"{results[k]['label']}: "
        + ", ".join(
            f"{METHOD_BY_KEY[e].short} {fmt(results[k]['methods'][e]['morf'], 'aopc')}"
            for e in ("eps_0.001", "eps_0.1", "eps_1")
        )
        for k in keys
    )
    return [
        "## Hyperparameter sensitivity\n",
        text.SENSITIVITY_INTRO,
        table(["model"] + [plabel(p) for p in pairs_e + pairs_g], rows),
        "\nAnd what the parameter does to faithfulness (MoRF AOPC at three ε, from the table above): " + morf + ".\n",
        "![sensitivity](sensitivity.png)\n",
    ]


def sanity_and_class(d: ReportData) -> list[str]:
    """The randomisation check tables and the class-sensitivity table."""
    lines = ["## Randomisation sanity check\n"]
    for key, _, title, higher, kind in MEASURES[6:10]:
        lines += [f"**{title}**:\n", measure_table(d.results, key, higher, kind) + "\n"]
    key, _, title, higher, kind = MEASURES[10]
    return lines + [
        "## Class sensitivity\n",
        text.CLASS_INTRO,
        f"**{title}**:\n",
        measure_table(d.results, key, higher, kind) + "\n",
    ]


def timing(d: ReportData) -> list[str]:
    """Time per image on one thread: the MNIST models at 28², the architectures at full size."""
    results, full, cfg = d.results, d.full, d.cfg
    fk = list(full)
    tk = [k for k in d.keys if "time_s" in results[k]["methods"]["rlrp"]]
    headers = ["method"] + [f"{results[k]['label']} (28²) ms" for k in tk] + [f"{k} ({cfg.full_size}²) s" for k in fk]
    rows = [
        [m.label]
        + [fmt(results[k]["methods"][m.key]["time_s"], "ms") for k in tk]
        + [f"{full[k]['time_s'][m.key]:.2f}" for k in fk]
        for m in MAIN_METHODS
    ]
    full_runs = "the second image (the first one is the warm-up)" if cfg.full_n > 1 else "a single run"
    return [
        "## Time per image (one thread)\n",
        table(headers, rows),
        text.TIME_NOTE.format(cfg=cfg, full_runs=full_runs),
    ]


def heatmaps(d: ReportData) -> list[str]:
    return ["## Heatmaps\n", text.HEATMAPS_NOTE.format(cfg=d.cfg), *(f"![{name}]({name})\n" for name in d.grids)]


SECTIONS = (header, setup, findings, faithfulness, robustness, full_size, sensitivity, sanity_and_class, timing,
            heatmaps)  # fmt: skip


def render(d: ReportData) -> str:
    """The whole report.md text."""
    paragraphs = [p for section in SECTIONS for p in section(d)]
    paragraphs += ["## Discussion\n", text.DISCUSSION]
    return "\n".join(paragraphs) + "\n"


def write_report(out: Path, d: ReportData) -> Path:
    """Write ``out/report.md`` atomically."""
    return atomic_write_bytes(out / "report.md", render(d).encode())


__all__ = ["MEASURES", "ReportData", "fmt", "measure_table", "rank_summary", "ranks", "render", "table",
           "write_report"]  # fmt: skip
