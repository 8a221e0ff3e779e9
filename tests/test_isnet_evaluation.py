"""Background relevance share, evaluation per split and the heatmap figure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import TensorDataset

import relprop.isnet
import relprop.isnet.evaluation
from relprop.errors import InputError
from relprop.evaluation import background_share
from relprop.isnet.evaluation import evaluate, heatmap_figure


def test_background_share_formula() -> None:
    r = torch.zeros(3, 2, 4, 4)
    r[0, 0, 0, 0] = 3.0  # background
    r[0, 1, 2, 2] = -1.0  # foreground
    r[1, :, 2, 2] = 2.0  # all foreground
    mask = torch.zeros(3, 1, 4, 4)
    mask[..., 1:3, 1:3] = 1
    share = background_share(r, mask)
    nan = float("nan")  # no relevance: undefined, not 0 (a perfect score)
    torch.testing.assert_close(share, torch.tensor([0.75, 0.0, nan], dtype=torch.float64), equal_nan=True)
    torch.testing.assert_close(background_share(r, mask[:, 0]), share, equal_nan=True)  # (B, H, W) masks too
    with pytest.raises(InputError, match="does not fit"):
        background_share(r, mask[:2])
    with pytest.raises(InputError, match=r"\(B, C, H, W\)"):
        background_share(r[0], mask)


def test_background_share_is_the_evaluation_metric() -> None:
    """The metric lives in relprop.evaluation; the ISNet names re-export it."""
    assert relprop.isnet.evaluation.background_share is background_share
    assert relprop.isnet.background_share is background_share


def _data(n: int = 12) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    m = torch.zeros(n, 1, 8, 8)
    m[..., 2:6, 2:6] = 1
    return TensorDataset(x, m, torch.arange(n) % 3)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))


def test_evaluate_accuracy_share_and_mode_restored() -> None:
    model = _model().train()
    data = _data()
    res = evaluate(model, {"a": data}, batch_size=5, progress=False)
    assert model.training
    model.eval()
    with torch.no_grad():
        acc = (model(data.tensors[0]).argmax(1) == data.tensors[2]).float().mean().item()
    assert res["a"]["accuracy"] == pytest.approx(acc)
    assert res["a"]["n"] == 12
    assert 0.0 < res["a"]["background_share"] < 1.0


def test_evaluate_rejects_an_empty_split() -> None:
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(InputError, match="'e' is empty"):
        evaluate(_model(), {"e": empty}, progress=False)


def test_heatmap_figure_one_row_per_class(tmp_path) -> None:
    path = heatmap_figure({"m1": _model(), "m2": _model()}, _data(), tmp_path / "h.png", title="t")
    with Image.open(path) as im:
        w, h = im.size
    assert w == 4 * 160  # input, mask, two models
    assert 3 * 160 < h < 4 * 160  # one row per class (3), plus titles


def test_heatmap_figure_needs_indices_for_a_dataset_without_len(tmp_path) -> None:
    class Unsized(torch.utils.data.IterableDataset):
        def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
            return iter(_data())

    with pytest.raises(InputError, match="Unsized has no len"):
        heatmap_figure({"m": _model()}, Unsized(), tmp_path / "h.png")
