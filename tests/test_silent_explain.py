"""No silent wrong results: an Explainer follows the model's training flags (and submodules) at call time,
the conservation error has one definition, and an output that does not depend on the input is an error."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import relprop
from relprop.errors import RelpropError
from relprop.evaluation import metrics

D = torch.float64


class FunctionalDropout(nn.Module):
    """``F.dropout(x, p, self.training)`` and a ``self.training`` branch: both are fixed when fx traces."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        h = F.dropout(h, 0.5, self.training)
        if self.training:
            h = h * 0.5
        return self.fc2(h)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return FunctionalDropout().to(D)


def test_explainer_built_in_train_mode_follows_model_eval() -> None:
    model = _model().train()
    x = torch.rand(4, 6, dtype=D)
    explainer = relprop.Explainer(model, "epsilon")
    explainer(x, 1)
    model.eval()
    first, second = explainer(x, 1), explainer(x, 1)
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # no dropout any more
    fresh = relprop.Explainer(model, "epsilon")(x, 1)
    torch.testing.assert_close(first, fresh, rtol=1e-12, atol=1e-12)
    fp = explainer.forward(x)
    torch.testing.assert_close(fp.logits, model(x), rtol=1e-12, atol=1e-12)
    assert "dropout" in explainer.summary()  # the summary is the current graph's


def test_explainer_built_in_eval_mode_follows_model_train() -> None:
    model = _model().eval()
    x = torch.rand(4, 6, dtype=D)
    explainer = relprop.Explainer(model, "epsilon")
    explainer(x, 1)
    model.train()
    torch.manual_seed(3)
    got = explainer.explain(x, 1)
    torch.manual_seed(3)
    want = relprop.Explainer(model, "epsilon").explain(x, 1)
    torch.testing.assert_close(got.relevance, want.relevance, rtol=1e-12, atol=1e-12)
    torch.manual_seed(3)
    torch.testing.assert_close(got.logits, model(x), rtol=1e-12, atol=1e-12)
    model.eval()  # and back again
    torch.testing.assert_close(explainer(x, 1), relprop.Explainer(model, "epsilon")(x, 1), rtol=1e-12, atol=1e-12)


def test_explainer_follows_a_replaced_submodule() -> None:
    model = _model().eval()
    x = torch.rand(4, 6, dtype=D)
    explainer = relprop.Explainer(model, "epsilon")
    explainer(x, 1)
    model.fc2 = nn.Linear(16, 3).to(D)
    e = explainer.explain(x, 1)
    torch.testing.assert_close(e.logits, model(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(e.relevance, relprop.Explainer(model, "epsilon")(x, 1), rtol=1e-12, atol=1e-12)


# -- conservation error: one definition ------------------------------------------------------------------------
def test_conservation_error_has_one_definition_on_a_zero_seed() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(D)
    x = torch.rand(3, 6, dtype=D)
    seed = torch.zeros(3, 3, dtype=D)
    seed[0, 1] = 1.0
    e = relprop.Explainer(model, "epsilon").explain(x, seed)
    prop, metric = e.conservation_error, metrics.conservation_error(e)
    torch.testing.assert_close(prop, metric, equal_nan=True)
    # samples without any output relevance (nothing to conserve) have no defined error: NaN, not 0 or Inf
    assert bool(torch.isfinite(prop[0])) and bool(torch.isnan(prop[1:]).all())


# -- an output that does not depend on the input --------------------------------------------------------------
class ConstantOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], 3)


class ZeroTimesInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x * 0) + 1.0


@pytest.mark.parametrize("cls", [ConstantOutput])
def test_output_independent_of_the_input_is_a_clear_error(cls: type[nn.Module]) -> None:
    model = cls()
    with pytest.raises(RelpropError, match="no relevance reaches the input") as info:
        relprop.explain(model, torch.rand(2, 4), 0, "epsilon")
    assert "does not depend on the input" in str(info.value)


def test_zero_times_input_gives_exactly_zero_relevance_and_says_nothing_was_conserved() -> None:
    """``x * 0``: the input is in the graph, so relevance reaches it, and it is exactly zero: the explanation
    is right (nothing depends on x), and its conservation error says that nothing was conserved."""
    model = ZeroTimesInput()
    e = relprop.Explainer(model, "epsilon").explain(torch.rand(2, 4), 0)
    assert bool((e.relevance == 0).all())
    assert bool((e.conservation_error == 1).all())


def test_preset_stabiliser_reaches_additions_and_pooling() -> None:
    """epsilon_plus_flat(stabilizer=...) used to drop the stabiliser at additions (a dead kw.pop)."""
    import torch.nn as nn

    from relprop import composites

    for preset in (composites.epsilon_plus_flat, composites.epsilon_gamma_box, composites.epsilon_plus):
        c = preset(stabilizer=0.5)
        assert c.add.epsilon == 0.5 and c.pool.epsilon == 0.5 and c.product.stabilizer == 0.5, preset.__name__

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            return self.out(h + self.b(h))

    torch.manual_seed(0)
    m, x = Residual(), torch.randn(3, 4)
    r_small = relprop.explain(m, x, 0, composites.epsilon_plus_flat(stabilizer=1e-6))
    r_big = relprop.explain(m, x, 0, composites.epsilon_plus_flat(stabilizer=10.0))
    assert not torch.allclose(r_small, r_big)  # the stabiliser changes the result at the addition
