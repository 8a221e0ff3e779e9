"""The ``relprop`` command line on bad input: every user error is exit status 2 with one ``relprop: error:`` line
naming the problem and its fix (in the command line's own words: flags, not Python keywords); a bug keeps its
traceback (exit status 1); a refused resume leaves the run folder as it was; a collapsed model is "undefined".
Hints are followed to check that they work."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from relprop import cli
from relprop.cli import main

torch.set_num_threads(1)

SIZE = 16
#: a tiny `relprop train` run (3 s of training on 2 cores)
TRAIN = ["--epochs", "1", "--n-train", "60", "--width", "4", "--batch-size", "32", "--quiet", "--threads", "1"]


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error(err: str) -> str:
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith("relprop: error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def image_and_model(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    image = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(image)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * SIZE * SIZE, 3))
    model = tmp_path / "net.pt"
    torch.save(net.eval(), model)
    return image, model


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny training run (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--out", str(out), *TRAIN]) == 0
    return out


def _copy(run: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for p in run.iterdir():
        (to / p.name).write_bytes(p.read_bytes())
    return to


# -- (7) --out pointing at a file --------------------------------------------------------------------------------


def test_explain_out_pointing_at_a_file_says_so_and_following_the_hint_works(tmp_path, capsys, image_and_model):
    """Before: "relprop: error: [Errno 20] Not a directory: 'afile/manifest.jsonl'"."""
    image, model = image_and_model
    afile = tmp_path / "afile"
    afile.write_text("mine")
    code, _, err = _run(capsys, "explain", image, "--model", model, "--size", SIZE, "--out", afile)
    line = _error(err)
    assert code == 2 and "--out" in line and "is an existing file" in line and "folder" in line, line
    assert afile.read_text() == "mine"
    code, out, err = _run(capsys, "explain", image, "--model", model, "--size", SIZE, "--out", tmp_path / "folder")
    assert code == 0, err  # the hint: pass a folder
    assert (tmp_path / "folder" / "a_heatmap.png").is_file()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_run_commands_with_out_pointing_at_a_file(tmp_path, capsys, command, trained):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    argv = ["train", "--out", afile, *TRAIN] if command == "train" else ["evaluate", trained, "--out", afile]
    code, _, err = _run(capsys, *argv)
    line = _error(err)
    assert code == 2 and f"--out {afile} is an existing file" in line and "pass a folder" in line, line
    assert afile.read_text() == "mine"


# -- (8) check-data's exit status, resume hints in CLI words, bugs keep their traceback ---------------------------


def test_check_data_on_a_missing_folder_exits_2(tmp_path, capsys):
    """Before: exit status 1 (the status of "problems found"), while the help documents 2 for unusable
    arguments."""
    code, out, err = _run(capsys, "check-data", tmp_path / "nothere")
    line = _error(err)
    assert code == 2 and "nothere" in line and "not found" in line, line
    code, _, err = _run(capsys, "check-data", "--csv", tmp_path / "missing.csv")
    assert code == 2 and "missing.csv" in _error(err)


def test_a_refused_resume_names_cli_flags_and_leaves_the_run_untouched(tmp_path, capsys, trained):
    """Before: the message said `resume=False` (a Python keyword), and run.json had already been rewritten with
    the new options, so it contradicted the checkpoint. Now: --lr and --no-resume are named, no file changes, and
    following the hints works."""
    run = _copy(trained, tmp_path / "run")
    (run / ".run.json.k1ll3d_x.tmp").write_text("a killed write")  # not even stale temporaries are touched
    before = _snapshot(run)
    code, _, err = _run(capsys, "train", "--out", run, *TRAIN, "--lr", "0.1")
    line = _error(err)
    assert code == 2 and "--lr" in line and "--no-resume" in line and "resume=False" not in line, line
    assert "0.05" in line and "0.1" in line
    assert _snapshot(run) == before
    # hint 1: the checkpoint's value resumes (the run is finished: nothing to train)
    code, out, err = _run(capsys, "train", "--out", run, *TRAIN, "--lr", "0.05")
    assert code == 0, err
    assert not (run / ".run.json.k1ll3d_x.tmp").exists()  # accepted: stale temporaries are cleaned
    # hint 2: --no-resume starts over with the new options, and run.json agrees with the checkpoint
    code, out, err = _run(capsys, "train", "--out", run, *TRAIN, "--lr", "0.1", "--no-resume")
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["config"]["lr"] == 0.1
    assert json.loads((run / "metrics.json").read_text())["config"]["lr"] == 0.1


def test_a_refused_resume_on_other_data_leaves_the_run_untouched(tmp_path, capsys, trained):
    run = _copy(trained, tmp_path / "run")
    before = _snapshot(run)
    code, _, err = _run(capsys, "train", "--out", run, *TRAIN[:2], "--n-train", "70", *TRAIN[4:])
    line = _error(err)
    assert code == 2 and "--no-resume" in line and "--n-train" in line, line
    assert _snapshot(run) == before


def test_an_unexpected_exception_keeps_its_traceback_and_exits_1(capsys, monkeypatch):
    """Before: a ValueError (or OSError) from a bug became "relprop: error: ..." with exit status 2, as if the
    user had made a mistake."""

    def bug(args, argv):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(cli.report, "run", bug)
    code, _, err = _run(capsys, "report", "x", "--out", "r.html")
    assert code == 1
    assert "Traceback" in err and "ValueError: an internal invariant broke" in err
    assert "relprop: error:" not in err


def test_a_relprop_usage_error_is_still_one_line_and_exit_2(capsys, monkeypatch):
    from relprop.errors import CheckpointError

    def fail(args, argv):
        raise CheckpointError("x.ckpt is not a readable checkpoint")

    monkeypatch.setattr(cli.report, "run", fail)
    code, _, err = _run(capsys, "report", "x", "--out", "r.html")
    assert code == 2 and err == "relprop: error: x.ckpt is not a readable checkpoint\n"


# -- (7) evaluate: a collapsed model is undefined, not perfect ----------------------------------------------------


def test_evaluate_reports_a_collapsed_model_as_undefined(tmp_path, capsys, trained):
    """Constant logits (all weights 0): relevance 0 everywhere. Before: "0.000" background share on every split
    (a perfect score) and no warning."""
    run = _copy(trained, tmp_path / "run")
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    ckpt["state_dict"] = {k: torch.zeros_like(v) for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, run / "last.ckpt")
    stale = run / ".evaluation.json.k1ll3d_x.tmp"  # a killed write of an earlier evaluate
    stale.write_text("{")
    code, out, err = _run(capsys, "evaluate", run, "--quiet")
    assert code == 0, err
    assert not stale.exists()
    row = next(line for line in out.splitlines() if line.startswith("selective"))
    assert row.count("undefined") == 3 and "0.000 " not in row.replace("undefined", ""), row
    assert "relprop: warning:" in err and "no relevance" in err and "undefined" in err
    doc = json.loads((run / "evaluation.json").read_text())  # valid JSON: no NaN token
    for split in ("test_biased", "test_unbiased", "test_deceiving"):
        assert doc["selective"][split]["background_share"] is None
        assert doc["selective"][split]["background_share_undefined"] == doc["selective"][split]["n"]
    assert not any(isinstance(v, float) and math.isnan(v) for v in doc["selective"]["test_biased"].values())
    for split in ("test_biased", "test_deceiving"):  # no relevance, no effect: undefined, not perfect
        assert doc["selective"]["shortcut"][split]["artefact_shown"] is None
        assert doc["selective"]["shortcut"][split]["tiling"] is None


def test_explain_removes_stale_temporaries_of_its_own_files_on_resume(tmp_path, capsys, image_and_model):
    """Before: the `.a_heatmap.png.XXXXXXXX.tmp` of a killed write stayed in the output folder for ever."""
    image, model = image_and_model
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".a_heatmap.png.k1ll3d_x.tmp", out / ".manifest.jsonl.abcdefgh.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    other = out / ".b_heatmap.png.k1ll3d_x.tmp"  # not a file this run writes
    other.write_bytes(b"someone else's")
    code, _, err = _run(capsys, "explain", image, "--model", model, "--size", SIZE, "--out", out)
    assert code == 0, err
    assert not any(p.exists() for p in stale) and other.exists()
