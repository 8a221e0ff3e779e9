"""``relprop explain --devices N``: several processes through Lightning's predict loop (ddp, gloo on the CPU) write
the same files as one process, each image once; stopped or killed runs resume with another number of processes.

The two- and three-process runs are subprocesses of tests/_explain_worker.py (Lightning's ddp starts the script
again for each further rank); the one-process runs are in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from relprop.batch import Job, explain_images
from relprop.batch.explain_folder import MANIFEST, STOP_FLAG, shard_paths
from relprop.cli import main
from relprop.errors import UsageError
from relprop.explainer import Explainer

pytest.importorskip("lightning")  # the `train` extra; installed in CI

SIZE, BATCH, IMAGES = 16, 3, 24  # 8 batches; file 10 is unreadable
WORKER = Path(__file__).resolve().parent / "_explain_worker.py"


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5),
    ).eval()  # fmt: skip


def _argv(images: Path, model: Path, *extra: object) -> list[str]:
    argv = ["explain", images, "--model", model, "--size", SIZE, "--batch-size", BATCH, "--save-raw", *extra]
    return [str(a) for a in argv]


def _files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` but the manifest, with its bytes (shards or a stop flag left behind count)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST}


def _records(out: Path) -> list[str]:
    """The manifest's records, in a canonical order (processes append in different orders)."""
    lines = (out / MANIFEST).read_text().splitlines()
    return sorted(json.dumps(json.loads(line), sort_keys=True) for line in lines)


def _identity(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) per output file: an atomic rewrite replaces the inode."""
    return {
        k: ((out / k).stat().st_ino, (out / k).stat().st_mtime_ns) for k in _files(out) if k.endswith((".png", ".npy"))
    }


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The folder (23 images, 1 unreadable file), the model, a one-process reference run and the worker's three
    two-process runs (full, stopped, killed)."""
    root = tmp_path_factory.mktemp("distributed")
    rng = np.random.default_rng(0)
    images = root / "images"
    for k in range(IMAGES):
        where = images if k < 18 else images / "sub"
        where.mkdir(parents=True, exist_ok=True)
        if k == 10:
            (where / f"img_{k:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        else:
            Image.fromarray(rng.integers(0, 256, (SIZE + k % 3, SIZE, 3), dtype=np.uint8)).save(
                where / f"img_{k:02d}.png"
            )
    model = root / "net.pt"
    torch.save(_net(), model)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        assert main([*_argv(images, model), "--out", str(root / "reference")]) == 2
        one = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)

    base = root / "worker"
    base.mkdir()
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(WORKER), "phases", str(base), "2", "--", *_argv(images, model)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    print(
        f"\none process: {one:.2f} s in-process; two processes: {float((base / 'full.seconds').read_text()):.2f} s "
        f"(relprop explain, rank 0, including starting rank 1); worker, 3 runs: {time.perf_counter() - start:.1f} s"
    )
    assert done.returncode == -9, done.stderr  # the killed phase ends it
    return {"images": images, "model": model, "reference": root / "reference", "base": base, "stderr": done.stderr}  # type: ignore[dict-item]


def test_two_processes_write_the_same_files_as_one(runs) -> None:
    reference, full = runs["reference"], runs["base"] / "full"
    assert (runs["base"] / "full.status").read_text() == "2"  # the unreadable file, found by rank 1, reported
    assert "img_10.png: unreadable image" in runs["stderr"]
    files = _files(full)
    assert len([k for k in files if k.endswith(".png")]) == 23 and len([k for k in files if k.endswith(".npy")]) == 23
    assert files == _files(reference)  # every PNG and .npy byte for byte; no shard, flag or temporary left
    assert _records(full) == _records(reference) and len(_records(full)) == IMAGES


def test_a_stopped_two_process_run_resumes_in_one(runs, capsys) -> None:
    stopped = runs["base"] / "stopped"
    assert (runs["base"] / "stopped.status").read_text() == "130"
    assert "SIGTERM received; 9 of 24 images done" in runs["stderr"]
    assert not shard_paths(stopped) and not (stopped / STOP_FLAG).exists()  # folded into manifest.jsonl
    names = sorted(Path(json.loads(r)["image"]).name for r in _records(stopped))
    assert names == [f"img_{k:02d}.png" for k in range(9)]  # batches 0, 1 and 2: each image once
    before = _identity(stopped)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main([*_argv(runs["images"], runs["model"]), "--out", str(stopped)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 2 and "wrote 14 heatmaps" in out and "9 done before (skipped)" in out
    assert _identity(stopped).items() >= before.items()  # nothing done before was written again
    assert _files(stopped) == _files(runs["reference"])
    assert _records(stopped) == _records(runs["reference"])


def test_a_killed_two_process_run_resumes_in_one_and_in_three(runs, capsys, tmp_path) -> None:
    killed = runs["base"] / "killed"
    shards = shard_paths(killed)
    assert [p.name for p in shards] == ["manifest-rank0.jsonl", "manifest-rank1.jsonl"]  # never folded
    assert (killed / MANIFEST).read_bytes() == b""
    assert shards[1].read_bytes().count(b"\n") == 3 and not shards[1].read_bytes().endswith(b"\n")  # torn
    assert shards[0].read_bytes().count(b"\n") == 6

    one, three = tmp_path / "one", tmp_path / "three"
    shutil.copytree(killed, one)
    shutil.copytree(killed, three)
    before = _identity(one)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main([*_argv(runs["images"], runs["model"]), "--out", str(one)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 2 and "wrote 14 heatmaps" in out and "9 done before (skipped)" in out
    assert _identity(one).items() >= before.items()
    assert _files(one) == _files(runs["reference"]) and _records(one) == _records(runs["reference"])

    before = _identity(three)
    done = subprocess.run(
        [sys.executable, str(WORKER), "once", "3", "--", *_argv(runs["images"], runs["model"]), "--out", str(three)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "wrote 14 heatmaps" in done.stdout and "9 done before (skipped)" in done.stdout
    assert _identity(three).items() >= before.items()
    assert _files(three) == _files(runs["reference"]) and _records(three) == _records(runs["reference"])


def test_lightning_in_one_process_equals_the_plain_loop(runs, tmp_path, capsys, monkeypatch) -> None:
    """The Lightning path with one process (what one GPU runs, strategy "auto") on the CPU."""
    from relprop.batch import runner
    from relprop.batch.distributed import explain_distributed

    calls: list[int] = []

    def through_lightning(job: Job):  # type: ignore[no-untyped-def]
        calls.append(job.devices)
        return explain_distributed(job, "cpu")

    monkeypatch.setattr(runner, "explain_one_process", through_lightning)
    out = tmp_path / "lightning"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main([*_argv(runs["images"], runs["model"]), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert calls == [1] and code == 2 and "wrote 23 heatmaps" in capsys.readouterr().out
    assert _files(out) == _files(runs["reference"]) and _records(out) == _records(runs["reference"])


def test_bad_process_counts_are_clear_errors(runs, tmp_path, capsys, monkeypatch) -> None:
    argv = [*_argv(runs["images"], runs["model"]), "--out", str(tmp_path / "out")]
    assert main([*argv, "--devices", "0"]) == 2
    assert "--devices 0: must be at least 1" in capsys.readouterr().err
    assert main([*argv, "--num-nodes", "0"]) == 2
    assert "--num-nodes 0: must be at least 1" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main([*argv, "--accelerator", "gpu", "--devices", "2"]) == 2
    err = capsys.readouterr().err
    assert "--accelerator gpu: no CUDA GPU is visible" in err and "use --accelerator cpu" in err
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main([*argv, "--accelerator", "gpu", "--devices", "2"]) == 2
    err = capsys.readouterr().err
    assert "--devices 2 with --accelerator gpu: this machine has 1 GPU; use --devices 1 or fewer" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written

    job = Job(
        images=[], outputs=[], out=tmp_path / "out", explainer=Explainer(_net()), mean=torch.zeros(1, 3, 1, 1),
        std=torch.ones(1, 3, 1, 1), size=SIZE, channels=3, target="predicted", fingerprint={}, devices=-2,
    )  # fmt: skip
    with pytest.raises(UsageError, match="--devices -2"):
        explain_images(job)
    job.devices, job.accelerator = 1, "tpu"
    with pytest.raises(UsageError, match="--accelerator 'tpu': use one of cpu, gpu, cuda, mps, auto"):
        explain_images(job)
