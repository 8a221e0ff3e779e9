"""``relprop evaluate RUN [RUN ...]``: accuracy and background relevance share of trained runs, and a heatmap grid.

Digit runs (``relprop train --data``) are scored on the biased, unbiased and deceiving tests, with the shortcut
table. Runs on an image + mask folder (``relprop train --data-dir``) are scored on their in-distribution
``test`` split and on each ``external:<source>`` split, rebuilt from ``run.json`` (same folder, classes, size
and seeded split); heatmaps.png shows the in-distribution test."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._common import EVAL_FILE, is_folder_run, load_run, read_run, wrap


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="accuracy and background relevance share of trained runs (digit tests, or a folder's test splits)",
        description=wrap(
            "Evaluate one or more run folders written by `relprop train`. A run on your image + mask folder "
            "(--data-dir) is scored on its in-distribution test split and on each --external source: accuracy "
            "and the share of LRP relevance on the background, Σ_bg|R| / Σ|R|. A digit run is scored on the "
            "three test sets (biased: the "
            "training artefact-class pairing; unbiased: no artefact; deceiving: another class's artefact): "
            "accuracy and the share of LRP relevance on the background, Σ_bg|R| / Σ|R|; and whether a shortcut "
            "hides from the heatmap (artefact shown: relevance on the artefact / its counterfactual effect on the "
            "logit, the same digit without it) and whether the heatmap tiles the mask (tiling: 0 = in-mask "
            "relevance on the digit's strokes, 1 = spread as if they did not matter). Writes evaluation.json and "
            "heatmaps.png."
        ),
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders written by `relprop train`")
    p.add_argument("--out", type=Path, metavar="DIR", help="folder for evaluation.json and heatmaps.png "
                   "(default: the run folder when one run is given, required for several)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def _label(run: Path, meta: Mapping[str, Any], taken: list[str]) -> str:
    method = str(meta.get("config", {}).get("method", run.name))
    label, k = method, 2
    while label in taken:
        label, k = f"{method} ({k})", k + 1
    return label


UNDEFINED = "undefined"  #: how the table shows a background share that has no value (a model without relevance)


def _cell(value: Any, width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{UNDEFINED:>{width}}"
    return f"{value:>{width}.3f}"


def format_results(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The three-test table (as :func:`relprop.studies.demo.format_table`), with "undefined" for a background
    share that is NaN (no image with relevance: a collapsed model), never a number."""
    from ..studies.demo import TEST_SPLITS

    head = f"{'model':<14}" + "".join(f"{s.removeprefix('test_'):>22}" for s in TEST_SPLITS)
    sub = f"{'':<14}" + "".join(f"{'accuracy':>12}{'bg share':>10}" for _ in TEST_SPLITS)
    lines = [head, sub]
    for label, res in results.items():
        cells = "".join(_cell(res[s]["accuracy"], 12) + _cell(res[s]["background_share"], 10) for s in TEST_SPLITS)
        lines.append(f"{label:<14}{cells}")
    return "\n".join(lines)


SHORTCUT_SPLITS = ("test_biased", "test_deceiving")  #: the splits with an artefact (counterfactual: test_unbiased)


def format_shortcut(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The shortcut table: artefact shown on the biased and deceiving tests, tiling and spread on the deceiving
    test ("undefined" where no image's logit depends on the artefact, or no relevance)."""
    head = f"{'model':<14}{'artefact shown':>30}{'mask tiling (deceiving)':>28}"
    sub = f"{'':<14}{'biased':>15}{'deceiving':>15}{'tiling':>14}{'spread':>14}"
    lines = [head, sub]
    for label, res in results.items():
        sc = res["shortcut"]
        cells = "".join(_cell(sc[s]["artefact_shown"], 15) for s in SHORTCUT_SPLITS)
        cells += _cell(sc["test_deceiving"]["tiling"], 14) + _cell(sc["test_deceiving"]["spread"], 14)
        lines.append(f"{label:<14}{cells}")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN (an undefined metric) as null: evaluation.json stays valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Evaluate the runs, print the three-test table, write evaluation.json and heatmaps.png."""
    import warnings

    import torch.nn as nn

    from ..data import BiasedDigitsConfig, artefact_masks, biased_digits
    from ..errors import UsageError
    from ..isnet.evaluation import evaluate, shortcut_measures
    from ..studies.demo import TEST_SPLITS
    from ._common import out_folder, warn

    runs: list[Path] = args.runs
    if len(runs) > 1 and args.out is None:
        raise UsageError("--out is required when several runs are evaluated together")
    out: Path = out_folder(args.out) if args.out is not None else runs[0]
    kinds = {run: is_folder_run(read_run(run)) for run in runs}
    if any(kinds.values()):
        if not all(kinds.values()):
            digits = next(run for run, folder in kinds.items() if not folder)
            folder = next(run for run, folder in kinds.items() if folder)
            raise UsageError(f"{digits} is a digit run and {folder} a folder run; evaluate them separately")
        return _run_folders(args, runs, out)
    models: dict[str, nn.Module] = {}
    data_cfg = None
    results: dict[str, Any] = {}
    for run in runs:
        model, meta = load_run(run)
        cfg = BiasedDigitsConfig(**meta["data"])
        if data_cfg is not None and cfg != data_cfg:
            raise UsageError(f"{run} was trained on other data than {runs[0]}; evaluate them separately")
        data_cfg = cfg
        splits = biased_digits(cfg)
        label = _label(run, meta, list(models))
        models[label] = model
        tests = {s: splits[s] for s in TEST_SPLITS}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = evaluate(model, tests, progress=not args.quiet)
            shortcut = {
                s: shortcut_measures(model, splits[s], splits["test_unbiased"], artefact_masks(splits[s], cfg),
                                     progress=not args.quiet)
                for s in SHORTCUT_SPLITS
            }  # fmt: skip
        for w in caught:
            warn(f"{label} ({run}): {w.message}")
        results[label] = {"run": str(run), **scores, "shortcut": shortcut}
    assert data_cfg is not None
    print(format_results(results))
    print()
    print(format_shortcut(results))
    splits = biased_digits(data_cfg)
    return _write(out, results, models, splits["test_deceiving"], splits["train"].class_names, "deceiving test")


def format_splits(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The table of a folder run: one row per model and split (n, accuracy, background share; "undefined"
    where no image has relevance)."""
    width = max([22] + [len(s) + 2 for res in results.values() for s in res if s != "run"])
    lines = [f"{'model':<14}{'split':<{width}}{'n':>6}{'accuracy':>10}{'bg share':>10}"]
    for label, res in results.items():
        for name, score in res.items():
            if name == "run":
                continue
            cells = _cell(score["accuracy"], 10) + _cell(score["background_share"], 10)
            lines.append(f"{label:<14}{name:<{width}}{int(score['n']):>6}{cells}")
    return "\n".join(lines)


def _run_folders(args: argparse.Namespace, runs: Sequence[Path], out: Path) -> int:
    """Evaluate runs on an image + mask folder: the in-distribution test and each external source."""
    import warnings

    import torch.nn as nn

    from ..errors import UsageError
    from ..isnet.evaluation import evaluate
    from ._common import folder_splits, warn
    from .train import _RUN_FLAGS, _differences, _flag_value

    models: dict[str, nn.Module] = {}
    data = None
    results: dict[str, Any] = {}
    splits: Mapping[str, Any] = {}
    for run in runs:
        model, meta = load_run(run)
        if data is not None and meta["data"] != data:
            found = _differences({"data": data}, {"data": meta["data"]})
            shown = "; ".join(
                f"{_RUN_FLAGS.get(k, k)} {_flag_value(k, a)} (here {_flag_value(k, b)})" for k, a, b in found
            )
            raise UsageError(
                f"{run} was trained on other data or splits than {runs[0]} ({shown}); evaluate them separately"
            )
        if data is None:
            data = meta["data"]
            _, splits = folder_splits(data)
        label = _label(run, meta, list(models))
        models[label] = model
        tests = {name: part for name, part in splits.items() if name not in ("train", "val")}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = evaluate(model, tests, progress=not args.quiet)
        for w in caught:
            warn(f"{label} ({run}): {w.message}")
        results[label] = {"run": str(run), **scores}
    print(format_splits(results))
    return _write(out, results, models, splits["test"], splits["train"].class_names, "in-distribution test")


def _write(out: Path, results: Mapping[str, Any], models: Mapping[str, Any], test: Any,
           class_names: Sequence[str], name: str) -> int:  # fmt: skip
    """evaluation.json and heatmaps.png of ``test`` (replacing temporaries of killed earlier writes)."""
    from .._io import atomic_write_json
    from ..isnet.checkpoints import remove_stale_temporaries
    from ..isnet.evaluation import heatmap_figure

    remove_stale_temporaries(out, [EVAL_FILE, "heatmaps.png"])
    atomic_write_json(out / EVAL_FILE, _json_safe(results), indent=2)
    fig = heatmap_figure(models, test, out / "heatmaps.png", class_names=class_names,
                         title=f"{name}: LRP of the predicted class")  # fmt: skip
    print(f"wrote {out / EVAL_FILE} and {fig}")
    return 0
