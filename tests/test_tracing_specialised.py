"""Models whose forward branches in Python on tensor sizes are traced for one input shape at a time."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import relprop
from relprop.errors import TracingError
from relprop.explainer.functional import cached_explainer
from relprop.graph import RelevanceGraph
from relprop.graph.tracer import SizeDependentTracingError


class PadOdd(nn.Module):
    """Pads an odd width, and keeps the top ceil(H / 2) rows: both need the value of a size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1))
        h = math.ceil(x.shape[-2] / 2)
        rows = [x[:, :, i : i + 1] for i in range(int(h))]  # range() and int() of a size
        x = torch.cat(rows, dim=2)
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DataBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = x * 2
        return self.fc(x)


class DataInt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.abs().sum())
        return self.fc(x[:, :4]) * n


def _untouched(model: nn.Module) -> tuple[set[str], dict[str, torch.Tensor]]:
    return set(vars(model)), {k: v.clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: nn.Module, before: tuple[set[str], dict[str, torch.Tensor]]) -> None:
    names, state = before
    assert set(vars(model)) == names
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())


def test_size_branches_are_traced_per_input_shape_and_match_the_model() -> None:
    torch.manual_seed(0)
    model = PadOdd().eval()
    before = _untouched(model)
    with pytest.raises(SizeDependentTracingError, match=r"if x.shape\[-1\] % 2"):
        RelevanceGraph(model)
    explainer = relprop.Explainer(model)
    assert "traced at the first call" in explainer.summary() and "if x.shape[-1] % 2" in explainer.summary()
    with pytest.raises(SizeDependentTracingError, match="input_shape"):
        _ = explainer.graph
    x = torch.rand(2, 3, 7, 9)
    out = explainer.explain(x)
    assert explainer.specialised_to == (2, 3, 7, 9)
    torch.testing.assert_close(out.logits, model(x).detach(), atol=1e-5, rtol=1e-5)
    assert out.relevance.shape == x.shape and torch.isfinite(out.relevance).all()
    first = explainer.graph
    x2 = torch.rand(1, 3, 6, 8)  # another shape: even width (no padding), another number of rows
    out2 = explainer.explain(x2)
    assert explainer.specialised_to == (1, 3, 6, 8) and explainer.graph is not first
    torch.testing.assert_close(out2.logits, model(x2).detach(), atol=1e-5, rtol=1e-5)
    explainer.explain(torch.rand(2, 3, 7, 9))
    assert explainer.graph is first  # one trace kept per shape
    assert "Traced for input shape (2, 3, 7, 9)" in explainer.summary()
    for xi in (x, x2):  # the functional form too, with its cache
        torch.testing.assert_close(
            relprop.explain(model, xi), relprop.Explainer(model).explain(xi).relevance, atol=1e-6, rtol=1e-5
        )
    _assert_untouched(model, before)


def test_input_shape_traces_at_construction_and_training_mode_keeps_running_stats() -> None:
    torch.manual_seed(0)
    model = PadOdd().train()
    before = _untouched(model)
    explainer = relprop.Explainer(model, input_shape=(2, 3, 5, 5))
    assert explainer.specialised_to == (2, 3, 5, 5) and "Traced for input shape" in explainer.summary()
    explainer.explain(torch.rand(2, 3, 5, 5))
    _assert_untouched(model, before)  # BatchNorm's statistics are not updated, by tracing nor by explaining


def test_models_without_size_branches_are_traced_for_every_shape() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    explainer = relprop.Explainer(model)
    assert explainer.specialised_to is None and RelevanceGraph(model).specialised_to is None
    graph = explainer.graph
    explainer.explain(torch.rand(1, 1, 8, 8))
    explainer.explain(torch.rand(2, 1, 5, 7))
    assert explainer.graph is graph


@pytest.mark.parametrize("model", [DataBranch(), DataInt()], ids=["bool", "int"])
def test_branches_on_tensor_values_are_still_refused(model: nn.Module) -> None:
    line = "if x.sum() > 0" if isinstance(model, DataBranch) else "n = int(x.abs().sum())"
    for make in (lambda: relprop.Explainer(model), lambda: relprop.Explainer(model, input_shape=(1, 4))):
        with pytest.raises(TracingError) as info:
            make()
        msg = str(info.value)
        assert not isinstance(info.value, SizeDependentTracingError)
        assert "test_tracing_specialised.py" in msg and line in msg and "control flow" in msg
    with pytest.raises(TracingError, match="control flow"):
        RelevanceGraph(model, example_input=torch.rand(1, 4))


@pytest.mark.parametrize(("name", "size"), [("tf_efficientnet_b0", 64), ("mobilevit_xxs", 72)])
def test_timm_models_with_size_branches(name: str, size: int) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    before = _untouched(model)
    x = torch.rand(1, 3, size, size)
    relevance = relprop.explain(model, x, composite="epsilon_plus_flat")
    assert relevance.shape == x.shape and torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    explainer = cached_explainer(model, "epsilon_plus_flat", None, None)
    assert explainer.specialised_to == tuple(x.shape)
    with torch.no_grad():
        torch.testing.assert_close(explainer.explain(x).logits, model(x), atol=1e-4, rtol=1e-4)
    _assert_untouched(model, before)
