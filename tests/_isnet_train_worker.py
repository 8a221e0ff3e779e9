"""Tiny models and data for tests/test_isnet_training.py, and a script that runs training in a subprocess.

python tests/_isnet_train_worker.py signal OUT_DIR METHOD EPOCHS MARKER_AFTER_ITEMS
    trains a BatchNorm model with slow data; after MARKER_AFTER_ITEMS loaded items it writes
    OUT_DIR/started, so that the test can send a signal mid-training; exit status 3 on TrainingInterrupted
python tests/_isnet_train_worker.py ddp OUT_DIR STEPS
    trains the model without BatchNorm on 2 CPU processes (strategy="ddp", gloo); every rank writes its
    final parameters to OUT_DIR/params_rank{r}.pt
python tests/_isnet_train_worker.py ddp_tune OUT_DIR
    C1/C2 tuning (TrainConfig.tune_epochs=1, a hidden layer) of the model without BatchNorm on 2 CPU processes
    (strategy="ddp", gloo), batch 8 each, then no ISNet step (max_steps=0)
python tests/_isnet_train_worker.py kill OUT_DIR EPOCHS_DONE
    trains :func:`oscillating` and SIGKILLs itself right after the first checkpoint file written at the end of
    epoch EPOCHS_DONE (1-based), before the next one
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset


class BoxDataset(Dataset):
    """``n`` random 16x16 images with a box mask; the class is encoded as a brighter foreground."""

    def __init__(self, n: int = 64, classes: int = 3, size: int = 16, channels: int = 1, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, classes, (n,), generator=g)
        self.images = torch.rand(n, channels, size, size, generator=g) * 0.5
        self.masks = torch.zeros(n, 1, size, size)
        self.masks[:, :, 4:12, 4:12] = 1.0
        self.images += self.masks * (self.labels.float() / classes)[:, None, None, None] * 0.5
        self.delay = 0.0
        self.marker: Path | None = None
        self.marker_after = 0
        self.served = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.delay:
            time.sleep(self.delay)
        self.served += 1
        if self.marker is not None and self.served == self.marker_after:
            self.marker.write_text("started")
        return self.images[i], self.masks[i], self.labels[i]


def bn_model(seed: int = 0, classes: int = 3) -> nn.Module:
    """Conv + BatchNorm + ReLU + Dropout + Linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(24, classes),
    )


def plain_model(seed: int = 0, classes: int = 3) -> nn.Module:
    """Conv + ReLU + Linear, no BatchNorm (per-sample losses independent of the batch)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, classes),
    )


def oscillating() -> tuple[nn.Module, Dataset, object]:
    """A model, data (train = validation) and a config whose learning rate is high enough that the validation
    loss goes up and down over 4 epochs (so that the best epoch is neither the first nor the last)."""
    from relprop.isnet import TrainConfig

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 1, 12, 12, generator=g)
    mask = torch.zeros(48, 1, 12, 12)
    mask[..., 3:9, 3:9] = 1
    y = torch.arange(48) % 3
    data = torch.utils.data.TensorDataset(x, mask, y)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(576, 3))
    return model, data, TrainConfig(method="selective", epochs=4, batch_size=16, lr=1.0, seed=0)


def build(spec: dict | None) -> nn.Module:
    spec = spec or {}
    return {"bn": bn_model, "plain": plain_model}[spec.get("arch", "bn")](seed=spec.get("init_seed", 99))


def _signal_run(out_dir: str, method: str, epochs: str, marker_after: str) -> int:
    """Two trainings in turn, in OUT_DIR/SIGTERM and OUT_DIR/SIGINT, each expecting to be interrupted."""
    from relprop.isnet import TrainConfig, TrainingInterrupted, fit

    interrupted = 0
    for name in ("SIGTERM", "SIGINT"):
        out = Path(out_dir) / name
        data = BoxDataset()
        data.delay = 0.004
        data.marker = out / "started"
        data.marker_after = int(marker_after)
        config = TrainConfig(method=method, epochs=int(epochs), batch_size=16, seed=3)
        try:
            fit(bn_model(1), data, BoxDataset(16, seed=5), config, out_dir=out, progress=False)
            print(f"FINISHED {name} run", flush=True)
        except TrainingInterrupted as exc:
            print(f"INTERRUPTED {exc}", flush=True)
            interrupted += 1
    return 3 if interrupted == 2 else 1


def _ddp_run(out_dir: str, steps: str, strategy: str = "ddp") -> int:
    """Two fits on the same 2 processes: 3 steps (mid-epoch 0), then resumed from last.ckpt up to ``steps``."""
    from relprop.isnet import TrainConfig, fit

    config = TrainConfig(method="selective", epochs=2, batch_size=8, seed=4)
    for max_steps, model_seed in ((3, 2), (int(steps), 9)):
        result = fit(
            plain_model(model_seed),
            BoxDataset(),
            BoxDataset(20, seed=5),
            config,
            out_dir=out_dir,
            progress=False,
            accelerator="cpu",
            devices=2,
            strategy=strategy,
            max_steps=max_steps,
        )
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    params = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    torch.save(params, Path(out_dir) / f".params_rank{rank}.pt")
    os.replace(Path(out_dir) / f".params_rank{rank}.pt", Path(out_dir) / f"params_rank{rank}.pt")
    deadline = time.monotonic() + 120
    while rank == 0 and not (Path(out_dir) / "params_rank1.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # rank 1 is rank 0's child: let it finish writing
    return 0


def ddp_tune_config(batch_size: int = 8) -> object:
    from relprop.isnet import TrainConfig

    return TrainConfig(method="selective", epochs=1, batch_size=batch_size, seed=4, tune_epochs=1, hidden_layers=("4",))


def _ddp_tune_run(out_dir: str) -> int:
    from relprop.isnet import fit

    fit(plain_model(2), BoxDataset(), None, ddp_tune_config(), out_dir=out_dir, progress=False, accelerator="cpu",
        devices=2, strategy="ddp", max_steps=0)  # fmt: skip
    return 0


def _kill_run(out_dir: str, epochs_done: str) -> int:
    """Train :func:`oscillating` into OUT_DIR; die by SIGKILL (no handler runs) right after the first checkpoint
    file written once EPOCHS_DONE epochs are done."""
    from relprop.isnet import fit
    from relprop.isnet.fitting import _AtomicCheckpointIO

    original = _AtomicCheckpointIO.save_checkpoint

    def save_then_die(self, checkpoint, path, storage_options=None):
        original(self, checkpoint, path, storage_options)
        meta = checkpoint["relprop"]
        if meta["epoch"] == int(epochs_done) and meta["batch"] == 0:
            os.kill(os.getpid(), signal.SIGKILL)

    _AtomicCheckpointIO.save_checkpoint = save_then_die
    model, data, config = oscillating()
    fit(model, data, data, config, out_dir=out_dir, progress=False)
    return 1  # not reached: the kill comes first


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    mode, *args = sys.argv[1:]
    status = {"signal": _signal_run, "ddp": _ddp_run, "ddp_tune": _ddp_tune_run, "kill": _kill_run}[mode](*args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # skip the interpreter's slow teardown of torch and Lightning
