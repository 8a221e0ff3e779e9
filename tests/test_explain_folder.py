"""``relprop explain`` on folders: streaming through a DataLoader, incremental output, manifest, resume, signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from relprop.batch import explain_folder
from relprop.batch.explain_folder import MANIFEST, SETTINGS, ImageFiles
from relprop.cli import main
from relprop.explainer import Explainer
from relprop.viz.heatmap import to_heatmap

SIZE = 16
BATCH = 4

# Runs the same `relprop explain` twice in one interpreter (one start less), with handshake files in argv[1]: the
# 4th batch of run k writes "held<k>" and waits for "signalled<k>" (so a signal arrives while a batch is in flight,
# some but not all images done); after run 1 it writes "exit1" and waits for "resume".
CHILD = """
import pathlib, sys, time
import torch
torch.set_num_threads(1)
from relprop.cli import main
from relprop.explainer import Explainer

flags, argv = pathlib.Path(sys.argv[1]), sys.argv[2:]
def wait(name):
    deadline = time.monotonic() + 120
    while not (flags / name).exists():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {name}")
        time.sleep(0.01)
calls, original = [], Explainer.explain
def held(self, *args, **kwargs):
    calls.append(None)
    if len(calls) % 4 == 0:
        (flags / f"held{len(calls) // 4}").touch()
        wait(f"signalled{len(calls) // 4}")
    return original(self, *args, **kwargs)
Explainer.explain = held
for run in (1, 2):
    code = main(argv)
    print(f"run {run}: exit {code}", file=sys.stderr, flush=True)
    (flags / f"exit{run}").write_text(str(code))
    if run == 1:
        wait("resume")
"""


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5),
    ).eval()  # fmt: skip


def _image(path: Path, rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> dict[str, Path]:
    """40 files: 38 small images (RGB and greyscale, some to resize, in sub-folders) and 2 unreadable ones,
    one sorted first (batch 1) and one last (batch 10); a tiny full model saved with torch.save."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    for k in range(38):
        where = images if k < 25 else images / "sub" if k < 37 else images / "sub" / "deeper"
        shape = (SIZE, SIZE) if k % 7 == 3 else (SIZE + k % 5, SIZE, 3)
        _image(where / f"img_{k:02d}.png", rng, shape)
    (images / "a00_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (images / "sub" / "zz_broken.jpg").write_text("hello")
    model = tmp_path / "net.pt"
    torch.save(_net(), model)
    return {"root": tmp_path, "images": images, "model": model}


def _argv(f: dict[str, Path], out: Path, *extra: object) -> list[str]:
    argv = ["explain", f["images"], "--model", f["model"], "--size", SIZE, "--batch-size", BATCH, "--out", out]
    return [str(a) for a in [*argv, *extra]]


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _unreadable_warnings(err: str) -> int:
    """Unreadable files reported while the run went on (one ``relprop: warning:`` line each)."""
    return sum(
        line.startswith("relprop: warning: ") and "unreadable image" in line for line in re.split(r"[\r\n]", err)
    )


def _lines(out: Path) -> int:
    """Complete (newline-terminated) manifest lines."""
    try:
        return (out / MANIFEST).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _entries(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def _files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` but the manifest, with its bytes."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST}


def _identity(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) per output file: an atomic rewrite replaces the inode."""
    return {k: ((out / k).stat().st_ino, (out / k).stat().st_mtime_ns) for k in _files(out)}


def _wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_interrupted_and_resumed_runs_equal_an_uninterrupted_one(folder, tmp_path, capsys) -> None:
    f = folder
    reference, out = tmp_path / "reference", tmp_path / "out"
    code, stdout, _ = _run(capsys, _argv(f, reference, "--save-raw"))
    assert code == 2 and "wrote 38 heatmaps and .npy relevance" in stdout and "2 unreadable files" in stdout

    flags = tmp_path / "flags"
    flags.mkdir()
    argv = _argv(f, out, "--save-raw")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "child.err"
    with open(log, "w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(flags), *argv], stderr=stderr, env=env)

    def wait(name: str) -> None:
        _wait_for(lambda: (flags / name).exists() or child.poll() is not None)
        assert (flags / name).exists(), log.read_text()

    try:
        wait("held1")
        assert _lines(out) == 3 * BATCH
        child.send_signal(signal.SIGINT)
        (flags / "signalled1").touch()  # after the signal: the held batch goes on and is the last one
        wait("exit1")
        assert (flags / "exit1").read_text() == "130"
        assert _lines(out) == 16 and len(list(out.rglob("*_heatmap.png"))) == 15  # one of the 16 is unreadable
        first = _identity(out)
        with open(out / MANIFEST, "ab") as m:  # as if killed while appending
            m.write(b'{"image": "/somewhere/img_99.png", "status": "o')
        (flags / "resume").touch()

        wait("held2")
        assert _lines(out) == 16 + 3 * BATCH
        child.send_signal(signal.SIGTERM)
        (flags / "signalled2").touch()
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    err = log.read_text()
    assert child.returncode == 0 and (flags / "exit2").read_text() == "130", err
    run1, run2 = err.split("run 1: exit 130")
    stop = "relprop: interrupted: SIGINT received; 16 of 40 images done; run the same command again to resume"
    assert stop in run1 and "relprop: error" not in run1
    assert _unreadable_warnings(run1) == 1 and "a00_broken.png: unreadable image" in run1
    assert "relprop: interrupted: SIGTERM received; 32 of 40 images done" in run2
    assert _unreadable_warnings(run2) == 0 and "relprop: error" not in run2
    assert _identity(out).items() >= first.items()  # earlier outputs were not written again
    second = _identity(out)

    code, stdout, err = _run(capsys, _argv(f, out, "--save-raw"))
    assert code == 2
    assert "wrote 7 heatmaps" in stdout and "31 done before (skipped)" in stdout and "2 unreadable files" in stdout
    errors = [line for line in err.splitlines() if line.startswith("relprop: error: ")]
    assert len(errors) == 1 and "1 unreadable image file: " in errors[0] and "zz_broken.jpg" in errors[0]
    assert "1 unreadable file recorded by an earlier run skipped" in errors[0] and _unreadable_warnings(err) == 1
    assert _identity(out).items() >= second.items()

    assert _files(out) == _files(reference)  # PNG, npy and explain.json byte for byte; no temporary files
    key = lambda e: json.dumps(e, sort_keys=True)  # noqa: E731
    assert sorted(map(key, _entries(out))) == sorted(map(key, _entries(reference)))
    assert len(_entries(out)) == 40


def test_manifest_and_raw_relevance(folder, tmp_path, capsys) -> None:
    f, out = folder, tmp_path / "out"
    assert _run(capsys, _argv(f, out, "--save-raw", "--target", 2))[0] == 2
    entries = {Path(e["image"]).name: e for e in _entries(out)}
    assert len(entries) == 40
    assert (
        entries["zz_broken.jpg"]["status"] == "unreadable"
        and "unreadable image (UnidentifiedImageError" in entries["zz_broken.jpg"]["error"]
    )
    e = entries["img_30.png"]
    assert e["image"] == str((f["images"] / "sub" / "img_30.png").resolve())
    assert (e["heatmap"], e["raw"], e["target"], e["status"]) == (
        "sub/img_30_heatmap.png", "sub/img_30_relevance.npy", 2, "ok"
    )  # fmt: skip
    r = np.load(out / e["raw"])
    assert r.dtype == np.float32 and r.shape == (3, SIZE, SIZE)
    assert r.sum(dtype=np.float64) == pytest.approx(e["relevance_sum"], rel=1e-12)
    assert np.array_equal(np.asarray(Image.open(out / e["heatmap"])), to_heatmap(r))
    x = torch.from_numpy(ImageFiles([f["images"] / "sub" / "img_30.png"], SIZE, 3)[0][1])[None]
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    expected = Explainer(_net(), "epsilon_plus_flat").explain((x - mean) / std, 2)
    torch.testing.assert_close(torch.from_numpy(r), expected.relevance[0], rtol=1e-5, atol=1e-6)
    assert e["predicted"] == int(expected.logits.argmax())
    assert json.loads((out / SETTINGS).read_text())["fingerprint"]["target"] == 2
    code, _, err = _run(capsys, _argv(f, tmp_path / "bad", "--target", 9))
    assert code == 2 and "target class 9 is out of range" in err and not (tmp_path / "bad").exists()


def test_images_stream_through_the_dataloader_in_batches(folder, tmp_path, capsys, monkeypatch) -> None:
    f = folder
    loaders: list[explain_folder.DataLoader] = []
    loads: list[Path] = []
    batches: list[tuple[int, int]] = []  # (batch size, images loaded so far) per forward/backward pass

    class SpyLoader(explain_folder.DataLoader):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            loaders.append(self)

    def spy_load(path, size, channels):
        loads.append(path)
        return original_load(path, size, channels)

    def spy_explain(self, x, *args, **kwargs):
        batches.append((len(x), len(loads)))
        return original_explain(self, x, *args, **kwargs)

    original_load, original_explain = explain_folder.load_image, Explainer.explain
    monkeypatch.setattr(explain_folder, "DataLoader", SpyLoader)
    monkeypatch.setattr(explain_folder, "load_image", spy_load)
    monkeypatch.setattr(Explainer, "explain", spy_explain)
    assert _run(capsys, _argv(f, tmp_path / "out", "--batch-size", 3))[0] == 2
    assert len(loaders) == 1 and isinstance(loaders[0].dataset, ImageFiles)
    assert len(loads) == 40 and len(set(loads)) == 40  # every file loaded once
    # 14 batches of 3 over the 40 sorted files: the first holds an unreadable file, the last only one
    assert len(loaders[0]) == 14 and [b for b, _ in batches] == [2] + [3] * 12
    assert all(loaded <= 3 * (k + 1) for k, (_, loaded) in enumerate(batches))  # loaded batch by batch


def test_other_options_are_an_error_and_overwrite_redoes_everything(folder, tmp_path, capsys) -> None:
    f, out = folder, tmp_path / "out"
    assert _run(capsys, _argv(f, out))[0] == 2
    before = _identity(out)
    code, stdout, err = _run(capsys, _argv(f, out, "--composite", "epsilon"))
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "holds results of relprop explain with other options" in lines[0]
    assert "composite 'epsilon_plus_flat', now 'epsilon'" in lines[0] and "--overwrite" in lines[0]
    code, _, err = _run(capsys, _argv(f, out, "--save-raw"))
    assert code == 2 and "save_raw False, now True" in err
    assert _identity(out) == before  # nothing touched

    code, stdout, err = _run(capsys, _argv(f, out, "--composite", "epsilon", "--overwrite"))
    assert code == 2 and "wrote 38 heatmaps" in stdout and "skipped" not in stdout
    assert _unreadable_warnings(err) == 2  # recorded unreadable files are retried too
    after = _identity(out)
    assert all(after[k] != v for k, v in before.items())
    assert len(_entries(out)) == 40
    assert json.loads((out / SETTINGS).read_text())["fingerprint"]["composite"] == "epsilon"
    code, stdout, _ = _run(capsys, _argv(f, out, "--composite", "epsilon"))
    assert "wrote 0 heatmaps" in stdout and "38 done before (skipped)" in stdout and _identity(out) == after


def test_torn_line_missing_output_and_changed_unreadable_file(folder, tmp_path, capsys) -> None:
    f, out = folder, tmp_path / "out"
    assert _run(capsys, _argv(f, out))[0] == 2
    with open(out / MANIFEST, "ab") as m:
        m.write(b'{"image": "x", "st')
    (out / "sub" / "img_30_heatmap.png").unlink()
    broken = f["images"] / "sub" / "zz_broken.jpg"
    broken.unlink()
    _image(broken, np.random.default_rng(1), (SIZE, SIZE, 3))  # fixed: retried
    code, stdout, err = _run(capsys, _argv(f, out))
    assert code == 2 and "wrote 2 heatmaps" in stdout and "37 done before (skipped)" in stdout
    assert "1 unreadable file recorded by an earlier run skipped" in err and _unreadable_warnings(err) == 0
    assert (out / "sub" / "img_30_heatmap.png").is_file() and (out / "sub" / "zz_broken_heatmap.png").is_file()
    assert (out / MANIFEST).read_bytes().endswith(b"\n")  # the torn line was dropped before appending
    entries = _entries(out)  # every line parses
    assert len(entries) == 42 and len({e["image"] for e in entries}) == 40


def test_workers_give_the_same_files(folder, tmp_path, capsys) -> None:
    f = folder
    for k in range(10, 38):
        next(f["images"].rglob(f"img_{k:02d}.png")).unlink()
    assert _run(capsys, _argv(f, tmp_path / "w0", "--save-raw"))[0] == 2
    assert _run(capsys, _argv(f, tmp_path / "w2", "--save-raw", "--workers", 2))[0] == 2
    assert _files(tmp_path / "w2") == _files(tmp_path / "w0") and len(_files(tmp_path / "w0")) == 21


def test_shards_fold_into_the_manifest_once(tmp_path) -> None:
    """Shards of a run with several processes (see test_explain_distributed.py) are newer than the manifest; a fold
    killed after appending but before removing the shards, or in the middle of appending, is folded again without
    a line twice."""
    from relprop.batch.explain_folder import Manifest, shard_path

    def line(image: str, status: str = "ok", heatmap: str | None = None) -> bytes:
        rec = {"image": image, "status": status, "heatmap": heatmap or f"{image}_heatmap.png", "source": {"size": 1}}
        return json.dumps(rec).encode() + b"\n"

    old = [line("a", "unreadable"), line("b")]
    shards = [[line("a"), line("c")], [line("d"), line("e")]]
    (tmp_path / MANIFEST).write_bytes(b"".join(old) + b'{"image": "torn')
    for r, lines in enumerate(shards):
        shard_path(tmp_path, r).write_bytes(b"".join(lines) + (b'{"ima' if r else b""))
    m = Manifest.read(tmp_path / MANIFEST)
    assert m.records["a"]["status"] == "ok" and sorted(m.records) == ["a", "b", "c", "d", "e"]  # shards are newer
    assert m.pending == shards[0] + shards[1]

    whole = b"".join(old + shards[0] + shards[1])
    for appended in (2, 4):  # killed after appending two of the four lines, or all of them, shards still there
        (tmp_path / MANIFEST).write_bytes(b"".join(old + (shards[0] + shards[1])[:appended]) + b'{"tor')
        m = Manifest.read(tmp_path / MANIFEST)
        assert m.pending == (shards[0] + shards[1])[appended:]
        m.fold()
        assert (tmp_path / MANIFEST).read_bytes() == whole
        assert not list(tmp_path.glob("manifest-rank*")) and Manifest.read(tmp_path / MANIFEST).records == m.records
        for r, lines in enumerate(shards):
            shard_path(tmp_path, r).write_bytes(b"".join(lines))

    m = Manifest.read(tmp_path / MANIFEST)
    m.clear()
    m.fold(fresh=True)  # a fresh run: manifest and shards emptied
    assert (tmp_path / MANIFEST).read_bytes() == b"" and not list(tmp_path.glob("manifest-rank*"))
