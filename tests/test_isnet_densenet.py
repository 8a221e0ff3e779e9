"""ISNet on torchvision's DenseNet121 (stand-alone BatchNorm after every concatenation): maps finite and bounded in
training and eval mode with both rule sets, training lowers the loss, and a near-degenerate batch (1x1 maps in a
batch of 2 at the last block) is warned about, naming the BatchNorm."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

from relprop.isnet import ISNetMaps, isnet_loss
from relprop.isnet.variants import DegenerateBatchStatisticsWarning


def _make_densenet() -> nn.Module:
    """weights=None, with random trained-like BatchNorm parameters and statistics (a fresh initialisation has
    shift 0 and unit statistics, which hides what a shift does)."""
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.3, generator=g)
                m.running_mean.normal_(0.0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return model


_CACHE: dict[str, nn.Module] = {}


def _densenet() -> nn.Module:
    """A fresh copy of the one randomised DenseNet121 (built once: its initialisation takes seconds)."""
    if "model" not in _CACHE:
        _CACHE["model"] = _make_densenet()
    return copy.deepcopy(_CACHE["model"])


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # 2 x 64²: the last dense block's maps are 2x2, 8 values per channel for its BatchNorms' batch statistics
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    return x, torch.tensor([0, 2]), mask


@pytest.mark.parametrize("match", ["relprop", "authors"])
@pytest.mark.parametrize("train", [True, False])
def test_maps_are_finite_and_of_the_order_of_the_logits(batch, match: str, train: bool) -> None:
    torch.set_num_threads(1)
    x, _, _ = batch
    model = _densenet().train(train)
    logits, maps = ISNetMaps(model, "stochastic", match=match)(
        x, create_graph=False, generator=torch.Generator().manual_seed(0)
    )
    assert maps.shape == (2, 1, 3, 64, 64)
    assert bool(torch.isfinite(maps).all())
    top = float(logits.abs().max())
    assert 0 < float(maps.abs().max()) < 10 * top, (float(maps.abs().max()), top)
    assert float(maps.flatten(1).sum(1).abs().max()) < 100 * top


@pytest.mark.parametrize("match", ["relprop", "authors"])
def test_a_few_isnet_steps_lower_the_loss(batch, match: str) -> None:
    torch.set_num_threads(1)
    x, y, mask = batch
    model = _densenet().train()
    maps = ISNetMaps(model, "stochastic", match=match)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for step in range(3):
        logits, heat = maps(x, y, generator=torch.Generator().manual_seed(step))
        loss, _, _ = isnet_loss(logits, y, heat, mask, 0.7)
        assert bool(torch.isfinite(loss)), (step, float(loss))
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():
            assert p.grad is None or bool(torch.isfinite(p.grad).all())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    assert losses[-1] < losses[0], losses


def test_near_degenerate_batch_statistics_are_warned_about_once() -> None:
    """2 x 32²: the last block's BatchNorms normalise over 2 values per channel; with detached batch statistics
    the relevance grows by about |mean|/σ per BatchNorm (measured: maps of 1e18 for logits of 0.3)."""
    torch.set_num_threads(1)
    model = _densenet().train()
    maps = ISNetMaps(model, "stochastic")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with pytest.warns(DegenerateBatchStatisticsWarning, match=r"'features\.denseblock4\..*' normalises over only 2 "):
        maps(x, create_graph=False)
    with warnings_as_errors():
        maps(x, create_graph=False)  # once per ISNetMaps


class warnings_as_errors:
    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", DegenerateBatchStatisticsWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)
