"""Bad input gets a specific error that names what is wrong and how to fix it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import relprop
from relprop import InputError, RelpropError, TargetError, TracingError, UnsupportedLayerError


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5)
    ).eval()


class WithUpsample(nn.Module):
    """A module relprop has no rule for (bicubic upsampling: its weights can be negative)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Upsample(scale_factor=2, mode="bicubic"))
        self.head = nn.Linear(2 * 12 * 12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: untraceable
            x = x * 2
        return self.fc(x)


class Unsupported(nn.Module):
    """Two calls relprop has no rule for (sin, and a division by an input-dependent tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.sin(self.a(x)) / self.b(x))


def test_unsupported_layer_names_path_type_and_fix() -> None:
    with pytest.raises(UnsupportedLayerError) as info:
        relprop.Explainer(WithUpsample())
    msg = str(info.value)
    assert "'features.2'" in msg and "Upsample" in msg and "leaf_modules" in msg


def test_unsupported_layer_can_be_declared_a_route() -> None:
    model = WithUpsample().eval()
    x = torch.rand(2, 1, 8, 8)
    r = relprop.explain(model, x, 1, "epsilon", leaf_modules={nn.Upsample: "route"})
    assert r.shape == x.shape and torch.isfinite(r).all()


def test_final_softmax_is_explained_in_the_error() -> None:
    with pytest.raises(UnsupportedLayerError, match="softmax"):
        relprop.Explainer(nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)))


def test_unsupported_function_names_the_call_and_the_source_line() -> None:
    with pytest.raises(UnsupportedLayerError) as info:
        relprop.Explainer(Unsupported())
    msg = str(info.value)
    # every unsupported step at once, each with the user's own source line
    assert "2 steps without a relevance rule" in msg
    assert "`sin`" in msg and "divides by a tensor" in msg and "test_errors.py" in msg
    assert "torch.sin(self.a(x)) / self.b(x)" in msg


def test_unsupported_steps_in_a_library_model_name_module_path_and_type() -> None:
    class Block(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x)

    model = nn.Sequential(nn.Linear(4, 4), Block(), Block(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayerError) as info:
        relprop.Explainer(model)
    msg = str(info.value)
    assert "`1`, `2` (Block)" in msg and "2 steps" in msg and "1 kind" in msg
    assert "return torch.sin(x)" in msg  # the model's own line, not relprop's


def test_untraceable_model_names_the_call_that_broke_tracing() -> None:
    with pytest.raises(TracingError) as info:
        relprop.Explainer(DataDependent())
    msg = str(info.value)
    assert "test_errors.py" in msg and "if x.sum() > 0" in msg and "control flow" in msg


def test_wrong_channel_count() -> None:
    with pytest.raises(InputError, match=r"1 channels .* expects 3"):
        relprop.explain(small_cnn(), torch.rand(2, 1, 8, 8))


def test_missing_batch_dimension() -> None:
    with pytest.raises(InputError, match="unsqueeze"):
        relprop.explain(small_cnn(), torch.rand(3, 8, 8))


def test_wrong_feature_count_for_dense_model() -> None:
    with pytest.raises(InputError, match="expects 4 features"):
        relprop.explain(nn.Sequential(nn.Linear(4, 2)), torch.rand(2, 5))


def test_shape_error_deeper_in_the_model_names_the_step() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    with pytest.raises(InputError, match=r"'3' \(Linear\)"):
        relprop.explain(model, torch.rand(1, 3, 10, 10))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input(bad: float) -> None:
    x = torch.rand(2, 3, 8, 8)
    x[1, 2, 3, 4] = bad
    with pytest.raises(InputError, match=r"NaN .* Inf .* \(1, 2, 3, 4\)"):
        relprop.explain(small_cnn(), x)


def test_integer_input() -> None:
    with pytest.raises(InputError, match="floating-point"):
        relprop.explain(small_cnn(), torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8))


@pytest.mark.parametrize("target", [5, -1, torch.tensor([0, 7])])
def test_target_out_of_range(target: object) -> None:
    with pytest.raises(TargetError, match=r"out of range: the model has 5 outputs"):
        relprop.explain(small_cnn(), torch.rand(2, 3, 8, 8), target)  # type: ignore[arg-type]


def test_target_count_must_match_batch() -> None:
    with pytest.raises(TargetError, match="3 indices but the batch has 2"):
        relprop.explain(small_cnn(), torch.rand(2, 3, 8, 8), torch.tensor([0, 1, 2]))


def test_unknown_string_target_and_composite() -> None:
    with pytest.raises(TargetError, match="'predicted'"):
        relprop.explain(small_cnn(), torch.rand(1, 3, 8, 8), "max")
    with pytest.raises(ValueError, match="epsilon_plus_flat"):
        relprop.Explainer(small_cnn(), "epsilon_plus_flatt")


def test_float_target_must_have_logit_shape() -> None:
    with pytest.raises(TargetError, match=r"\(2, 5\)"):
        relprop.explain(small_cnn(), torch.rand(2, 3, 8, 8), torch.ones(2, 4))


def test_model_returning_a_tuple() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.fc(x)
            return y, F.relu(y)

    with pytest.raises(RelpropError, match=r"shape \(B, C\)"):
        relprop.explain(Two(), torch.rand(2, 4))


def test_composite_without_rule_for_a_layer_names_it() -> None:
    composite = relprop.Composite([(nn.Conv2d, relprop.Epsilon())], name="conv-only")
    with pytest.raises(UnsupportedLayerError, match=r"'conv-only' has no rule for module '4' \(Linear\)"):
        relprop.Explainer(small_cnn(), composite)


def test_invalid_rule_parameters() -> None:
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        relprop.AlphaBeta(2.0, 2.0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        relprop.Gamma(-0.1)
    with pytest.raises(ValueError, match="low must not exceed high"):
        relprop.ZBox(1.0, 0.0)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        relprop.Epsilon(-1.0)


def test_reflect_padding_is_refused_with_a_fix() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), nn.Flatten())
    with pytest.raises(UnsupportedLayerError, match="padding_mode='reflect'.*F.pad"):
        relprop.Explainer(model)


def test_hooks_are_honoured_or_refused_never_ignored() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).eval()
    x = torch.rand(2, 1, 6, 6)
    seen: list[str] = []
    handles = [
        model[0].register_forward_hook(lambda m, i, o: seen.append("conv")),  # folded with its BatchNorm
        model[2].register_forward_hook(lambda m, i, o: seen.append("relu")),  # run out of place by relprop
        model[2].register_forward_pre_hook(lambda m, i: seen.append("relu-pre")),
    ]
    relprop.explain(model, x)
    assert seen == ["conv", "relu-pre", "relu"]  # observing hooks run with the real values
    changing = model[2].register_forward_hook(lambda m, i, o: o * 2)
    with pytest.raises(UnsupportedLayerError, match="returns a value"):
        relprop.explain(model, x)
    changing.remove()
    observer = model.register_forward_pre_hook(lambda m, i: seen.append("model-pre"))
    relprop.explain(model, x)
    assert seen[-1] == "relu" and "model-pre" in seen  # the model's own hooks run too (tracing skips them)
    root = model.register_forward_hook(lambda m, i, o: o + 1)
    with pytest.raises(UnsupportedLayerError, match="returns a value"):
        relprop.Explainer(model).explain(x)
    root.remove()
    observer.remove()
    for h in handles:
        h.remove()
    relprop.explain(model, x)  # following the hint (removing the hooks) works


class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


def test_the_hint_for_a_recurrent_layer_works_when_followed() -> None:
    x = torch.randn(2, 3, 4)
    with pytest.raises(UnsupportedLayerError, match=r"leaf_modules=\{LSTM: 'route'\}") as info:
        relprop.explain(WithLSTM(), x)
    assert "'pass'" not in str(info.value).split("How to proceed")[0]  # 'pass' cannot apply to (output, state)
    r = relprop.explain(WithLSTM(), x, leaf_modules={nn.LSTM: "route"})
    assert r.shape == x.shape and bool(torch.isfinite(r).all())
    with pytest.raises(relprop.RelpropError, match="declare it 'route'"):
        relprop.explain(WithLSTM(), x, leaf_modules={nn.LSTM: "pass"})


def test_an_unsupported_call_by_keyword_is_named() -> None:
    class Sin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.sin(input=self.a(x)))

    with pytest.raises(UnsupportedLayerError, match="`sin`.*test_errors.py"):
        relprop.explain(Sin(), torch.randn(2, 4))
