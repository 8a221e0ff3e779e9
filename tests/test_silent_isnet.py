"""Silently wrong results of the ISNet, evaluation and heatmap code, each now an error, a warning or a right answer:
masks of the wrong encoding, best.ckpt after a kill, a collapsed model's background share, channel-last relevance,
uint8 overlays, stale temporaries of killed writes, the epoch metrics.json records, all-background masks."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from relprop.data import MaskedTensorDataset
from relprop.errors import InputError, TrainingInterrupted
from relprop.evaluation import background_share
from relprop.isnet import (
    BEST_NAME,
    CHECKPOINT_NAME,
    METRICS_NAME,
    TrainConfig,
    background_loss,
    fit,
    foreground_loss,
    heatmap_loss,
    isnet_loss,
    isnet_step,
    rrr_penalty,
)
from relprop.isnet.config import history_val_loss
from relprop.isnet.evaluation import evaluate
from relprop.viz.heatmap import to_heatmap, to_image

sys.path.insert(0, str(Path(__file__).parent))
from _isnet_train_worker import BoxDataset, oscillating, plain_model  # noqa: E402

torch.set_num_threads(1)


def _box_batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    data = BoxDataset(n)
    return data.images, data.masks, data.labels


# -- (3) one mask validator for every consumer -------------------------------------------------------------------


def _consumers() -> dict[str, object]:
    """Every public function that takes a foreground mask (B, 1, H, W) for a 16x16 batch of 4."""
    model = plain_model(0)
    x, _, y = _box_batch()
    maps = torch.rand(4, 1, 1, 16, 16)
    logits = torch.randn(4, 3)
    return {
        "rrr_penalty": lambda m: rrr_penalty(model, x, m),
        "heatmap_loss": lambda m: heatmap_loss(maps, m),
        "background_loss": lambda m: background_loss(maps, m),
        "foreground_loss": lambda m: foreground_loss(maps, m),
        "isnet_loss": lambda m: isnet_loss(logits, y, maps, m),
        "background_share": lambda m: background_share(maps[:, 0], m),
        "isnet_step rrr": lambda m: isnet_step(model, (x, m, y), TrainConfig(method="rrr")),
        "isnet_step selective": lambda m: isnet_step(model, (x, m, y), TrainConfig(method="selective")),
        "MaskedTensorDataset": lambda m: MaskedTensorDataset(x, m, y, ["a", "b", "c"]),
    }


@pytest.mark.parametrize("consumer", list(_consumers()))
def test_every_mask_consumer_refuses_a_uint8_0_255_mask_alike(consumer: str) -> None:
    """Before: rrr_penalty took the mask as is (background weight 1 - 255: the penalty landed on the foreground),
    background_share returned shares > 1 and MaskedTensorDataset a dtype error; now each raises the same
    InputError (one validator) naming the values and the fix."""
    _, mask, _ = _box_batch()
    m255 = (mask * 255).to(torch.uint8)
    with pytest.raises(InputError) as info:
        _consumers()[consumer](m255)
    message = str(info.value)
    assert "255" in message and "mask / 255" in message and "mask > 0" in message, message


@pytest.mark.parametrize("consumer", list(_consumers()))
def test_every_mask_consumer_refuses_a_float_mask_outside_0_1(consumer: str) -> None:
    _, mask, _ = _box_batch()
    with pytest.raises(InputError, match=r"not binary.*-0\.5"):
        _consumers()[consumer](mask - 0.5)


def test_following_the_uint8_mask_hint_gives_the_float_mask_result() -> None:
    """The message says to use ``mask / 255`` or ``mask > 0``: both give the result of the float mask."""
    model = plain_model(0)
    x, mask, _ = _box_batch()
    m255 = (mask * 255).to(torch.uint8)
    _, want = rrr_penalty(model, x, mask, create_graph=False)
    for fixed in (m255 / 255, m255 > 0):
        _, got = rrr_penalty(model, x, fixed, create_graph=False)
        torch.testing.assert_close(got, want)
    r = torch.rand(4, 1, 16, 16)
    torch.testing.assert_close(background_share(r, m255 > 0), background_share(r, mask))


# -- (6) best.ckpt after a kill between the epoch-end writes -----------------------------------------------------


class _Killed(Exception):
    """Stands in for SIGKILL: raised right after a checkpoint file is written."""


def _kill_after_first_write_of_epoch(monkeypatch: pytest.MonkeyPatch, epochs_done: int) -> None:
    from relprop.isnet.fitting import _AtomicCheckpointIO

    original = _AtomicCheckpointIO.save_checkpoint

    def save_then_die(self, checkpoint, path, storage_options=None):  # type: ignore[no-untyped-def]
        original(self, checkpoint, path, storage_options)
        meta = checkpoint["relprop"]
        if meta["epoch"] == epochs_done and meta["batch"] == 0:
            raise _Killed(path)

    monkeypatch.setattr(_AtomicCheckpointIO, "save_checkpoint", save_then_die)


def _epoch(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["relprop"]["epoch"])


def test_best_checkpoint_is_never_ahead_of_the_run_after_a_kill(tmp_path: Path, monkeypatch) -> None:
    """Killed after the first checkpoint file written at the end of the best epoch. Before: best.ckpt came first,
    so it held an epoch that last.ckpt (the run's record, which the resume replays) had not reached, and the old
    best was gone. Now last.ckpt comes first and records the best epoch; best.ckpt is verified against it, and the
    resume repairs it: it is the reference run's best epoch."""
    model, data, config = oscillating()
    reference = fit(model, data, data, config, out_dir=tmp_path / "reference", progress=False)
    losses = [history_val_loss(h, config) for h in reference.history]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert 0 < best < len(losses) - 1
    out = tmp_path / "killed"
    with monkeypatch.context() as m:
        _kill_after_first_write_of_epoch(m, best + 1)
        with pytest.raises(_Killed):
            fit(oscillating()[0], data, data, config, out_dir=out, progress=False)
    assert _epoch(out / BEST_NAME) <= _epoch(out / CHECKPOINT_NAME)  # never a state the run's record lacks
    with pytest.warns(UserWarning, match=rf"best.ckpt holds epoch \d, but .*records epoch {best + 1}.*repaired"):
        resumed = fit(oscillating()[0], data, data, config, out_dir=out, progress=False)
    assert len(resumed.history) == len(reference.history)
    got, want = (torch.load(d / BEST_NAME, weights_only=True) for d in (out, tmp_path / "reference"))
    assert got["relprop"]["epoch"] == best + 1
    for k in want["state_dict"]:
        assert torch.equal(got["state_dict"][k], want["state_dict"][k]), k


def test_a_failed_best_copy_is_repaired_on_resume(tmp_path: Path, monkeypatch) -> None:
    """The copy step of best.ckpt fails right after last.ckpt is written: on resume, best.ckpt is rebuilt from
    last.ckpt (which holds that very epoch) even when the run is already finished."""
    from relprop.isnet import fitting

    model, data, config = oscillating()
    config = TrainConfig(**{**config.to_dict(), "epochs": 1})
    reference = fit(model, data, data, config, out_dir=tmp_path / "reference", progress=False)

    def broken_copy(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise _Killed("copying best.ckpt")

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(fitting, "_write_best", broken_copy)
        with pytest.raises(_Killed):
            fit(oscillating()[0], data, data, config, out_dir=out, progress=False)
    assert (out / CHECKPOINT_NAME).exists() and not (out / BEST_NAME).exists()
    with pytest.warns(UserWarning, match="best.ckpt.*repaired"):
        again = fit(oscillating()[0], data, data, config, out_dir=out, progress=False)
    assert again.finished
    got = torch.load(out / BEST_NAME, weights_only=True)
    want = torch.load(tmp_path / "reference" / BEST_NAME, weights_only=True)
    assert got["relprop"]["epoch"] == want["relprop"]["epoch"] == 1
    assert all(torch.equal(got["state_dict"][k], v) for k, v in want["state_dict"].items())
    del reference


# -- (7) a collapsed model's background share is undefined, not perfect ------------------------------------------


def _collapsed() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    for p in model.parameters():
        nn.init.zeros_(p)  # constant logits: relevance 0 everywhere
    return model


def _splits(n: int = 6) -> dict[str, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    m = torch.zeros(n, 1, 8, 8)
    m[..., 2:6, 2:6] = 1
    return {"a": TensorDataset(torch.rand(n, 1, 8, 8, generator=g), m, torch.arange(n) % 3)}


def test_background_share_of_zero_relevance_is_nan() -> None:
    """Before: 0.0 (a perfect score) where Σ|R| = 0; now NaN (undefined)."""
    r = torch.zeros(2, 1, 4, 4)
    r[0, 0, 0, 0] = 1.0
    share = background_share(r, torch.zeros(2, 1, 4, 4))
    assert share[0] == 1.0 and math.isnan(float(share[1]))


def test_evaluate_reports_a_collapsed_model_as_undefined_and_warns() -> None:
    """Before: background_share 0.000 on every split, no warning."""
    with pytest.warns(UserWarning, match=r"6 of 6 images.*no relevance.*undefined"):
        res = evaluate(_collapsed(), _splits(), progress=False)
    assert math.isnan(res["a"]["background_share"])
    assert res["a"]["background_share_undefined"] == 6


def test_evaluate_of_a_working_model_neither_warns_nor_counts_undefined_shares() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = evaluate(model, _splits(), progress=False)
    assert 0.0 < res["a"]["background_share"] < 1.0 and res["a"]["background_share_undefined"] == 0


# -- smaller cases -----------------------------------------------------------------------------------------------


def test_to_heatmap_of_channel_last_rgb_relevance_sums_the_channels() -> None:
    """Before: an (H, W, 3) array was read as (C=H, W, 3) and gave a (W, 3, 3) image."""
    r = np.random.default_rng(0).normal(size=(3, 5, 7))
    want = to_heatmap(r)
    got = to_heatmap(r.transpose(1, 2, 0))
    assert got.shape == (5, 7, 3)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
def test_a_uint8_overlay_is_blended_as_its_0_1_image(layout: str) -> None:
    """Before: uint8 pixels were clipped to [0, 1] as if they were floats: every non-black pixel became white."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (3, 6, 6), dtype=np.uint8)
    r = rng.normal(size=(6, 6))
    want = to_heatmap(r, overlay=image.astype(np.float64) / 255)
    given = image if layout == "CHW" else image.transpose(1, 2, 0)
    np.testing.assert_array_equal(to_heatmap(r, overlay=given), want)
    np.testing.assert_array_equal(to_image(given), to_image(image.astype(np.float64) / 255))


def _stale(folder: Path, name: str) -> Path:
    """A temporary file as a killed atomic write of ``name`` leaves it (relprop._io's naming)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.k1ll3d_x.tmp"
    path.write_bytes(b"half written")
    return path


def test_stale_temporaries_of_killed_writes_are_removed_on_resume(tmp_path: Path) -> None:
    """Before: a `.last.ckpt.XXXXXXXX.tmp` of a killed write stayed in the run folder for ever."""
    config = TrainConfig(method="plain", epochs=1, batch_size=32)
    out = tmp_path / "run"
    stale = [_stale(out, n) for n in (CHECKPOINT_NAME, BEST_NAME, METRICS_NAME)]
    foreign = out / ".notes.txt.tmp"
    foreign.write_text("not ours")
    fit(plain_model(0), BoxDataset(), BoxDataset(8), config, out_dir=out, progress=False)
    assert not any(p.exists() for p in stale)
    assert foreign.exists()  # only temporaries of the run's own files are removed
    assert sorted(p.name for p in out.iterdir()) == [".notes.txt.tmp", BEST_NAME, CHECKPOINT_NAME, METRICS_NAME]


def test_metrics_json_of_a_resumed_run_stopped_before_its_first_step_says_the_true_epoch(
    tmp_path: Path, monkeypatch
) -> None:
    """Lightning's SIGTERM path stops a resumed run before its first step (simulated: SIGTERMException from the
    module's on_train_start, which runs after the metrics file's). Before: metrics.json then said epoch 0 and
    global_step 0, next to the history of the epoch done."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from relprop.isnet.fitting import _MetricsFile

    config = TrainConfig(method="plain", epochs=3, batch_size=32)
    fit(plain_model(0), BoxDataset(), None, config, out_dir=tmp_path, progress=False, max_steps=2)

    def stop_before_training(self, trainer, module):  # type: ignore[no-untyped-def]
        raise SIGTERMException

    monkeypatch.setattr(_MetricsFile, "on_train_start", stop_before_training)
    with pytest.raises(TrainingInterrupted, match="epoch 1 after 2 optimiser steps"):
        fit(plain_model(0), BoxDataset(), None, config, out_dir=tmp_path, progress=False)
    doc = json.loads((tmp_path / METRICS_NAME).read_text())
    assert (doc["epoch"], doc["global_step"], len(doc["history"])) == (1, 2, 1)


def test_an_all_background_mask_warns_naming_the_samples() -> None:
    """Before: silent, while the sample's background term normalises by a zero foreground (the batch loss
    roughly tripled)."""
    maps = torch.rand(4, 1, 1, 16, 16)
    _, mask, _ = _box_batch()
    mask = mask.clone()
    mask[1] = 0
    with pytest.warns(UserWarning, match=r"1 of 4 samples.*empty foreground") as record:
        heatmap_loss(maps, mask)
    assert len(record) == 1  # once per call, not once per term
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        heatmap_loss(maps, torch.ones_like(mask))
