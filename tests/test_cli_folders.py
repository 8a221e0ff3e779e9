"""``relprop train --data-dir`` / ``--csv`` and ``relprop evaluate`` on an image + mask folder: the run folder
records the data and model spec, evaluate rebuilds the splits (in-distribution test and each external source),
resume of a finished run trains nothing, and bad folders or flag combinations exit 2 with a clear message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relprop.cli import main
from relprop.cli._common import folder_splits

torch.set_num_threads(1)

SIZE = 32
CLASSES = ("left", "right")
SOURCES = ("hospA", "hospB")
PER = 6  # images per class and source
#: a tiny folder run: digits CNN of width 4, one epoch
TRAIN = ["--size", "32", "--model", "digits_cnn", "--width", "4", "--epochs", "1", "--batch-size", "8",
         "--method", "selective", "--quiet", "--threads", "1"]  # fmt: skip


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error(err: str) -> str:
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith("relprop: error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def _write_folder(root: Path) -> Path:
    """ROOT/<class>/<image>.png with masks in ROOT/masks/<class>/<stem>.png, and ROOT/index.csv with sources."""
    rng = np.random.default_rng(0)
    rows = ["image,mask,label,source"]
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 8:24] = 255
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        (root / "masks" / name).mkdir(parents=True)
        for source in SOURCES:
            for k in range(PER):
                image = rng.integers(0, 60, (SIZE, SIZE), dtype=np.uint8)
                image[10:22, 10:16] += 150 if label == 0 else 0  # the class is in the foreground
                image[10:22, 16:22] += 150 if label == 1 else 0
                stem = f"{source}_{k}"
                Image.fromarray(image).save(root / name / f"{stem}.png")
                Image.fromarray(mask).save(root / "masks" / name / f"{stem}.png")
                rows.append(f"{name}/{stem}.png,masks/{name}/{stem}.png,{name},{source}")
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("data") / "cxr")


@pytest.fixture(scope="module")
def trained(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    argv = ["train", "--csv", folder / "index.csv", "--external", "hospB", "--val-fraction", "0.25",
            "--test-fraction", "0.25", "--out", out, *TRAIN]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    return out


def test_train_records_the_folder_and_model_spec(trained: Path, folder: Path) -> None:
    run = json.loads((trained / "run.json").read_text())
    data = run["data"]
    assert data["kind"] == "folder"
    assert data["csv"] == str((folder / "index.csv").resolve()) and data["root"] is None
    assert data["external"] == ["hospB"] and data["size"] == [SIZE, SIZE] and data["channels"] == 1
    assert run["model_spec"] == {"name": "digits_cnn", "num_classes": 2, "in_channels": 1, "width": 4}
    assert run["config"]["method"] == "selective"
    assert (trained / "last.ckpt").is_file()
    # the recorded spec rebuilds the same split: hospB whole as external, hospA split per class 6 -> 3/1.5/1.5
    _, splits = folder_splits(data)
    assert set(splits) == {"train", "val", "test", "external:hospB"}
    assert len(splits["external:hospB"]) == 2 * PER and set(splits["external:hospB"].sources) == {"hospB"}
    assert sum(len(splits[s]) for s in ("train", "val", "test")) == 2 * PER
    assert set(splits["train"].sources) == {"hospA"}
    parts = [set(splits[s].indices) for s in ("train", "val", "test", "external:hospB")]
    assert sum(map(len, parts)) == len(set().union(*parts))  # disjoint


def test_evaluate_scores_each_split_and_draws_heatmaps(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "evaluate", trained, "--quiet")
    assert code == 0, err
    result = json.loads((trained / "evaluation.json").read_text())
    (label,) = result
    scores = result[label]
    assert set(scores) == {"run", "test", "external:hospB"}
    assert scores["external:hospB"]["n"] == 2 * PER
    for name in ("test", "external:hospB"):
        assert 0 <= scores[name]["accuracy"] <= 1
        share = scores[name]["background_share"]
        assert share is None or 0 <= share <= 1
        assert name in out
    assert (trained / "heatmaps.png").is_file() and Image.open(trained / "heatmaps.png").size[0] > 0


def test_resume_of_a_finished_run_trains_nothing(trained: Path, folder: Path, capsys) -> None:
    before = (trained / "last.ckpt").read_bytes()
    metrics = (trained / "metrics.json").read_text()
    code, _, err = _run(capsys, "train", "--csv", folder / "index.csv", "--external", "hospB", "--val-fraction",
                        "0.25", "--test-fraction", "0.25", "--out", trained, *TRAIN)  # fmt: skip
    assert code == 0, err
    assert (trained / "last.ckpt").read_bytes() == before
    assert json.loads((trained / "metrics.json").read_text())["history"] == json.loads(metrics)["history"]


def test_resume_with_another_external_source_names_the_flag(trained: Path, folder: Path, capsys) -> None:
    code, _, err = _run(capsys, "train", "--csv", folder / "index.csv", "--external", "hospA", "--val-fraction",
                        "0.25", "--test-fraction", "0.25", "--out", trained, *TRAIN)  # fmt: skip
    line = _error(err)
    assert code == 2 and "--external hospB" in line and "--no-resume" in line, line


def test_folder_layout_trains_with_val_fraction(folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, _, err = _run(capsys, "train", "--data-dir", folder, "--out", out, "--val-fraction", "0.25",
                        "--test-fraction", "0.25", *TRAIN)  # fmt: skip
    assert code == 0, err
    data = json.loads((out / "run.json").read_text())["data"]
    assert data["root"] == str(folder.resolve()) and data["external"] == []
    _, splits = folder_splits(data)
    assert splits["train"].class_names == CLASSES and len(splits["train"]) == 2 * 2 * PER // 2


def _broken(tmp_path: Path, folder: Path, how: str) -> Path:
    bad = tmp_path / "bad"
    for p in folder.rglob("*.png"):
        target = bad / p.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(p.read_bytes())
    if how == "no masks":
        for p in (bad / "masks").rglob("*.png"):
            p.unlink()
        for d in sorted((bad / "masks").rglob("*"), reverse=True):
            d.rmdir()
        (bad / "masks").rmdir()
    elif how == "empty class":
        for p in (bad / "right").iterdir():
            p.unlink()
    return bad


@pytest.mark.parametrize(
    ("how", "message"),
    [("missing", "data folder not found"), ("no masks", "mask folder not found"),
     ("empty class", "empty class folder (no image files)")],
)  # fmt: skip
def test_a_bad_folder_gives_the_loaders_data_error(tmp_path, folder, capsys, how, message) -> None:
    bad = tmp_path / "missing" if how == "missing" else _broken(tmp_path, folder, how)
    code, _, err = _run(capsys, "train", "--data-dir", bad, "--out", tmp_path / "run", *TRAIN)
    line = _error(err)
    assert code == 2 and message in line and "relprop check-data" in line, line
    assert not (tmp_path / "run" / "run.json").exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [(["--data", "digits"], ["--data digits", "--data-dir"]),
     (["--external", "hospC"], ["--external hospC", "no such source"]),
     (["--val-source", "hospA", "--val-fraction", "0.2"], ["--val-source", "--val-fraction"]),
     (["--model", "resnet18", "--channels", "1"], ["--model resnet18", "--channels 3"]),
     (["--model", "resnet18"], ["--width", "--model resnet18"]),
     (["--val-fraction", "0.6", "--test-fraction", "0.5"], ["--val-fraction 0.6", "--test-fraction 0.5"])],
)  # fmt: skip
def test_bad_flag_combinations_name_the_flags(tmp_path, folder, capsys, extra, words) -> None:
    code, _, err = _run(capsys, "train", "--data-dir", folder, "--out", tmp_path / "run", *TRAIN, *extra)
    line = _error(err)
    assert code == 2 and all(w in line for w in words), line


def test_folder_flags_without_a_folder_say_what_to_add(tmp_path, capsys) -> None:
    code, _, err = _run(capsys, "train", "--out", tmp_path / "run", "--external", "hospB", "--quiet")
    line = _error(err)
    assert code == 2 and "--external" in line and "--data-dir" in line, line


def test_external_sources_of_a_folder_without_sources(tmp_path, folder, capsys) -> None:
    code, _, err = _run(capsys, "train", "--data-dir", folder, "--out", tmp_path / "run", *TRAIN, "--external", "x")
    line = _error(err)
    assert code == 2 and "no sources" in line and "--csv" in line, line


def test_evaluate_refuses_runs_on_other_splits_naming_the_flag(trained, folder, tmp_path, capsys) -> None:
    other = tmp_path / "other"
    code, _, err = _run(capsys, "train", "--csv", folder / "index.csv", "--external", "hospB", "--val-fraction",
                        "0.25", "--test-fraction", "0.5", "--out", other, *TRAIN)  # fmt: skip
    assert code == 0, err
    code, _, err = _run(capsys, "evaluate", trained, other, "--out", tmp_path / "both", "--quiet")
    line = _error(err)
    assert code == 2 and "--test-fraction 0.25 (here 0.5)" in line, line


def test_evaluate_refuses_a_digit_run_together_with_a_folder_run(trained, tmp_path, capsys) -> None:
    digits = tmp_path / "digits"
    digits.mkdir()
    (digits / "run.json").write_text(json.dumps({"data": {"source": "mnist"}, "model_spec": {"name": "digits_cnn"}}))
    code, _, err = _run(capsys, "evaluate", trained, digits, "--out", tmp_path / "both", "--quiet")
    line = _error(err)
    assert code == 2 and "digit run" in line and "folder run" in line, line
