"""No unclear errors: wrapped models (DataParallel, DistributedDataParallel, TorchScript, torch.compile), models
returning a tuple or a dict (and ``output=`` to select the logits), empty batches, meta tensors, and inputs on
another device or of another dtype than the model's. Every error is a RelpropError whose message says what to
do, and following it gives an explanation."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import relprop
from relprop.errors import InputError, ModelOutputError, RelpropError, TracingError, WrappedModelError


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)
    ).eval()  # fmt: skip


X = torch.rand(2, 3, 8, 8)


# -- wrapped models --------------------------------------------------------------------------------------------
def _ddp(model: nn.Module) -> nn.Module:
    """A DistributedDataParallel object without a process group (only its type and ``.module`` matter)."""
    ddp = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(ddp)
    ddp.module = model
    return ddp


def _wrappers() -> dict[str, tuple[object, str]]:
    return {
        "DataParallel": (nn.DataParallel, "model.module"),
        "DistributedDataParallel": (_ddp, "model.module"),
        "script": (torch.jit.script, "eager"),
        "trace": (lambda m: torch.jit.trace(m, X), "eager"),
        "compile": (torch.compile, "model._orig_mod"),
    }


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("how", list(_wrappers()))
@pytest.mark.parametrize("entry", ["Explainer", "explain"])
def test_wrapped_model_says_what_to_pass_and_that_works(how: str, entry: str) -> None:
    model = small_cnn()
    wrap, hint = _wrappers()[how]
    wrapped = wrap(model)
    with pytest.raises(WrappedModelError, match=hint.replace(".", r"\.")) as info:
        if entry == "Explainer":
            relprop.Explainer(wrapped, "epsilon")
        else:
            relprop.explain(wrapped, X, 1, "epsilon")
    assert isinstance(info.value, TracingError) and "control flow" not in str(info.value)
    want = relprop.explain(model, X, 1, "epsilon")
    if hint == "model.module":
        got = relprop.explain(wrapped.module, X, 1, "epsilon")
    elif hint == "model._orig_mod":
        got = relprop.explain(wrapped._orig_mod, X, 1, "epsilon")
    else:  # the eager architecture with the TorchScript module's weights
        assert "load_state_dict(" in str(info.value)
        eager = small_cnn()
        with torch.no_grad():
            for p in eager.parameters():
                p.zero_()
        eager.load_state_dict(wrapped.state_dict())
        got = relprop.explain(eager, X, 1, "epsilon")
    torch.testing.assert_close(got, want)


def test_wrapped_submodule_is_named() -> None:
    model = small_cnn()
    model[0] = nn.DataParallel(model[0])
    with pytest.raises(WrappedModelError, match=r"submodule '0' is a DataParallel.*\.module"):
        relprop.Explainer(model)


# -- tuple and dict outputs ------------------------------------------------------------------------------------
class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.head(h), h


class DictOut(TupleOut):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        h = self.body(x)
        return {"aux": torch.relu(h) * 2, "logits": self.head(h)}


class Reference(TupleOut):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.head(self.body(x))


def _pair(cls: type[nn.Module]) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = cls()
    ref = Reference()
    ref.load_state_dict(model.state_dict())
    return model, ref


@pytest.mark.parametrize(
    ("cls", "selector", "hint"),
    [
        (TupleOut, 0, "output=0"),
        (TupleOut, lambda out: out[0], "output=0"),
        (DictOut, "logits", "output='logits'"),
        (DictOut, lambda out: out["logits"], "output='logits'"),
    ],
)
def test_tuple_and_dict_outputs_take_a_selector(cls: type[nn.Module], selector: object, hint: str) -> None:
    model, ref = _pair(cls)
    x = torch.rand(4, 6)
    with pytest.raises(ModelOutputError, match=hint) as info:
        relprop.Explainer(model, "epsilon").explain(x, 1)
    assert "output=" in str(info.value)
    want = relprop.Explainer(ref, "epsilon").explain(x, 1)
    e = relprop.Explainer(model, "epsilon", output=selector).explain(x, 1)
    torch.testing.assert_close(e.relevance, want.relevance)
    torch.testing.assert_close(e.logits, want.logits)
    torch.testing.assert_close(relprop.explain(model, x, 1, "epsilon", output=selector), want.relevance)
    fp = relprop.Explainer(model, "epsilon", output=selector).forward(x)
    torch.testing.assert_close(fp.explain(2).relevance, relprop.Explainer(ref, "epsilon")(x, 2))


def test_a_selector_that_picks_no_tensor_is_a_clear_error() -> None:
    model, _ = _pair(DictOut)
    with pytest.raises(ModelOutputError, match="'scores'.*'aux', 'logits'"):
        relprop.Explainer(model, output="scores")
    with pytest.raises(ModelOutputError, match="output=5.*2 outputs"):
        relprop.Explainer(_pair(TupleOut)[0], output=5)
    with pytest.raises(ModelOutputError, match="single tensor"):
        relprop.Explainer(small_cnn(), output=0)


def test_googlenet_in_train_mode_with_a_selector() -> None:
    import torchvision

    model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False, num_classes=5).train()
    e = relprop.Explainer(model, "epsilon", output="logits").explain(torch.rand(2, 3, 64, 64), 1)
    assert bool(torch.isfinite(e.relevance).all())


# -- empty, meta, other device or dtype ------------------------------------------------------------------------
def test_empty_batch() -> None:
    with pytest.raises(InputError, match="the batch is empty"):
        relprop.explain(small_cnn(), torch.rand(0, 3, 8, 8), 0)


def test_meta_input() -> None:
    with pytest.raises(InputError, match="meta device"):
        relprop.explain(small_cnn(), torch.rand(2, 3, 8, 8, device="meta"), 0)


def test_model_on_meta_and_input_on_cpu() -> None:
    model = small_cnn().to("meta")
    with pytest.raises(InputError, match=r"meta.*cpu|cpu.*meta") as info:
        relprop.explain(model, X, 0)
    assert "to_empty" in str(info.value) and "load_state_dict" in str(info.value)


def test_input_of_another_dtype() -> None:
    model = small_cnn()
    with pytest.raises(InputError, match=r"float64.*float32.*x\.float\(\).*model\.double\(\)"):
        relprop.explain(model, X.double(), 0)
    relprop.explain(model, X.double().float(), 0)
    relprop.explain(model.double(), X.double(), 0)
    with pytest.raises(InputError, match=r"float16.*float64.*x\.double\(\)"):
        relprop.explain(model, X.half(), 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("preset", ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon"])
def test_half_precision_works_or_fails_clearly(dtype: torch.dtype, preset: str) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval().to(dtype)
    x = torch.rand(2, 3, 32, 32).to(dtype)
    try:
        r = relprop.explain(model, x, 1, preset)
    except RelpropError as exc:
        assert str(dtype).split(".")[-1] in str(exc)
        return
    assert r.dtype == dtype and r.shape == x.shape


# -- targets ---------------------------------------------------------------------------------------------------
def test_numpy_integer_target() -> None:
    import numpy as np

    model = small_cnn()
    torch.testing.assert_close(relprop.explain(model, X, np.int64(3)), relprop.explain(model, X, 3))


def test_output_that_is_not_logits_is_a_model_output_error() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Flatten(0))
    with pytest.raises(ModelOutputError, match=r"shape \(6,\).*\(B, C\)"):
        relprop.explain(model, torch.rand(2, 4), 0)
