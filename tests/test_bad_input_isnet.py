"""Bad input to the public ISNet, evaluation and heatmap API: each case raises a RelpropError subclass whose
message names the problem and how to fix it (wrong dtype, shape, device string, masks that are uint8 {0, 255},
float outside [0, 1], of the wrong shape, missing or wrong files); hints are followed to check that they work."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from relprop.errors import RelpropError
from relprop.evaluation import background_share
from relprop.isnet import (
    HeatmapLossConfig,
    ISNetMaps,
    TrainConfig,
    fit,
    heatmap_loss,
    isnet_loss,
    isnet_step,
    load_checkpoint,
    prepare_mask,
    rrr_penalty,
    tune_c1_c2,
)
from relprop.isnet.evaluation import evaluate
from relprop.viz.heatmap import save_png, to_heatmap, to_image

sys.path.insert(0, str(Path(__file__).parent))
from _isnet_train_worker import BoxDataset, build, plain_model  # noqa: E402

torch.set_num_threads(1)

X, M, Y = BoxDataset(4).images, BoxDataset(4).masks, BoxDataset(4).labels
MAPS = torch.rand(4, 1, 1, 16, 16)
MODEL = plain_model(0)  # 3 classes
Y3, Y10 = torch.full_like(Y, 3), torch.full_like(Y, 10)  # labels the model has no output for


def _fit(**kw: object) -> Callable[[Path], object]:
    def call(tmp: Path) -> object:
        args: dict[str, object] = {"out_dir": tmp / "run", "progress": False, **kw}
        return fit(plain_model(0), BoxDataset(8), None, TrainConfig(method="plain", epochs=1, batch_size=8), **args)

    return call


# (name, call(tmp_path), words the message must contain: the problem and the fix)
CASES: list[tuple[str, Callable[[Path], object], tuple[str, ...]]] = [
    # masks
    ("uint8 0/255 mask", lambda t: heatmap_loss(MAPS, (M * 255).to(torch.uint8)), ("255", "mask / 255")),
    ("mask outside [0, 1]", lambda t: rrr_penalty(MODEL, X, M * 2), ("not binary", "2", "mask > 0.5")),
    ("NaN mask", lambda t: background_share(MAPS[:, 0], M * float("nan")), ("NaN", "0 (background)")),
    ("mask of another size", lambda t: rrr_penalty(MODEL, X, M[..., :8, :8]), ("8x8", "16x16", "input's size")),
    ("mask of another batch", lambda t: heatmap_loss(MAPS, M[:2]), ("2 samples", "4")),
    ("mask with 2 channels", lambda t: prepare_mask(torch.ones(4, 2, 16, 16), (16, 16), 4), ("(B, 1, H, W)",)),
    ("mask not a tensor", lambda t: background_share(MAPS[:, 0], M.numpy()), ("torch.Tensor", "ndarray")),
    ("complex mask", lambda t: heatmap_loss(MAPS, M.to(torch.complex64)), ("complex", "bool or 0/1")),
    ("batch mask uint8", lambda t: isnet_step(MODEL, (X, (M * 255).byte(), Y), TrainConfig()), ("255", "mask > 0")),
    # labels
    ("label >= C", lambda t: isnet_step(MODEL, (X, M, Y10), TrainConfig()), ("class 10", "3 outputs", "0..2")),
    ("label >= C plain", lambda t: isnet_step(MODEL, (X, M, Y3), TrainConfig(method="plain")), ("class 3",)),
    ("label >= C rrr", lambda t: isnet_step(MODEL, (X, M, Y3), TrainConfig(method="rrr")), ("num_classes",)),
    ("label >= C isnet_loss", lambda t: isnet_loss(torch.randn(4, 3), Y3, MAPS, M), ("class 3", "0..2")),
    ("negative label", lambda t: isnet_step(MODEL, (X, M, Y - 5), TrainConfig()), ("labels", ">= 0")),
    ("float labels", lambda t: isnet_step(MODEL, (X, M, Y.float()), TrainConfig()), ("integer class indices",)),
    ("label class for selective", lambda t: ISNetMaps(MODEL, selective_class="label")(X, Y3), ("class 3",)),
    # images, heatmaps, dtypes
    ("integer images", lambda t: isnet_step(MODEL, (X.byte(), M, Y), TrainConfig()), ("float tensor", "uint8")),
    ("images without batch", lambda t: rrr_penalty(MODEL, X[0], M[0]), ("(B, C, H, W)",)),
    ("heatmaps NaN", lambda t: heatmap_loss(MAPS * float("nan"), M), ("NaN",)),
    ("heatmaps 3-d", lambda t: heatmap_loss(MAPS[:, 0, 0], M), ("(B, K, C, h, w)",)),
    ("integer relevance share", lambda t: background_share(MAPS[:, 0].long(), M), ("floating-point",)),
    ("relevance share 3-d", lambda t: background_share(MAPS[:, 0, 0], M), ("(B, C, H, W)",)),
    ("P out of range", lambda t: isnet_loss(torch.randn(4, 3), Y, MAPS, M, P=1.5), ("P", "[0, 1]")),
    ("tune_c1_c2 one total", lambda t: tune_c1_c2(torch.ones(1)), ("at least two",)),
    # configs
    ("loss config d", lambda t: HeatmapLossConfig(d=2.0), ("d=2.0", "[0, 1]")),
    ("loss config NaN", lambda t: HeatmapLossConfig(E=float("nan")), ("E=nan", "finite")),
    ("train config lr", lambda t: TrainConfig(lr=0.0), ("lr", "> 0")),
    ("train config method", lambda t: TrainConfig(method="isnet"), ("isnet", "selective")),
    ("unknown variant", lambda t: ISNetMaps(MODEL, "fancy"), ("fancy", "selective")),
    # heatmaps
    ("heatmap of a 4-d batch", lambda t: to_heatmap(np.zeros((2, 3, 4, 4))), ("(C, H, W)", "one image at a time")),
    ("heatmap of strings", lambda t: to_heatmap(np.array([["a"]])), ("numeric",)),
    ("heatmap NaN", lambda t: to_heatmap(np.full((4, 4), np.nan)), ("NaN",)),
    ("heatmap normalize", lambda t: to_heatmap(np.ones((4, 4)), normalize="mean"), ("'max' or 'percentile'",)),
    ("overlay of another size", lambda t: to_heatmap(np.ones((4, 4)), overlay=np.ones((5, 5))), ("5×5", "4×4")),
    ("overlay alpha", lambda t: to_heatmap(np.ones((4, 4)), overlay=np.ones((4, 4)), alpha=2), ("alpha",)),
    ("image of int64 pixels", lambda t: to_image(np.ones((3, 4, 4), dtype=np.int64)), ("int64", "uint8")),
    ("image with 5 channels", lambda t: to_image(np.ones((5, 4, 4))), ("1 or 3 channels",)),
    ("png of int pixels", lambda t: save_png(np.ones((4, 4), dtype=np.int32), t / "a.png"), ("uint8 or float",)),
    # fit: device strings, folders, files
    ("device string", _fit(accelerator="cuda:0"), ("cuda:0", "devices=[0]")),
    ("unknown accelerator", _fit(accelerator="gpu0"), ("gpu0", "'cpu'")),
    ("devices 0", _fit(devices=0), ("devices=0", ">= 1")),
    ("max_steps", _fit(max_steps=-3), ("max_steps=-3", "-1")),
    ("model_spec not JSON", _fit(model_spec={"f": object()}), ("JSON",)),
    ("out_dir is a file", lambda t: (t / "f").write_text("x") and _fit(out_dir=t / "f")(t), ("existing file",)),
    (
        "garbage checkpoint",
        lambda t: (t / "g.ckpt").write_bytes(b"x") and load_checkpoint(t / "g.ckpt", build),
        ("not a readable checkpoint",),
    ),  # fmt: skip
    ("evaluate an empty split", lambda t: evaluate(MODEL, {"e": _empty()}, progress=False), ("'e' is empty",)),
]


def _empty() -> torch.utils.data.Dataset:
    return torch.utils.data.TensorDataset(torch.zeros(0, 1, 16, 16), torch.zeros(0, 1, 16, 16), torch.zeros(0).long())


@pytest.mark.parametrize(("name", "call", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_relprop_error_naming_problem_and_fix(
    tmp_path: Path, name: str, call: Callable[[Path], object], words: tuple[str, ...]
) -> None:
    with pytest.raises(RelpropError) as info:
        call(tmp_path)
    message = str(info.value)
    for word in words:
        assert word in message, f"{name}: {word!r} not in {message!r}"
    assert isinstance(info.value, (ValueError, TypeError, IndexError)), type(info.value)  # the builtin kind too


def test_isnet_step_label_hint_followed_works() -> None:
    """Before: torch's "Target 10 is out of bounds" (selective: a one_hot RuntimeError). The message says to give
    the model one output per class (num_classes >= 11) or to map the labels to 0..2: both work."""
    y = Y.clone()
    y[0] = 10
    with pytest.raises(RelpropError, match=r"class 10.*3 outputs.*num_classes >= 11.*0\.\.2"):
        isnet_step(MODEL, (X, M, y), TrainConfig())
    wider = plain_model(0, classes=11)
    loss, _ = isnet_step(wider, (X, M, y), TrainConfig())
    assert torch.isfinite(loss)
    loss, _ = isnet_step(MODEL, (X, M, y % 3), TrainConfig())
    assert torch.isfinite(loss)


def test_device_string_hint_followed_is_accepted(tmp_path: Path) -> None:
    """fit(accelerator="cpu:0") says to pass the index as devices=: accelerator="cpu", devices=1 trains."""
    with pytest.raises(RelpropError, match=r"accelerator='cpu', devices=\[0\]"):
        _fit(accelerator="cpu:0")(tmp_path)
    result = _fit(accelerator="cpu", devices=1)(tmp_path)
    assert result.finished  # type: ignore[attr-defined]


def test_the_uint8_mask_hint_followed_works_in_training_steps() -> None:
    m255 = (M * 255).to(torch.uint8)
    for method in ("rrr", "selective"):
        with pytest.raises(RelpropError, match=r"\(mask / 255\) or \(mask > 0\)"):
            isnet_step(MODEL, (X, m255, Y), TrainConfig(method=method))
        want, _ = isnet_step(MODEL, (X, M, Y), TrainConfig(method=method), create_graph=False)
        for fixed in (m255 / 255, m255 > 0):
            got, _ = isnet_step(MODEL, (X, fixed, Y), TrainConfig(method=method), create_graph=False)
            torch.testing.assert_close(got, want)


def test_a_model_with_wrong_outputs_is_named() -> None:
    class Flat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten()

    with pytest.raises(RelpropError, match=r"logits of shape \(B, C\)"):
        isnet_step(Flat(), (X, M, Y), TrainConfig(method="plain"))
