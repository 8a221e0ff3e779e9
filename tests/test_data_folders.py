"""relprop.data.folders: image + mask data sets from folders or a CSV, their checks and source-held-out splits."""

from __future__ import annotations

import csv
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from relprop.cli import main as relprop_main
from relprop.data import (
    DataError,
    DataProblem,
    LabelledSubset,
    MaskedImageFolder,
    check_folder,
    folders,
    images,
    split,
    split_by_source,
)
from relprop.errors import RelpropError


def main(argv: list[str]) -> int:
    """``relprop check-data ARGS``."""
    return relprop_main(["check-data", *argv])

RNG = np.random.default_rng(0)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def blocks(h: int, w: int, block: int = 1, seed: int = 0) -> np.ndarray:
    """A random bool (h, w) mask made of block×block squares."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((-(-h // block), -(-w // block))) < 0.5
    return np.kron(coarse, np.ones((block, block), bool))[:h, :w]


MASK_N1 = blocks(20, 30, seed=1)
MASK_N2 = blocks(24, 24, seed=2)
MASK_P1 = blocks(16, 16, seed=3)
MASK_P2 = blocks(18, 22, seed=4)
RGB = (200, 100, 50)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """normal: n1 grey 20×30 PNG, n2 RGB JPEG 24×24; pneumonia: p1 16-bit PNG 16×16, p2 RGB PNG 18×22."""
    root = tmp_path / "data"
    save(root / "normal" / "n1.png", np.full((20, 30), 200, np.uint8))
    save(root / "masks" / "normal" / "n1.png", MASK_N1.astype(np.uint8) * 255)
    save(root / "normal" / "n2.jpg", np.full((24, 24, 3), 128, np.uint8))
    save(root / "masks" / "normal" / "n2.png", MASK_N2.astype(np.uint8))  # values {0, 1}
    save(root / "pneumonia" / "p1.png", np.full((16, 16), 40000, np.uint16))
    save(root / "masks" / "pneumonia" / "p1.BMP", MASK_P1.astype(np.uint8) * 255)
    save(root / "pneumonia" / "p2.png", np.broadcast_to(np.array(RGB, np.uint8), (18, 22, 3)).copy())
    save(root / "masks" / "pneumonia" / "p2.png", MASK_P2)  # mode "1"
    (root / "normal" / "notes.txt").write_text("not an image")
    (root / "normal" / ".hidden.png").write_bytes(b"")
    return root


def write_csv(path: Path, rows: list[dict[str, str]], columns: str = "image,mask,label,source") -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns.split(","))
        writer.writeheader()
        writer.writerows(rows)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Folder and CSV layouts


def test_folder_layout_items(folder: Path) -> None:
    assert Image.open(folder / "pneumonia" / "p1.png").mode == "I;16"
    ds = MaskedImageFolder(folder)
    assert ds.class_names == ("normal", "pneumonia") and ds.num_classes == 2  # "masks" is no class
    assert [s.image.name for s in ds.samples] == ["n1.png", "n2.jpg", "p1.png", "p2.png"]
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.labels.dtype == torch.int64
    assert ds.sources == ("",) * 4 and ds.source_names == ("",)
    for i, (mask, hw) in enumerate(
        [(MASK_N1, (20, 30)), (MASK_N2, (24, 24)), (MASK_P1, (16, 16)), (MASK_P2, (18, 22))]
    ):
        x, m, y = ds[i]
        assert x.dtype == m.dtype == torch.float32 and y.dtype == torch.int64 and y.shape == ()
        assert x.shape == (1, *hw) and m.shape == (1, *hw) and int(y) == ds.labels[i]
        assert 0 <= float(x.min()) and float(x.max()) <= 1
        assert torch.equal(m[0], torch.from_numpy(mask).float())
    assert torch.allclose(ds[0][0], torch.full((1, 20, 30), 200 / 255))
    assert torch.allclose(ds[2][0], torch.full((1, 16, 16), 40000 / 65535))  # 16-bit scaled to [0, 1]
    luma = (0.299 * RGB[0] + 0.587 * RGB[1] + 0.114 * RGB[2]) / 255
    assert torch.allclose(ds[3][0], torch.full((1, 18, 22), luma))


def test_channels_convert(folder: Path) -> None:
    ds = MaskedImageFolder(folder, channels=3)
    grey, rgb = ds[0][0], ds[3][0]
    assert grey.shape == (3, 20, 30) and torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
    assert torch.allclose(rgb, torch.tensor(RGB, dtype=torch.float32)[:, None, None].expand(3, 18, 22) / 255)
    assert torch.allclose(ds[2][0], torch.full((3, 16, 16), 40000 / 65535))


def test_mask_root_and_source_of(folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "segmentations"
    (folder / "masks").rename(elsewhere)
    ds = MaskedImageFolder(folder, mask_root=elsewhere, source_of=lambda p: "site" + p.stem[0])
    assert len(ds) == 4 and ds.source_names == ("siten", "sitep")
    inside = folder / "seg"  # a mask folder inside ROOT is no class either
    elsewhere.rename(inside)
    assert MaskedImageFolder(folder, mask_root=inside).class_names == ("normal", "pneumonia")
    with pytest.raises(DataError, match="mask folder not found"):
        MaskedImageFolder(folder)


def test_explicit_classes_order(folder: Path) -> None:
    ds = MaskedImageFolder(folder, classes=["pneumonia", "normal"])
    assert ds.class_names == ("pneumonia", "normal") and ds.labels.tolist() == [0, 0, 1, 1]
    assert [s.image.name for s in ds.samples] == ["p1.png", "p2.png", "n1.png", "n2.jpg"]
    only = MaskedImageFolder(folder, classes=["pneumonia"])  # other folders are skipped
    assert len(only) == 2 and only.labels.tolist() == [0, 0]
    with pytest.raises(DataError, match="class folder of class 'covid' not found"):
        MaskedImageFolder(folder, classes=["normal", "covid"])


def test_csv_layout_with_sources(folder: Path, tmp_path: Path) -> None:
    rows = [
        {"image": "data/normal/n1.png", "mask": "data/masks/normal/n1.png", "label": "normal", "source": "h1"},
        {"image": "data/pneumonia/p1.png", "mask": "data/masks/pneumonia/p1.BMP", "label": "pneumonia",
         "source": "h2"},
        {"image": str(folder / "pneumonia/p2.png"), "mask": str(folder / "masks/pneumonia/p2.png"),
         "label": "pneumonia", "source": " h3 "},
    ]  # fmt: skip
    table = write_csv(tmp_path / "list.csv", rows)
    ds = MaskedImageFolder(csv=table, size=8)
    assert ds.class_names == ("normal", "pneumonia") and ds.labels.tolist() == [0, 1, 1]
    assert ds.sources == ("h1", "h2", "h3") and ds.source_names == ("h1", "h2", "h3")
    x, m, y = ds[1]
    assert x.shape == m.shape == (1, 8, 8) and int(y) == 1
    # relative paths start from root= when given; the source column is optional
    no_source = write_csv(tmp_path / "sub.csv", [{k: v for k, v in rows[0].items() if k != "source"}],
                          "image,mask,label")  # fmt: skip
    assert MaskedImageFolder(folder.parent, csv=no_source).sources == ("",)
    with pytest.raises(DataError, match="not found"):
        MaskedImageFolder(folder, csv=no_source)


# ----------------------------------------------------------------------------------------------------------------------
# Transforms


@pytest.mark.parametrize("axis", [0, 1])
def test_resize_keeps_mask_binary_and_aligned(tmp_path: Path, axis: int) -> None:
    stripes = np.array([0, 0, 1, 0, 1, 1, 1, 0, 0, 1], bool)
    mask = np.repeat(stripes[:, None] if axis == 0 else stripes[None], 10, axis=1 - axis)
    save(tmp_path / "a" / "i.png", mask.astype(np.uint8) * 255)  # the image's foreground is the mask
    save(tmp_path / "masks" / "a" / "i.png", mask.astype(np.uint8) * 255)
    x, m, _ = MaskedImageFolder(tmp_path, size=(40, 30))[0]
    assert x.shape == m.shape == (1, 40, 30)
    assert set(m.unique().tolist()) == {0.0, 1.0}
    # same geometry: along one axis bilinear crosses 0.5 exactly where nearest switches
    assert torch.equal((x > 0.5).float(), m)
    assert torch.equal(m[0], torch.from_numpy(mask.repeat(4, 0).repeat(3, 1)).float())
    small = MaskedImageFolder(tmp_path, size=(7, 5))[0][1]
    assert small.shape == (1, 7, 5) and bool(((small == 0) | (small == 1)).all())


def test_center_crop_identical_for_image_and_mask(tmp_path: Path) -> None:
    mask = blocks(40, 60, block=5, seed=6)
    save(tmp_path / "a" / "i.png", mask.astype(np.uint8) * 255)
    save(tmp_path / "masks" / "a" / "i.png", mask.astype(np.uint8) * 255)
    x, m, _ = MaskedImageFolder(tmp_path, size=(40, 40), crop="center")[0]  # no resizing: cut columns 10..49
    assert torch.equal(m[0], torch.from_numpy(mask[:, 10:50]).float()) and torch.equal(x, m)
    x, m, _ = MaskedImageFolder(tmp_path, size=(20, 20), crop="center")[0]  # 40×60 → 20×30 → middle 20×20
    assert x.shape == m.shape == (1, 20, 20)
    assert torch.equal(m[0], torch.from_numpy(mask[1::2, 1::2][:, 5:25]).float())
    assert float(((x > 0.5).float() - m).abs().mean()) < 0.1  # same region; only block edges may blur
    stretched = MaskedImageFolder(tmp_path, size=(20, 20))[0][1]
    assert torch.equal(stretched[0], torch.from_numpy(mask[1::2, 1::3]).float())


def test_augment(folder: Path) -> None:
    def flip(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image.flip(-1), mask.flip(-1)

    plain, flipped = MaskedImageFolder(folder, size=12), MaskedImageFolder(folder, size=12, augment=flip)
    for a, b in zip(plain[3][:2], flipped[3][:2]):
        assert torch.equal(a.flip(-1), b)
    with pytest.raises(ValueError, match="augment on .*p2.png returned a mask that is not binary"):
        MaskedImageFolder(folder, augment=lambda x, m: (x, m * 0.5))[3]
    with pytest.raises(TypeError, match="must return \\(image, mask\\)"):
        MaskedImageFolder(folder, augment=lambda x, m: x)[0]
    with pytest.raises(ValueError, match="expected \\(1, H, W\\)"):
        MaskedImageFolder(folder, augment=lambda x, m: (x.expand(3, -1, -1), m))[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": 2}, "channels=2"),
        ({"crop": "center"}, "needs size"),
        ({"size": 8, "crop": "random"}, "crop='random'"),
        ({"size": (0, 3)}, "size=\\(0, 3\\)"),
        ({"classes": "normal"}, "sequence of class names"),
        ({"classes": ["a", "a"]}, "distinct"),
    ],
)
def test_bad_arguments(folder: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MaskedImageFolder(folder, **kwargs)


def test_needs_root_or_csv() -> None:
    with pytest.raises(ValueError, match="a data folder \\(root=\\) or a CSV file"):
        MaskedImageFolder()


# ----------------------------------------------------------------------------------------------------------------------
# Bad data


def test_lazy_errors_name_the_file(folder: Path) -> None:
    save(folder / "masks" / "normal" / "n1.png", np.array([[0, 17], [255, 255]], np.uint8).repeat(10, 0).repeat(15, 1))
    save(folder / "masks" / "pneumonia" / "p1.BMP", np.zeros((16, 15), np.uint8))
    (folder / "normal" / "n2.jpg").write_bytes(b"this is no JPEG")
    good = (folder / "pneumonia" / "p2.png").read_bytes()
    (folder / "pneumonia" / "p2.png").write_bytes(good[: len(good) // 2])
    ds = MaskedImageFolder(folder)  # contents are checked on load
    with pytest.raises(DataError) as info:
        ds[0]
    expected = "not binary (values 0, 17, 255; expected 0 and one of 1, 255, 65535)"
    assert str(info.value) == f"{folder / 'masks/normal/n1.png'}: {expected}"
    assert isinstance(info.value, RelpropError) and isinstance(info.value, ValueError)
    assert info.value.problems[0].kind == "not_binary"
    with pytest.raises(DataError, match="n2.jpg: unreadable image"):
        ds[1]
    with pytest.raises(DataError) as info:
        ds[2]
    assert str(folder / "masks/pneumonia/p1.BMP") in str(info.value) and str(folder / "pneumonia/p1.png") in str(
        info.value
    )
    assert "mask is 15×16 (W×H)" in str(info.value) and "is 16×16" in str(info.value)
    with pytest.raises(DataError, match="p2.png: unreadable image"):
        ds[3]


def test_constructor_lists_cheap_problems(folder: Path) -> None:
    (folder / "masks" / "normal" / "n1.png").unlink()
    (folder / "covid").mkdir()
    for i in range(6):
        save(folder / "pneumonia" / f"q{i}.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError) as info:
        MaskedImageFolder(folder)
    text, problems = str(info.value), info.value.problems
    assert text.startswith(f"8 problems in the data set {folder}:")
    assert "… and 3 more" in text and f"`relprop check-data {folder}` lists every problem" in text
    assert problems[0] == DataProblem(folder / "covid", "empty class folder (no image files)", "empty_class")
    assert problems[1].path == folder / "normal" / "n1.png" and problems[1].kind == "missing"
    assert {p.path.name for p in problems[2:]} == {f"q{i}.png" for i in range(6)}
    clone = pickle.loads(pickle.dumps(info.value))
    assert str(clone) == text and clone.problems == problems


def test_check_folder_lists_every_problem(folder: Path) -> None:
    assert check_folder(folder) == []
    nonbinary = [folder / "masks/normal/n1.png", folder / "masks/pneumonia/p2.png"]
    for path in nonbinary:
        save(path, np.full(Image.open(path).size[::-1], 9, np.uint8))
    save(folder / "masks" / "pneumonia" / "p1.BMP", np.zeros((16, 15), np.uint8))
    (folder / "normal" / "n2.jpg").write_bytes(b"\x89PNG broken")
    save(folder / "normal" / "n3.png", np.zeros((4, 4), np.uint8))  # no mask
    (folder / "empty").mkdir()
    save(folder / "masks" / "empty" / "e.png", np.zeros((4, 4), np.uint8))
    problems = check_folder(folder)
    assert sorted((p.path, p.kind) for p in problems) == sorted([
        (folder / "empty", "empty_class"),
        (folder / "normal/n3.png", "missing"),
        (folder / "normal/n2.jpg", "unreadable"),
        (nonbinary[0], "not_binary"),
        (nonbinary[1], "not_binary"),
        (folder / "masks/pneumonia/p1.BMP", "size_mismatch"),
    ])  # fmt: skip
    assert all(isinstance(p, DataProblem) and "\n" not in str(p) for p in problems)


def test_check_csv_problems(folder: Path, tmp_path: Path) -> None:
    def row(image: str, mask: str, label: str) -> dict[str, str]:
        return {"image": f"data/{image}", "mask": f"data/masks/{mask}", "label": label, "source": "h1"}

    table = write_csv(tmp_path / "list.csv", [
        row("normal/n1.png", "normal/n1.png", "normal"),
        row("normal/n1.png", "normal/n1.png", "normal"),  # duplicate
        row("normal/n9.png", "normal/n1.png", "normal"),  # missing image
        row("normal/n2.jpg", "normal/n2.jpg", "normal"),  # missing mask
        row("pneumonia/p1.png", "pneumonia/p1.BMP", "covid"),  # unknown label
        row("pneumonia/p2.png", "pneumonia/p2.png", "pneumonia"),
    ])  # fmt: skip
    problems = check_folder(csv=table, classes=["normal", "pneumonia"])
    assert [(p.path, p.kind) for p in problems] == [
        (folder / "normal/n1.png", "duplicate"),
        (folder / "normal/n9.png", "missing"),
        (folder / "masks/normal/n2.jpg", "missing"),
        (table, "unknown_label"),
    ]
    assert "CSV lines 2 and 3" in problems[0].message and "line 6: unknown label 'covid'" in problems[3].message
    bad_header = write_csv(tmp_path / "bad.csv", [], "image,label")
    assert [p.message for p in check_folder(csv=bad_header)] == [
        "the header lacks the column(s) mask (found image, label; needs image, mask, label)"
    ]
    assert check_folder(csv=tmp_path / "nothing.csv")[0].message == "CSV file not found"


def test_main_exit_codes(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(folder)]) == 0
    assert capsys.readouterr().out == "4 images, 2 classes, 1 source, no problems\n"
    table = write_csv(tmp_path / "list.csv", [
        {"image": "data/normal/n1.png", "mask": "data/masks/normal/n1.png", "label": "normal", "source": "h1"},
        {"image": "data/pneumonia/p2.png", "mask": "data/masks/pneumonia/p2.png", "label": "pneumonia", "source": "h2"},
    ])  # fmt: skip
    assert main(["--csv", str(table)]) == 0
    assert capsys.readouterr().out == "2 images, 2 classes, 2 sources, no problems\n"
    (folder / "masks/normal/n2.png").unlink()
    (folder / "pneumonia/p1.png").write_bytes(b"")
    assert main([str(folder)]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        f"{folder / 'normal/n2.jpg'}: no mask {folder / 'masks/normal/n2'}.* found",
        f"{folder / 'pneumonia/p1.png'}: unreadable image "
        f"(UnidentifiedImageError: cannot identify image file {str(folder / 'pneumonia/p1.png')!r})",
    ]
    assert out.err.strip() == "2 problems"
    assert main([]) == 2
    assert capsys.readouterr().err == "relprop: error: give a data folder ROOT or --csv FILE\n"
    assert main([str(folder), "--classes", "normal"]) == 1  # n2's mask is missing; the pneumonia folder is skipped
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_one_image_reader_for_folders_and_explain(folder: Path, tmp_path: Path) -> None:
    """MaskedImageFolder and ``relprop explain`` (load_image) read pixels with the same reader, at full depth."""
    assert folders.read_image is images.read_image
    ramp = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    save(folder / "pneumonia" / "p1.png", ramp)  # 16-bit, replacing the constant image
    ds = MaskedImageFolder(folder)
    expected = torch.from_numpy(ramp.astype(np.float32) / 65535)
    torch.testing.assert_close(ds[2][0][0], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(images.load_image(folder / "pneumonia/p1.png", 16, 1)[0]), expected)
    for channels in (1, 3):
        a = images.read_image(folder / "normal" / "n2.jpg", channels)
        assert a.shape == (24, 24, channels) and a.dtype == np.float32
        b = images.load_image(folder / "normal" / "n2.jpg", 24, channels)  # no resize: the same pixels
        np.testing.assert_array_equal(b, a.transpose(2, 0, 1))
    half = images.load_image(folder / "pneumonia/p1.png", 8, 1)[0]  # resized in float32: still the full ramp
    assert half.shape == (8, 8) and 0.0 <= half.min() < 0.05 and 0.95 < half.max() <= 1.0
    assert (np.diff(half.reshape(-1)[::9]) > 0).all()  # the diagonal still rises
    wide = images.load_image(folder / "normal" / "n1.png", 10, 3)  # 20×30: shorter side to 10, centre crop
    assert wide.shape == (3, 10, 10) and np.allclose(wide, 200 / 255, atol=1e-6)
    with pytest.raises(DataError, match="x.png: image not found"):
        images.read_image(tmp_path / "x.png")


def test_find_images_skips_hidden_other_and_excluded_files(tmp_path: Path) -> None:
    for name in ("a.png", "B.JPG", ".hidden.png", "notes.txt", "sub/c.tif", ".git/d.png", "out/e.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in images.find_images(tmp_path, exclude=[tmp_path / "out"])]
    assert found == ["B.JPG", "a.png", "sub/c.tif"]
    assert [p.name for p in images.image_files(tmp_path)] == ["B.JPG", "a.png"]  # not recursive


# ----------------------------------------------------------------------------------------------------------------------
# Splits and batching


class Fake(torch.utils.data.Dataset):
    """Labels and sources only: 3 sources × 2 classes with uneven counts."""

    class_names = ("a", "b")

    def __init__(self) -> None:
        counts = {("h1", 0): 30, ("h1", 1): 10, ("h2", 0): 20, ("h2", 1): 20, ("h3", 0): 5, ("h3", 1): 7}
        pairs = [key for key, n in counts.items() for _ in range(n)]
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(1)).tolist()
        self.sources = tuple(pairs[i][0] for i in order)
        self.labels = torch.tensor([pairs[i][1] for i in order])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> int:
        return i


def test_split_by_source() -> None:
    ds = Fake()
    parts = split_by_source(ds, ["h3"], val_fraction=0.2, seed=0)
    assert set(parts) == {"train", "val", "external"} and all(isinstance(p, LabelledSubset) for p in parts.values())
    train, val, external = (list(parts[k].indices) for k in ("train", "val", "external"))
    assert external == [i for i, s in enumerate(ds.sources) if s == "h3"]
    assert set(parts["external"].sources) == {"h3"} and "h3" not in set(parts["train"].sources + parts["val"].sources)
    assert not set(train) & set(val) and sorted(train + val) == [i for i, s in enumerate(ds.sources) if s != "h3"]
    assert Counter(parts["val"].labels.tolist()) == {0: 10, 1: 6}  # round(0.2 × 50), round(0.2 × 30)
    assert parts["train"].class_names == ("a", "b") and parts["train"].num_classes == 2
    again = split_by_source(ds, "h3", val_fraction=0.2, seed=0)
    assert all(list(again[k].indices) == list(parts[k].indices) for k in parts)
    assert list(split_by_source(ds, ["h3"], val_fraction=0.2, seed=1)["val"].indices) != val
    assert len(split_by_source(ds, [], val_fraction=0)["train"]) == len(ds)
    with pytest.raises(ValueError, match="unknown source\\(s\\) 'h9'; the data set has \\['h1', 'h2', 'h3'\\]"):
        split_by_source(ds, ["h3", "h9"])
    with pytest.raises(ValueError, match="no items left for training"):
        split_by_source(ds, ["h1", "h2", "h3"])
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_source(ds, ["h3"], val_fraction=1.0)


def test_split_stratified() -> None:
    ds = Fake()  # class a: 55 items, class b: 37
    parts = split(ds, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    counts = {k: Counter(p.labels.tolist()) for k, p in parts.items()}
    assert counts == {"train": {0: 33, 1: 22}, "val": {0: 11, 1: 8}, "test": {0: 11, 1: 7}}
    assert sorted(i for p in parts.values() for i in p.indices) == list(range(len(ds)))
    assert [list(p.indices) for p in split(ds, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3).values()] == [
        list(p.indices) for p in parts.values()
    ]
    with pytest.raises(ValueError, match="sum to 1"):
        split(ds, {"train": 0.6, "val": 0.2})


def test_split_by_source_on_a_folder_and_batching(tmp_path: Path) -> None:
    rows = []
    for i in range(12):
        image = save(tmp_path / "img" / f"{i}.png", np.full((10 + i, 12), 20 * i, np.uint8))
        save(tmp_path / "msk" / f"{i}.png", blocks(10 + i, 12, seed=i).astype(np.uint8) * 255)
        rows.append({"image": f"img/{image.name}", "mask": f"msk/{i}.png", "label": "ab"[i % 2],
                     "source": f"h{i % 3}"})  # fmt: skip
    ds = MaskedImageFolder(csv=write_csv(tmp_path / "list.csv", rows), size=(16, 16))
    parts = split_by_source(ds, ["h2"], val_fraction=0.25)
    assert [ds.sources[i] for i in parts["external"].indices] == ["h2"] * 4
    assert sorted(parts["val"].labels.tolist()) == [0, 1]
    batches = list(DataLoader(parts["train"], batch_size=4, shuffle=False))
    assert len(batches) == 2 and sum(len(b[2]) for b in batches) == 6
    x, mask, y = batches[0]
    assert x.shape == mask.shape == (4, 1, 16, 16) and y.shape == (4,) and y.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(y, parts["train"].labels[:4])


def test_worker_errors_keep_the_file_name(folder: Path) -> None:
    (folder / "pneumonia" / "p1.png").write_bytes(b"broken")
    loader = DataLoader(MaskedImageFolder(folder, size=8), batch_size=2, num_workers=1)
    with pytest.raises(DataError, match="p1.png: unreadable image"):
        list(loader)


def test_relprop_check_data_command(tmp_path, capsys) -> None:
    from relprop.cli import main

    (tmp_path / "a").mkdir()
    (tmp_path / "masks" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a" / "y.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "masks" / "a" / "x.png")
    assert main(["check-data", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "y.png: no mask" in out.out + out.err
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / "a" / "y.png")
    assert main(["check-data", str(tmp_path)]) == 0
    assert "no problems" in capsys.readouterr().out
