"""Heatmap rendering: colour-map centring, normalisation, overlays, grids and atomic PNG writes."""

from __future__ import annotations

import os

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from relprop.viz import heatmap  # noqa: E402
from relprop.viz.heatmap import heatmap_grid, montage, normalize_relevance, save_grid, save_png, to_heatmap  # noqa: E402

WHITE = np.array([255, 255, 255])


def test_zero_maps_to_white_positive_to_red_negative_to_blue() -> None:
    r = np.zeros((3, 5))
    r[0, 0], r[0, 1] = 1.0, -1.0
    r[1, 0], r[1, 1] = 0.3, -0.3
    hm = to_heatmap(r)
    assert hm.dtype == np.uint8 and hm.shape == (3, 5, 3)
    np.testing.assert_array_equal(hm[2, 2], WHITE)  # exactly zero: neutral centre colour
    red, blue = hm[0, 0].astype(int), hm[0, 1].astype(int)
    assert red[0] > 200 and red[2] < 60, red
    assert blue[2] > 200 and blue[0] < 60, blue
    weak_red, weak_blue = hm[1, 0].astype(int), hm[1, 1].astype(int)
    assert weak_red[0] > weak_red[2] and weak_red[2] > red[2]  # lighter red
    assert weak_blue[2] > weak_blue[0] and weak_blue[0] > blue[0]


def test_all_zero_relevance_is_white_not_nan() -> None:
    for r in (torch.zeros(1, 8, 8), np.zeros((8, 8)), torch.zeros(3, 4, 4)):
        hm = to_heatmap(r)
        assert (hm == 255).all()
        hm = to_heatmap(r, normalize="percentile")
        assert (hm == 255).all()


def test_channels_are_summed() -> None:
    r = torch.zeros(3, 2, 2)
    r[0, 0, 0], r[1, 0, 0] = 1.0, -1.0  # cancels: neutral
    r[2, 1, 1] = 2.0
    hm = to_heatmap(r)
    np.testing.assert_array_equal(hm[0, 0], WHITE)
    np.testing.assert_array_equal(hm[1, 1], to_heatmap(np.array([[1.0]]))[0, 0])


def test_max_normalisation_is_scale_invariant_and_uses_the_full_range() -> None:
    r = torch.randn(1, 6, 6, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(to_heatmap(r), to_heatmap(r * 1000.0))
    n = normalize_relevance(r)
    assert np.abs(n).max() == pytest.approx(1.0)
    np.testing.assert_allclose(n, r[0].numpy() / r.abs().max().item(), rtol=1e-6)


def test_percentile_normalisation_clips_outliers() -> None:
    r = np.ones((20, 20))
    r[0, 0] = 1000.0
    by_max = normalize_relevance(r, "max")
    by_pct = normalize_relevance(r, "percentile")
    assert by_max[5, 5] == pytest.approx(0.001)
    assert by_pct[5, 5] == pytest.approx(1.0)  # 99.5th percentile of |R| is 1: the bulk saturates
    assert by_pct[0, 0] == 1.0  # the outlier is clipped, not above 1
    expected = 1.0 / np.percentile(np.abs(r), 99.5)
    assert by_pct[5, 5] == pytest.approx(min(1.0, expected))


def test_percentile_falls_back_to_max_for_sparse_relevance() -> None:
    r = np.zeros((30, 30))
    r[3, 4] = -2.0  # one pixel in 900: the 99.5th percentile of |R| is 0
    n = normalize_relevance(r, "percentile")
    assert n[3, 4] == -1.0 and np.count_nonzero(n) == 1


def test_tensor_and_ndarray_and_batch_of_one_agree() -> None:
    r = torch.randn(1, 5, 7, generator=torch.Generator().manual_seed(1))
    a = to_heatmap(r)
    np.testing.assert_array_equal(a, to_heatmap(r.numpy()))
    np.testing.assert_array_equal(a, to_heatmap(r[0]))
    np.testing.assert_array_equal(a, to_heatmap(r[None]))


def test_bad_relevance_raises() -> None:
    with pytest.raises(ValueError, match="NaN"):
        to_heatmap(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        to_heatmap(np.zeros(5))
    with pytest.raises(ValueError, match="normalize"):
        to_heatmap(np.zeros((2, 2)), normalize="mean")  # type: ignore[arg-type]


def test_overlay_blends_greyscale_input() -> None:
    r = np.zeros((4, 4))
    r[0, 0] = 1.0
    image = np.zeros((3, 4, 4))
    image[:, 2, 2] = 1.0  # white pixel, rest black
    only_image = to_heatmap(r, overlay=image, alpha=0.0)
    np.testing.assert_array_equal(only_image[2, 2], WHITE)
    np.testing.assert_array_equal(only_image[1, 1], [0, 0, 0])
    np.testing.assert_array_equal(to_heatmap(r, overlay=image, alpha=1.0), to_heatmap(r))
    half = to_heatmap(r, overlay=image, alpha=0.5)
    assert abs(int(half[1, 1, 0]) - 128) <= 1  # white heatmap over black image
    grey = to_heatmap(r, overlay=image[:1], alpha=0.0)  # one-channel input
    np.testing.assert_array_equal(grey, only_image)
    with pytest.raises(ValueError, match="overlay"):
        to_heatmap(r, overlay=np.zeros((3, 5, 5)))


def test_montage_layout() -> None:
    tiles = [np.full((2, 3, 3), i, np.uint8) for i in range(5)]
    m = montage(tiles, ncols=2, pad=1, scale=2)
    assert m.shape == (3 * 4 + 4, 2 * 6 + 3, 3)
    assert (m[1:5, 1:7] == 0).all() and (m[1:5, 8:14] == 1).all() and (m[11:15, 1:7] == 4).all()


def test_grid_layout_titles_and_no_pyplot_leak() -> None:
    before = plt.get_fignums()
    images = [torch.rand(1, 8, 8) for _ in range(3)]
    maps = {"a": [torch.randn(1, 8, 8) for _ in range(3)], "b": [torch.randn(8, 8) for _ in range(3)]}
    fig = heatmap_grid(images, maps, row_titles=["x", "y", "z"], cell_size=1.0, dpi=50)
    axes = fig.get_axes()
    assert len(axes) == 3 * 3
    assert [ax.get_title() for ax in axes[:3]] == ["input", "a", "b"]
    assert [axes[i].get_ylabel() for i in (0, 3, 6)] == ["x", "y", "z"]
    width, height = fig.get_size_inches()
    assert width == pytest.approx(3.0) and height > 3.0
    assert plt.get_fignums() == before
    with pytest.raises(ValueError, match="'a' has 2 heatmaps for 3 images"):
        heatmap_grid(images, {"a": maps["a"][:2]})


def test_save_grid_writes_png_of_the_figure_size(tmp_path) -> None:
    images = [torch.rand(3, 8, 8) for _ in range(2)]
    maps = {"m": [torch.randn(3, 8, 8) for _ in range(2)]}
    path = save_grid(tmp_path / "sub" / "grid.png", images, maps, cell_size=1.0, dpi=40, overlay=True)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] == 80  # 2 columns × 1 inch × 40 dpi
        assert im.size[1] > 80


def test_save_png_roundtrip_and_parents(tmp_path) -> None:
    a = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    path = save_png(a, tmp_path / "x" / "y" / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), a)
    f = save_png(np.full((2, 2), 0.5), tmp_path / "f.png")
    assert np.asarray(Image.open(f)).tolist() == [[128, 128], [128, 128]]
    assert os.stat(path).st_mode & 0o444 == 0o444  # readable like a normal file, not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.png", "f.png"]


def test_save_png_never_leaves_a_partial_file(tmp_path, monkeypatch) -> None:
    target = tmp_path / "out.png"
    old = np.zeros((4, 4, 3), np.uint8)
    save_png(old, target)
    old_bytes = target.read_bytes()

    def broken_save(self, fp, format=None, **kw):  # noqa: A002
        fp.write(b"\x89PNG\r\n\x1a\n partial")  # some bytes reach the disk, then the encoder dies
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_png(np.ones((4, 4, 3), np.uint8), target)
    assert target.read_bytes() == old_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temp file left behind


def test_save_png_failing_replace_keeps_old_file(tmp_path, monkeypatch) -> None:
    target = tmp_path / "out.png"
    save_png(np.zeros((3, 3), np.uint8), target)
    old_bytes = target.read_bytes()

    def no_replace(src, dst):
        raise PermissionError("replace refused")

    monkeypatch.setattr(heatmap.os, "replace", no_replace)
    with pytest.raises(PermissionError):
        save_png(np.full((3, 3), 200, np.uint8), target)
    assert target.read_bytes() == old_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
