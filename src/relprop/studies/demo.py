"""``relprop demo``: explaining real MNIST digits with a pretrained LeNet-5, then a plain classifier vs a Faster
ISNet on digits with a background shortcut.

:func:`run_digits_demo` (part 1) and :func:`run_bias_demo` (part 2) write their files and return what they
measured; they print nothing (the command line prints the results).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._io import atomic_write_json, atomic_write_text
from ..errors import UsageError

__all__ = [
    "BIAS_DEMO_RUNS", "DEMO_METHODS", "TEST_SPLITS", "BiasDemo", "DigitsDemo", "format_table", "run_bias_demo",
    "run_digits_demo",
]  # fmt: skip

#: the methods part 1 compares (columns of the grid)
DEMO_METHODS = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon", "gradient", "gradient_x_input")
#: the three tests of the biased digits: the training artefact-class pairing, no artefact, another class's artefact
TEST_SPLITS = ("test_biased", "test_unbiased", "test_deceiving")
#: part 2's training runs on biased digits: (method, selective class, epochs); the selective variant explaining
#: the true class's log-odds was the best method of the reproduction study (docs/studies/isnet)
BIAS_DEMO_RUNS = (("plain", "lowest", 2), ("selective", "label", 10))


# -- part 1 ----------------------------------------------------------------------------------------------------
@dataclass
class DigitsDemo:
    """What :func:`run_digits_demo` did: the model's accuracy on ``n_test`` digits, the grid and the other PNGs
    written (``files``: inputs.png, then one montage per method), and the seconds it took."""

    accuracy: float
    n_test: int
    n_explained: int
    methods: tuple[str, ...]
    grid: Path
    files: list[Path]
    seconds: float


def run_digits_demo(out: Path, n: int = 20, *, progress: bool = True) -> DigitsDemo:
    """Explain ``n`` (1..100) real MNIST digits with advertorch's pretrained LeNet-5 and every method of
    :data:`DEMO_METHODS`; write ``out/demo_grid.png`` (rows: digits; columns: input and methods),
    ``out/inputs.png`` and one montage PNG per method."""
    from tqdm import tqdm

    from ..composites import Composite, epsilon_gamma_box, resolve
    from ..explainer import Explainer
    from ..models import load_advertorch_lenet5, load_mnist_digits
    from ..viz.heatmap import montage, save_grid, save_png, to_heatmap, to_image

    if not 1 <= n <= 100:
        raise UsageError(f"--n {n}: choose 1..100 digits (one grid row each)")
    start = time.perf_counter()
    model = load_advertorch_lenet5("clean")
    images, labels = load_mnist_digits(500)
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in images.split(1000)])
    accuracy = (predicted == labels).float().mean().item()

    # The first n digits in the order 0, 1, ..., 9, 0, 1, ... (digits within one class in file order),
    # then sorted by digit for the grid.
    per_class = math.ceil(n / 10)
    order = torch.stack([torch.nonzero(labels == c).flatten()[:per_class] for c in range(10)], 1).flatten()[:n]
    order = order[torch.argsort(labels[order], stable=True)]
    x, y, pred = images[order], labels[order], predicted[order]

    composites: dict[str, Composite] = {
        name: epsilon_gamma_box(low=0.0, high=1.0) if name == "epsilon_gamma_box" else resolve(name)
        for name in DEMO_METHODS
    }
    relevance: dict[str, Tensor] = {}
    bar = tqdm(total=len(composites), desc="explaining", unit="method", leave=False, disable=not progress)
    with bar:
        for name, composite in composites.items():
            bar.set_postfix_str(name)
            relevance[name] = Explainer(model, composite).explain(x, target="predicted").relevance
            bar.update()

    out = Path(out)
    rows = [f"digit {int(a)}" + (f", predicted {int(b)}" if a != b else "") for a, b in zip(y, pred)]
    grid = save_grid(
        out / "demo_grid.png",
        list(x),
        {name: list(r) for name, r in relevance.items()},
        row_titles=rows,
        title="LeNet-5 on MNIST, predicted class explained: red = positive relevance, blue = negative",
    )
    files = [save_png(montage([to_image(im) for im in x], pad=4, scale=4), out / "inputs.png")]
    for name, r in relevance.items():
        files.append(save_png(montage([to_heatmap(ri) for ri in r], pad=4, scale=4), out / f"{name}.png"))
    return DigitsDemo(
        accuracy, len(labels), n, tuple(composites), grid, files, time.perf_counter() - start
    )  # fmt: skip


# -- part 2 ----------------------------------------------------------------------------------------------------
def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table: one row per model, accuracy and background share on each of :data:`TEST_SPLITS`."""
    head = f"{'model':<14}" + "".join(f"{s.removeprefix('test_'):>22}" for s in TEST_SPLITS)
    sub = f"{'':<14}" + "".join(f"{'accuracy':>12}{'bg share':>10}" for _ in TEST_SPLITS)
    lines = [head, sub]
    for label, res in results.items():
        cells = "".join(f"{res[s]['accuracy']:>12.3f}{res[s]['background_share']:>10.3f}" for s in TEST_SPLITS)
        lines.append(f"{label:<14}{cells}")
    return "\n".join(lines)


@dataclass
class BiasDemo:
    """What :func:`run_bias_demo` did: per model label, the run's method, epochs, training seconds and test
    metrics; the table of :func:`format_table`; and the files written (results.md, results.json, heatmaps.png)."""

    results: dict[str, Any]
    table: str
    files: list[Path]


def run_bias_demo(
    out: Path, *, quick: bool = False, progress: bool = True, log: Callable[[str], None] | None = None
) -> BiasDemo:
    """Train a plain classifier and a Faster ISNet (selective variant, true class) on biased digits and write
    ``out/results.json``, ``out/results.md`` (with the three-test table) and ``out/heatmaps.png``.

    Runs live in ``out/<method>/`` and resume if interrupted. ``quick`` uses 300 digits and one epoch (for
    tests; the numbers are then meaningless). ``log`` receives one line before each training run."""
    from torch.utils.data import Subset

    from ..data import BiasedDigitsConfig, biased_digits
    from ..isnet.evaluation import evaluate, heatmap_figure
    from ..isnet.training import TrainConfig, fit
    from ..models import build_model

    out = Path(out)
    dcfg = BiasedDigitsConfig(source="mnist", n_train=300 if quick else 3000, seed=0)
    splits = biased_digits(dcfg)
    tests: dict[str, Any] = {s: splits[s] for s in TEST_SPLITS}
    if quick:
        tests = {s: Subset(d, range(min(200, len(d)))) for s, d in tests.items()}
    spec = {"name": "digits_cnn", "num_classes": 10, "in_channels": 1, "width": 16}
    models: dict[str, torch.nn.Module] = {}
    results: dict[str, Any] = {}
    for method, selective_class, epochs in BIAS_DEMO_RUNS:
        config = TrainConfig(
            method=method, epochs=1 if quick else epochs, batch_size=32, lr=0.01, seed=0,
            selective_class=selective_class,
        )  # fmt: skip
        label = "Faster ISNet" if method != "plain" else "plain"
        if log is not None:
            log(f"training {label} ({method}, {config.epochs} epochs on {len(splits['train'])} biased digits)")
        torch.manual_seed(0)
        model = build_model(spec)
        start = time.perf_counter()
        fit(model, splits["train"], None, config, out_dir=out / method, progress=progress, model_spec=spec)
        seconds = time.perf_counter() - start
        model.eval()
        models[label] = model
        results[label] = {"method": method, "epochs": config.epochs, "train_seconds": round(seconds, 1)}
        results[label].update(evaluate(model, tests, progress=progress))
    table = format_table(results)
    json_path = atomic_write_json(
        out / "results.json", {"data": asdict(dcfg), "model_spec": spec, "results": results}, indent=2
    )
    md = [
        "# Plain classifier vs Faster ISNet on digits with a synthetic background bias",
        "",
        "Training images carry a bright square whose position encodes the class. Tests: biased (same "
        "pairing), unbiased (no square), deceiving (another class's square). `bg share` is the share of "
        "LRP relevance (|R|) outside the digit's box.",
        "",
        "```",
        table,
        "```",
        "",
        "![heatmaps](heatmaps.png)",
        "",
    ]
    md_path = atomic_write_text(out / "results.md", "\n".join(md))
    fig = heatmap_figure(
        models, splits["test_deceiving"], out / "heatmaps.png", class_names=splits["train"].class_names,
        title="deceiving test: LRP of the predicted class",
    )  # fmt: skip
    return BiasDemo(results, table, [md_path, json_path, Path(fig)])
