"""ISNet training (relprop.isnet config, step, sampling, checkpoints, module, fitting): config, one-step losses,
Lightning fit with exact resume, signals, DDP, checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from relprop.errors import CheckpointError, InputError, TracingError
from relprop.isnet import (
    BEST_NAME,
    CHECKPOINT_NAME,
    METHODS,
    ISNetModule,
    TrainConfig,
    TrainingInterrupted,
    fit,
    isnet_step,
    load_checkpoint,
    p_at,
)
from relprop.isnet.config import history_val_loss
from relprop.isnet.loss import HeatmapLossConfig, isnet_loss
from relprop.isnet.variants import ISNetMaps, rrr_penalty

sys.path.insert(0, str(Path(__file__).parent))
from _isnet_train_worker import BoxDataset, bn_model, build, oscillating, plain_model  # noqa: E402

WORKER = Path(__file__).parent / "_isnet_train_worker.py"
ROOT = Path(__file__).parent.parent


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    data = BoxDataset(n)
    return data.images, data.masks, data.labels


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), f"{k}: max diff {(a[k].double() - b[k].double()).abs().max()}"
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


def _no_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


# -- config ----------------------------------------------------------------------------------------------------


def test_config_round_trips_through_json_and_names_bad_fields() -> None:
    config = TrainConfig(method="dual", P={0: 0.0, 2: 0.5}, clip=None, loss=HeatmapLossConfig(d=0.5, C2=10.0))
    back = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config and back.P == {0: 0.0, 2: 0.5} and back.loss.C2 == 10.0
    assert TrainConfig.from_dict({"P": {"0": 0.1, "3": 0.9}}).P == {0: 0.1, 3: 0.9}
    bad = [
        ({"method": "isnet"}, "method"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"P": 1.5}, "P"),
        ({"P": {"0": 0.5, "2": -0.1}}, "P"),
        ({"P": {"1": 0.5}}, "epoch 0"),
        ({"P": {"x": 0.5}}, "P schedule key"),
        ({"lr": 0.0}, "lr"),
        ({"clip": -1.0}, "clip"),
        ({"selective_class": "top"}, "selective_class"),
        ({"low": 1.0, "high": 0.0}, "high > low"),
        ({"seed": -1}, "seed"),
        ({"loss": {"d": 2.0}}, "d"),
        ({"loss": {"q": 1.0}}, "q"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ]
    for d, needle in bad:
        with pytest.raises(ValueError, match=needle):
            TrainConfig.from_dict(d)


def test_p_schedule() -> None:
    config = TrainConfig(P={"0": 0.0, "2": 0.5, "5": 0.9})
    assert [p_at(config, e) for e in (0, 1, 2, 4, 5, 9)] == [0.0, 0.0, 0.5, 0.5, 0.9, 0.9]
    assert p_at(TrainConfig(P=0.3), 7) == 0.3


# -- one step --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_isnet_step_every_method(method: str) -> None:
    model = plain_model(0)
    batch = _batch()
    config = TrainConfig(method=method, P=0.6, rrr_lambda=3.0)
    loss, stats = isnet_step(model, batch, config, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    expected = {"loss", "ce", "acc"} | ({"heatmap"} if method not in ("plain", "rrr") else set())
    assert set(stats) == expected | ({"rrr"} if method == "rrr" else set())
    x, mask, y = batch
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y)
    assert stats["ce"] == pytest.approx(float(ce), rel=1e-5)
    if method == "rrr":
        _, penalty = rrr_penalty(model, x, mask, create_graph=False)
        assert stats["loss"] == pytest.approx(float(ce + 3.0 * penalty), rel=1e-5)
    elif method not in ("plain", "stochastic"):
        logits, maps = ISNetMaps(model, method)(x, y)
        total, _, heat = isnet_loss(logits, y, maps, mask, 0.6)
        assert stats["loss"] == pytest.approx(float(total.detach()), rel=1e-5)
        assert stats["heatmap"] == pytest.approx(float(heat.detach()), rel=1e-5)


def test_isnet_step_bad_batches() -> None:
    model = plain_model(0)
    x, mask, y = _batch()
    config = TrainConfig(method="selective")
    with pytest.raises(InputError, match="masks have shape"):
        isnet_step(model, (x, mask[:, :, :8], y), config)
    with pytest.raises(InputError, match="triple.*length 2"):
        isnet_step(model, (x, y), config)
    with pytest.raises(InputError, match="labels"):
        isnet_step(model, (x, mask, y.float()), config)
    with pytest.raises(ValueError, match="variant 'dual'"):
        isnet_step(model, (x, mask, y), config, maps=ISNetMaps(model, "dual"))


# -- fit -------------------------------------------------------------------------------------------------------


def test_fit_resumes_exactly_mid_epoch(tmp_path: Path) -> None:
    """Stochastic variant (random classes), BatchNorm and dropout: stop after 6 steps (mid-epoch 1 of 4
    batches each), resume from a differently initialised model, compare with an uninterrupted run."""
    config = TrainConfig(method="stochastic", epochs=3, batch_size=16, seed=3)
    train, val = BoxDataset(), BoxDataset(16, seed=5)
    spec = {"arch": "bn", "init_seed": 11}
    full = fit(bn_model(1), train, val, config, out_dir=tmp_path / "full", progress=False, model_spec=spec)
    assert full.finished and len(full.history) == 3 and full.global_step == 12

    part = fit(bn_model(1), train, val, config, out_dir=tmp_path / "part", progress=False, max_steps=6)
    assert not part.finished and part.global_step == 6 and len(part.history) == 1
    doc = json.loads(part.metrics_path.read_text())
    assert doc["finished"] is False and len(doc["history"]) == 1
    resumed = fit(bn_model(7), train, val, config, out_dir=tmp_path / "part", progress=False)
    _assert_same(_state(full.model), _state(resumed.model))
    assert _no_time(resumed.history) == _no_time(full.history)
    assert resumed.finished and json.loads(resumed.metrics_path.read_text())["finished"] is True

    h = full.history[-1]
    assert set(h) == {
        "epoch", "train_loss", "train_ce", "train_heatmap", "train_acc", "val_acc", "val_ce", "val_heatmap", "seconds",
    }  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["best.ckpt", "last.ckpt", "metrics.json"]

    # a finished run is not trained again; the model gets the trained weights
    again = fit(bn_model(5), train, val, config, out_dir=tmp_path / "full", progress=False)
    assert again.global_step == 12
    _assert_same(_state(again.model), _state(full.model))
    # ...but a different config is an error naming the field
    with pytest.raises(ValueError, match="lr"):
        fit(bn_model(5), train, val, TrainConfig(**{**config.to_dict(), "lr": 0.1}), out_dir=tmp_path / "full")

    model, loaded_config, loaded_spec = load_checkpoint(full.last_checkpoint, build)
    assert loaded_config == config and loaded_spec == spec
    _assert_same(_state(model), _state(full.model))


def test_fit_continues_with_more_epochs_and_starts_over_without_resume(tmp_path: Path) -> None:
    """1 epoch; then 3 epochs stopped by max_steps inside epoch 1 (resumed from an epoch end with a step limit);
    then to the end: the same parameters as 3 epochs in one go (2 steps per epoch)."""
    config = TrainConfig(method="plain", epochs=1, batch_size=32, seed=1)
    three = TrainConfig(**{**config.to_dict(), "epochs": 3})
    train = BoxDataset()
    ref = fit(plain_model(0), train, None, three, out_dir=tmp_path / "a")
    fit(plain_model(0), train, None, config, out_dir=tmp_path / "b", progress=False)
    part = fit(plain_model(0), train, None, three, out_dir=tmp_path / "b", progress=False, max_steps=3)
    assert part.global_step == 3 and len(part.history) == 1 and not part.finished
    more = fit(plain_model(0), train, None, three, out_dir=tmp_path / "b")
    _assert_same(_state(ref.model), _state(more.model))
    assert more.global_step == 6 and _no_time(more.history) == _no_time(ref.history)
    assert [h["val_acc"] for h in more.history] == [None] * 3 and "train_heatmap" in more.history[0]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["last.ckpt", "metrics.json"]  # no val: no best
    fresh = fit(plain_model(0), train, None, config, out_dir=tmp_path / "b", resume=False, progress=False)
    assert fresh.global_step == 2 and len(fresh.history) == 1


@pytest.mark.parametrize("method", ["rrr", "original", "dual", "grad_input"])
def test_fit_smoke_other_methods(tmp_path: Path, method: str) -> None:
    config = TrainConfig(method=method, epochs=1, batch_size=32, seed=0)
    result = fit(plain_model(0), BoxDataset(), BoxDataset(8, seed=2), config, out_dir=tmp_path, progress=False)
    h = result.history[0]
    assert all(v is None or isinstance(v, (int, float)) for v in h.values())
    assert (h["train_heatmap"] is None) == (method == "rrr") and (h["val_heatmap"] is None) == (method == "rrr")
    assert ("train_rrr" in h) == (method == "rrr")


def test_fit_leaves_the_model_as_it_was_except_weights_and_no_stray_files(tmp_path: Path, monkeypatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    model = bn_model(0).eval()
    model[1].train()
    modes = [m.training for m in model.modules()]
    types = [type(m) for m in model.modules()]
    before = _state(model)
    config = TrainConfig(method="selective", epochs=1, batch_size=32)
    result = fit(model, BoxDataset(), BoxDataset(8), config, out_dir=tmp_path / "out", progress=True)
    assert result.model is model
    assert [m.training for m in model.modules()] == modes and [type(m) for m in model.modules()] == types
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
    assert not torch.equal(before["0.weight"], model[0].weight)
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["best.ckpt", "last.ckpt", "metrics.json"]


class _Pairs(BoxDataset):
    def __getitem__(self, i):
        image, _, label = super().__getitem__(i)
        return image, label


class _SmallMasks(BoxDataset):
    def __getitem__(self, i):
        image, mask, label = super().__getitem__(i)
        return image, mask[:, :8, :8], label


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).relu()
        if h.sum() > 0:
            h = h * 2
        return self.fc(h.mean((2, 3)))


def test_fit_bad_input_errors(tmp_path: Path) -> None:
    config = TrainConfig(method="selective", epochs=1, batch_size=32)
    with pytest.raises(InputError, match="triples.*tuple of length 2"):
        fit(plain_model(0), _Pairs(), None, config, out_dir=tmp_path / "a", progress=False)
    with pytest.raises(InputError, match="mask"):
        fit(plain_model(0), _SmallMasks(), None, config, out_dir=tmp_path / "b", progress=False)
    with pytest.raises(TracingError, match="_Untraceable"):
        fit(_Untraceable(), BoxDataset(), None, config, out_dir=tmp_path / "c", progress=False)
    bad = TrainConfig(method="plain", epochs=1, batch_size=32)
    bad.method = "isnet"
    with pytest.raises(ValueError, match="method"):
        fit(plain_model(0), BoxDataset(), None, bad, out_dir=tmp_path / "d", progress=False)
    model = plain_model(0)
    with torch.no_grad():
        model[-1].bias.fill_(float("nan"))
    for method in ("plain", "selective"):
        with pytest.raises(FloatingPointError, match=rf"diverged at epoch 0, step 0 \(method '{method}'\)"):
            fit(
                model,
                BoxDataset(),
                None,
                TrainConfig(method=method, epochs=1),
                out_dir=tmp_path / method,
                progress=False,
            )


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt", build)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(garbage, build)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": plain_model(0).state_dict()}, foreign)
    with pytest.raises(CheckpointError, match="no relprop metadata"):
        load_checkpoint(foreign, build)
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "relprop": {"config": {}}, "object": _Pairs(1)}, pickled)
    with pytest.raises(CheckpointError, match="objects other than tensors.*_Pairs"):
        load_checkpoint(pickled, build)


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated")  # Lightning 2.6 internals on torch 2.14
@pytest.mark.parametrize("method", ["selective", "grad_input"])
def test_isnet_module_with_a_users_trainer(tmp_path: Path, method: str) -> None:
    """The module on its own with a default Trainer (inference_mode=True in validation)."""
    import lightning as L

    module = ISNetModule(plain_model(0), TrainConfig(method=method, batch_size=16), {"arch": "plain"})
    trainer = L.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, gradient_clip_val=1.0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, DataLoader(BoxDataset(32), batch_size=16), DataLoader(BoxDataset(8), batch_size=8))
    assert {"train_loss", "train_heatmap", "val_acc", "val_heatmap"} <= set(trainer.callback_metrics)
    path = tmp_path / "user.ckpt"
    trainer.save_checkpoint(path)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(truncated, build)
    model, config, spec = load_checkpoint(path, build)
    assert spec == {"arch": "plain"} and config.method == method
    _assert_same(_state(model), _state(module.model))


# -- signals (real subprocesses) -------------------------------------------------------------------------------


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the worker exited with {proc.returncode} before {path.name}: {proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {path.name} after {timeout} s")
        time.sleep(0.02)


def test_sigterm_and_sigint_write_a_checkpoint_and_resume_exactly(tmp_path: Path) -> None:
    """A worker process trains twice; each run gets its signal in epoch 1 (after 100 loaded items: 64 train +
    16 val in epoch 0), finishes the step, writes last.ckpt and ends in TrainingInterrupted with the previous
    handlers back (the second run gets the second signal); resuming here gives the uninterrupted parameters."""
    epochs = 12
    cmd = [sys.executable, str(WORKER), "signal", str(tmp_path), "stochastic", str(epochs), "100"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    config = TrainConfig(method="stochastic", epochs=epochs, batch_size=16, seed=3)
    train, val = BoxDataset(), BoxDataset(16, seed=5)
    reference = fit(bn_model(1), train, val, config, out_dir=tmp_path / "reference", progress=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        _wait_for(tmp_path / sig.name / "started", proc)
        proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, output
    for sig in (signal.SIGTERM, signal.SIGINT):
        out = tmp_path / sig.name
        assert f"interrupted by {sig.name}" in output
        doc = json.loads((out / "metrics.json").read_text())
        assert doc["finished"] is False and doc["interrupted"] == sig.name and 1 <= len(doc["history"]) < epochs
        assert sorted(p.name for p in out.iterdir()) == ["best.ckpt", "last.ckpt", "metrics.json", "started"]
        resumed = fit(bn_model(8), train, val, config, out_dir=out, progress=False)
        _assert_same(_state(resumed.model), _state(reference.model))
        assert _no_time(resumed.history) == _no_time(reference.history)


@pytest.mark.parametrize("where, steps", [("item", 3), ("len", 1)])
def test_interrupt_in_process_raises_training_interrupted_and_restores_handlers(
    tmp_path: Path, where: str, steps: int
) -> None:
    """SIGTERM while loading item 40 (item 0 is fit's check of the data), in step 2 of 4 of epoch 0; or in the
    second len(dataset) (the first is fit's check), which the module's train_dataloader() calls before training
    starts, while Lightning's own SIGTERM handler is in place: its SIGTERMException path ends the same way."""

    class SignalsItself(BoxDataset):
        lens = 0

        def __len__(self):
            self.lens += 1
            if where == "len" and self.lens == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__len__()

        def __getitem__(self, i):
            if where == "item" and self.served == 40:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__getitem__(i)

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    config = TrainConfig(method="selective", epochs=2, batch_size=16)
    val = BoxDataset(8, seed=2)
    with pytest.raises(TrainingInterrupted, match=f"SIGTERM in epoch 0 after {steps} optimiser steps") as info:
        fit(plain_model(0), SignalsItself(), val, config, out_dir=tmp_path, progress=False)
    assert val.served == 1  # fit's check of the data: no validation of the half epoch
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert isinstance(info.value, KeyboardInterrupt) and info.value.checkpoint == tmp_path / "last.ckpt"
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["interrupted"] == "SIGTERM" and doc["global_step"] == steps and doc["finished"] is False
    resumed = fit(plain_model(3), BoxDataset(), val, config, out_dir=tmp_path, progress=False)
    reference = fit(plain_model(0), BoxDataset(), val, config, out_dir=tmp_path / "ref", progress=False)
    _assert_same(_state(resumed.model), _state(reference.model))
    assert _no_time(resumed.history) == _no_time(reference.history)
    with pytest.warns(UserWarning, match="resumed without"):
        fit(plain_model(3), BoxDataset(), None, TrainConfig(**{**config.to_dict(), "epochs": 3}), out_dir=tmp_path)


def test_sigterm_under_lightnings_handler_in_validation_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    """Resume with one batch left in the epoch and SIGTERM before training starts (Lightning's handler in place):
    that batch ends the epoch, and Lightning raises SIGTERMException in the middle of its validation. No checkpoint
    is written there; last.ckpt stays the one after step 1, and resuming from it is exact."""

    class SignalsItself(BoxDataset):
        lens = 0

        def __len__(self):
            self.lens += 1
            if self.lens == 2:  # the first: fit's check; the second: train_dataloader(), before training starts
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__len__()

    config = TrainConfig(method="selective", epochs=2, batch_size=16)
    train, val = BoxDataset(32), BoxDataset(32, seed=2)  # 2 training and 2 validation batches per epoch
    fit(plain_model(0), train, val, config, out_dir=tmp_path, progress=False, max_steps=1)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(TrainingInterrupted, match="SIGTERM in epoch 0 after 1 optimiser steps"):
        fit(plain_model(0), SignalsItself(32), val, config, out_dir=tmp_path, progress=False)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["interrupted"] == "SIGTERM" and doc["global_step"] == 1 and doc["history"] == []
    resumed = fit(plain_model(3), train, val, config, out_dir=tmp_path, progress=False)
    reference = fit(plain_model(0), train, val, config, out_dir=tmp_path / "ref", progress=False)
    _assert_same(_state(resumed.model), _state(reference.model))
    assert _no_time(resumed.history) == _no_time(reference.history)


def test_a_signal_too_late_to_stop_training_reaches_the_previous_handler(tmp_path: Path) -> None:
    """SIGTERM during the last epoch's validation: training finishes, then the handler that was in place before
    fit gets the signal."""

    class SignalsInValidation(BoxDataset):
        def __getitem__(self, i):
            if self.served == 2:  # item 0: fit's check of the data; then validation
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__getitem__(i)

    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        config = TrainConfig(method="plain", epochs=1, batch_size=32)
        result = fit(plain_model(0), BoxDataset(), SignalsInValidation(8), config, out_dir=tmp_path, progress=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM]
    assert result.finished and len(result.history) == 1
    assert json.loads(result.metrics_path.read_text())["interrupted"] is None


def test_fit_refuses_to_resume_a_checkpoint_of_another_format(tmp_path: Path) -> None:
    config = TrainConfig(method="plain", epochs=1, batch_size=32)
    torch.save({"state_dict": {}, "relprop": {"config": config.to_dict(), "format": 1}}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="format 1.*resume=False"):
        fit(plain_model(0), BoxDataset(), None, config, out_dir=tmp_path, progress=False)


# -- DDP (2 CPU processes, gloo) -------------------------------------------------------------------------------


def test_ddp_two_processes_match_one_process_with_twice_the_batch(tmp_path: Path) -> None:
    """strategy="ddp" (gloo) on 2 CPU processes, batch 8 each, stopped after 3 steps and resumed mid-epoch,
    against one uninterrupted process with batch 16: same global batches, same parameters and metrics."""
    out = tmp_path / "ddp"
    out.mkdir()
    steps = 6  # 3 steps, stop, resume: through epoch 0 (4 global batches of 2 x 8) and 2 steps into epoch 1
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "ddp", str(out), str(steps)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    config = TrainConfig(method="selective", epochs=2, batch_size=16, seed=4)
    single = fit(
        plain_model(2), BoxDataset(), BoxDataset(20, seed=5), config, out_dir=tmp_path / "one", progress=False,
        max_steps=steps,
    )  # fmt: skip
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    rank0, rank1 = (torch.load(out / f"params_rank{r}.pt") for r in (0, 1))
    _assert_same(rank0, rank1)
    _assert_same(rank0, _state(single.model), atol=1e-5)
    assert not torch.allclose(rank0["0.weight"], plain_model(2)[0].weight, atol=1e-3)  # it did train
    ddp_history = json.loads((out / "metrics.json").read_text())["history"]
    assert len(ddp_history) == len(single.history) == 1
    for key, value in _no_time(single.history)[0].items():
        assert ddp_history[0][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_best_checkpoint_is_the_epoch_with_the_lowest_validation_loss(tmp_path) -> None:
    model, data, config = oscillating()
    result = fit(model, data, data, config, out_dir=tmp_path, progress=False)
    losses = [history_val_loss(h, config) for h in result.history]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert best < len(losses) - 1  # the case is not trivial: the last epoch is not the best
    ckpt = torch.load(tmp_path / BEST_NAME, map_location="cpu", weights_only=False)
    assert ckpt["relprop"]["epoch"] == best + 1  # saved after that epoch
    assert len(ckpt["relprop"]["history"]) == best + 1
    fit(model, data, data, config, out_dir=tmp_path, resume=False, progress=False, max_steps=1)
    assert not (tmp_path / BEST_NAME).exists()  # starting over drops the old run's best checkpoint


def test_best_checkpoint_stays_right_after_a_kill_between_the_epoch_end_writes(tmp_path: Path) -> None:
    """SIGKILL right after the first checkpoint file written at the end of the best epoch (whichever of best.ckpt
    and last.ckpt comes first), before the other: after resuming, best.ckpt is still the best epoch's."""
    model, data, config = oscillating()
    reference = fit(model, data, data, config, out_dir=tmp_path / "reference", progress=False)
    losses = [history_val_loss(h, config) for h in reference.history]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert 0 < best < len(losses) - 1  # an older best.ckpt exists at the kill, and a later epoch is worse
    out = tmp_path / "killed"
    cmd = [sys.executable, str(WORKER), "kill", str(out), str(best + 1)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    done = {n: torch.load(out / n, weights_only=True)["relprop"]["epoch"] for n in (BEST_NAME, CHECKPOINT_NAME)}
    assert max(done.values()) == best + 1 and min(done.values()) < best + 1, done  # killed between the two
    resumed = fit(oscillating()[0], data, data, config, out_dir=out, progress=False)
    assert _no_time(resumed.history) == _no_time(reference.history)
    got, want = (torch.load(d / BEST_NAME, weights_only=True) for d in (out, tmp_path / "reference"))
    assert got["relprop"]["epoch"] == best + 1
    _assert_same(got["state_dict"], want["state_dict"])
