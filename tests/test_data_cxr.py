"""The chest-X-ray-style benchmark: real lung masks, evidence inside them, markers outside, the folder layout."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relprop.data import cxr
from relprop.data.cache import CacheWarning
from relprop.data.cxr import (
    CXRConfig,
    CXRSource,
    LungMasks,
    cxr_benchmark,
    cxr_montage,
    default_cxr_sources,
    load_cxr_annotations,
    load_lung_masks,
    make_cxr_folder,
    plan_cxr,
    render_cxr,
    render_cxr_layers,
)

N_MASKS = 12
SMALL = CXRConfig(size=32, sources=default_cxr_sources(2, 20, 20), n_masks=N_MASKS, seed=3)  # 80 images
SOURCES = ("hospital_a", "hospital_b", "hospital_c", "hospital_d")


def _rows(root: Path, name: str = "index.csv") -> list[dict[str, str]]:
    with open(root / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _header(root: Path, name: str) -> list[str]:
    with open(root / name, newline="", encoding="utf-8") as f:
        return next(csv.reader(f))


def _grey(path: Path) -> np.ndarray:
    im = Image.open(path)
    assert im.mode == "L"
    return np.asarray(im)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _phi(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(float), b.astype(float))[0, 1])


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.fixture(scope="module")
def masks() -> LungMasks:
    return load_lung_masks(N_MASKS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, masks: LungMasks) -> Path:
    return make_cxr_folder(tmp_path_factory.mktemp("cxr") / "bench", SMALL)


# ----------------------------------------------------------------------------------------------------------------------
# Lung masks


def test_lung_masks_are_real_two_lung_masks(masks: LungMasks) -> None:
    assert masks.masks.shape == (N_MASKS, 256, 256) and masks.masks.dtype == bool
    assert len(set(masks.names)) == N_MASKS
    assert all(n.lower().endswith((".png", ".jpg", ".jpeg")) for n in masks.names)
    frac = masks.masks.mean((1, 2))
    assert ((frac > 0.1) & (frac < 0.6)).all(), frac
    assert not masks.masks[:, :20].any() and not masks.masks[:, -30:].any()  # fitted into the canonical lung box
    left, right = masks.masks[:, :, :128].mean(), masks.masks[:, :, 128:].mean()
    assert 0.6 < left / right < 1.6
    assert not masks.masks[:, 60:200, 126:130].all(axis=(1, 2)).any()  # a gap between the lungs
    assert load_lung_masks(3).names == masks.names[:3]


def test_missing_lung_mask_zip_names_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cxr, "_PACKAGE", "relprop_no_such_package")
    with pytest.raises(FileNotFoundError, match=r"pip install torchxrayvision==1\.5\.7"):
        cxr.lung_mask_zip()
    with pytest.raises(FileNotFoundError, match="torchxrayvision"):
        make_cxr_folder(tmp_path / "bench", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_lung_mask_bank_cache_is_used_and_a_corrupt_one_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, masks: LungMasks
) -> None:
    bank_file = cxr._bank_file(cxr._zip_key(cxr.lung_mask_zip().read_bytes()), tmp_path)
    fake = np.zeros((3, 256, 256), bool)
    fake[:, 100:150, 40:200] = True
    cxr._write_bank(bank_file, LungMasks(fake, ("a.png", "b.png", "c.png")))
    monkeypatch.setattr(cxr, "_MEMO", {})
    got = load_lung_masks(2, cache_dir=tmp_path)
    assert got.names == ("a.png", "b.png") and np.array_equal(got.masks, fake[:2])

    bank_file.write_bytes(b"not an npz file")
    monkeypatch.setattr(cxr, "_MEMO", {})
    with pytest.warns(CacheWarning, match="unreadable"):
        got = load_lung_masks(2, cache_dir=tmp_path)
    assert got.names == masks.names[:2] and np.array_equal(got.masks, masks.masks[:2])
    assert bank_file.read_bytes() == b"not an npz file"  # a partial set is never written as the full bank


# ----------------------------------------------------------------------------------------------------------------------
# Folder layout


def test_layout_index_and_metadata_agree_with_the_files(folder: Path) -> None:
    rows = _rows(folder)
    meta = json.loads((folder / "config.json").read_text())
    assert _header(folder, "index.csv") == ["image", "mask", "label", "source"]
    assert meta["key"] == SMALL.key() and meta["n_images"] == len(rows) == 80
    assert meta["class_names"] == ["normal", "opacity"] == sorted(meta["class_names"])
    meta_rows = _rows(folder, "metadata.csv")
    truth = {m[k] for m in meta_rows for k in ("evidence", "artefact", "clean")}
    listed = {r["image"] for r in rows} | {r["mask"] for r in rows}
    on_disk = {p for p in _files(folder) if p.endswith(".png")}
    assert listed | truth == on_disk and len(truth) == 3 * len(rows) and not listed & truth
    for r in rows:
        assert r["image"] == f"{r['label']}/{Path(r['image']).name}"
        assert r["mask"] == f"masks/{r['image']}"
        assert Path(r["image"]).name.startswith(r["source"] + "_")
        image, mask = _grey(folder / r["image"]), _grey(folder / r["mask"])
        assert image.shape == mask.shape == (32, 32)
        assert set(np.unique(mask)) <= {0, 255}
    counts = {s.name: sum(r["source"] == s.name for r in rows) for s in SMALL.sources or ()}
    assert counts == dict.fromkeys(SOURCES, 20)
    assert [m["image"] for m in meta_rows] == [r["image"] for r in rows]
    assert all(m["label"] == r["label"] and m["source"] == r["source"] for m, r in zip(meta_rows, rows))
    for source, external in zip(SOURCES, "0011"):
        assert {m["external"] for m in meta_rows if m["source"] == source} == {external}
    for m in meta_rows:
        name = Path(m["image"]).name
        assert [m[k] for k in ("evidence", "artefact", "clean")] == [
            f"{m['label']}/{sub}/{name}" for sub in ("evidence", "artefacts", "clean")
        ]


def test_files_are_the_rendered_plan(folder: Path, masks: LungMasks) -> None:
    rows = {r["image"]: r for r in _rows(folder, "metadata.csv")}
    plan = plan_cxr(SMALL, len(masks.names))
    assert len(plan) == len(rows)
    for s in plan[::7]:
        rel = f"{SMALL.class_names[s.label]}/{s.name}.png"
        image, mask = render_cxr(s, SMALL, masks)
        assert np.array_equal(_grey(folder / rel), image)
        assert np.array_equal(_grey(folder / "masks" / rel) > 0, mask)
        row = rows[rel]
        expected = (str(int(s.tag)), str(int(s.border)), masks.names[s.mask_index])
        assert (row["tag"], row["border"], row["lung_mask"]) == expected
        layers = render_cxr_layers(s, SMALL, masks)
        assert np.array_equal(_grey(folder / row["clean"]), layers.clean)
        assert np.abs(_grey(folder / row["artefact"]) / 255 - layers.artefact).max() <= 0.5 / 255 + 1e-9
        written = _grey(folder / row["evidence"]) / 255
        assert np.abs(written - np.clip(layers.evidence, 0, 1)).max() <= 0.5 / 255 + 1e-9


def test_masks_are_jittered_real_lung_shapes(folder: Path, masks: LungMasks) -> None:
    fractions = []
    for r in _rows(folder, "metadata.csv"):
        written = _grey(folder / "masks" / r["image"]) > 0
        fractions.append(written.mean())
        bank = masks.masks[masks.names.index(r["lung_mask"])]
        small = np.asarray(Image.fromarray(bank.astype(np.uint8) * 255).resize((32, 32), Image.Resampling.BOX)) >= 128
        iou = (written & small).sum() / (written | small).sum()
        assert iou > 0.6, (r["image"], iou)
    assert 0.15 < min(fractions) and max(fractions) < 0.65 and 0.25 < float(np.mean(fractions)) < 0.5


def test_no_jitter_gives_the_bank_mask_resized(masks: LungMasks) -> None:
    config = replace(SMALL, jitter=0.0)
    for s in plan_cxr(config, len(masks.names))[:10]:
        _, mask = render_cxr(s, config, masks)
        bank = Image.fromarray(masks.masks[s.mask_index].astype(np.uint8) * 255)
        expected = np.asarray(bank.resize((32, 32), Image.Resampling.BOX)) >= 128
        assert (mask != expected).mean() < 0.01


def test_same_seed_same_files_other_seed_other_images(tmp_path: Path, folder: Path) -> None:
    again = make_cxr_folder(tmp_path / "again", SMALL)
    assert _files(again) == _files(folder)
    other = make_cxr_folder(tmp_path / "other", replace(SMALL, seed=4))
    a, b = _rows(folder), _rows(other)
    assert [r["image"] for r in a] != [r["image"] for r in b] or any(
        not np.array_equal(_grey(folder / x["image"]), _grey(other / y["image"])) for x, y in zip(a, b)
    )


# ----------------------------------------------------------------------------------------------------------------------
# Evidence inside, markers outside


@pytest.mark.parametrize("num_classes", [2, 3])
def test_class_evidence_changes_only_lung_pixels(masks: LungMasks, num_classes: int) -> None:
    config = replace(SMALL, num_classes=num_classes, sources=default_cxr_sources(num_classes, 6, 6), evidence=0.3)
    changed = 0
    for s in plan_cxr(config, len(masks.names)):
        images = []
        for label in range(num_classes):
            image, mask = render_cxr(replace(s, label=label), config, masks)
            images.append(image.astype(int))
        for label in range(1, num_classes):
            diff = images[label] != images[0]
            assert not (diff & ~mask).any()
            changed += int(diff.any())
            gain = (images[label] - images[0])[mask]
            assert gain.min() >= 0 and gain.max() > 15  # brighter lungs
    assert changed == len(plan_cxr(config, len(masks.names))) * (num_classes - 1)


def test_markers_change_only_background_pixels(masks: LungMasks) -> None:
    for s in plan_cxr(SMALL, len(masks.names))[::3]:
        bare, mask = render_cxr(replace(s, tag=False, border=False, letter=False), SMALL, masks)
        lettered = SMALL.source(s.source).letter != ""  # hospital_d has no letter
        for marked in (replace(s, tag=True), replace(s, border=True), replace(s, letter=True))[: 2 + lettered]:
            image, mask2 = render_cxr(marked, SMALL, masks)
            diff = image != bare
            assert np.array_equal(mask, mask2)
            assert diff.any() and not (diff & mask).any()


def test_lungs_are_brighter_with_opacity_in_the_written_images(folder: Path) -> None:
    inside: dict[str, list[float]] = {"normal": [], "opacity": []}
    for r in _rows(folder):
        if r["source"] == "hospital_c":  # one source: no intensity difference between the classes
            image, mask = _grey(folder / r["image"]).astype(float), _grey(folder / r["mask"]) > 0
            inside[r["label"]].append(image[mask].mean())
    assert np.mean(inside["opacity"]) > np.mean(inside["normal"]) + 3


@pytest.mark.parametrize("mode", ["independent", "anticorrelated"])
def test_markers_follow_the_class_in_training_sources_only(tmp_path: Path, mode: str) -> None:
    sources = default_cxr_sources(2, 20, 20)[:3]  # hospital_c derives its rates from the config's rule
    config = replace(SMALL, sources=sources, external_markers=mode)
    rows = _rows(make_cxr_folder(tmp_path / "bench", config), "metadata.csv")
    for marker, sign in (("tag", 1), ("border", -1)):
        train = [r for r in rows if r["external"] == "0"]
        ext = [r for r in rows if r["external"] == "1"]
        y_train = np.array([r["label"] == "opacity" for r in train])
        y_ext = np.array([r["label"] == "opacity" for r in ext])
        m_train, m_ext = (np.array([r[marker] == "1" for r in part]) for part in (train, ext))
        assert sign * _phi(m_train, y_train) > 0.5
        if mode == "independent":
            assert abs(_phi(m_ext, y_ext)) < 0.15
            assert abs(m_ext.mean() - m_train.mean()) < 0.1  # the same marker rate, only the correlation differs
        else:
            assert sign * _phi(m_ext, y_ext) < -0.5
    rates = config.marker_rates()
    assert rates["hospital_a"]["tag"] == (0.1, 0.9)
    assert len(set(rates["hospital_c"]["tag"])) == (1 if mode == "independent" else 2)


def test_letters_mark_the_source(folder: Path) -> None:
    letters = {(r["source"], r["letter"]) for r in _rows(folder, "metadata.csv")}
    assert letters == {("hospital_a", "R"), ("hospital_b", "L"), ("hospital_c", "L"), ("hospital_d", "")}


def test_external_hospitals_separate_the_marker_and_the_acquisition_shift(masks: LungMasks) -> None:
    rates = SMALL.marker_rates()
    pooled = {
        m: cxr._pooled_rates([SMALL.source("hospital_a"), SMALL.source("hospital_b")], m, 2)
        for m in rates["hospital_a"]
    }
    for marker, (per_class, overall) in pooled.items():
        assert rates["hospital_c"][marker] == (overall, overall)  # markers independent of the class
        assert rates["hospital_d"][marker] == per_class  # markers as in training
    acquisition = {s.name: (s.brightness, s.contrast) for s in SMALL.sources or ()}
    assert acquisition == {"hospital_a": (0, 1), "hospital_b": (0, 1), "hospital_c": (0, 1), "hospital_d": (0, 0.9)}
    # the same sample rendered as hospital_c and as hospital_d differs inside the lungs by the contrast only
    s = next(p for p in plan_cxr(SMALL, len(masks.names)) if p.source == "hospital_c")
    bare = replace(s, tag=False, border=False, letter=False)
    c = render_cxr_layers(bare, SMALL, masks)
    d = render_cxr_layers(replace(bare, source="hospital_d"), SMALL, masks)
    assert np.array_equal(c.mask, d.mask)
    inside_c, inside_d = c.image[c.mask].astype(float), d.image[d.mask].astype(float)
    assert np.abs((inside_c - 127.5) * 0.9 + 127.5 - inside_d).max() <= 1.5
    assert np.abs(inside_c - inside_d).max() > 3


@pytest.mark.parametrize("num_classes", [2, 3])
def test_ground_truth_layers_locate_evidence_and_markers(masks: LungMasks, num_classes: int) -> None:
    config = replace(SMALL, num_classes=num_classes, sources=default_cxr_sources(num_classes, 6, 6), evidence=0.3)
    for s in plan_cxr(config, len(masks.names))[::2]:
        layers = render_cxr_layers(s, config, masks)
        assert np.array_equal((layers.image, layers.mask), render_cxr(s, config, masks))
        assert (layers.evidence[~layers.mask] == 0).all() and (layers.artefact[layers.mask] == 0).all()
        assert (layers.evidence.max() > 0.3) == (s.label > 0)  # in units of the nominal strength
        assert (layers.artefact.max() > 0.5) == (
            s.tag or s.border or (s.letter and config.source(s.source).letter != "")
        )
        # the clean image is the marked one where no marker is, and equals the marker-free rendering
        assert np.array_equal(layers.clean[layers.artefact == 0], layers.image[layers.artefact == 0])
        bare = render_cxr(replace(s, tag=False, border=False, letter=False), config, masks)[0]
        assert np.array_equal(layers.clean, bare)
        # the evidence map is what the label adds to the image (before the source's contrast)
        normal = render_cxr_layers(replace(s, label=0), config, masks)
        added = (layers.clean.astype(float) - normal.clean.astype(float)) / 255
        source = config.source(s.source)
        expected = config.evidence * layers.evidence * source.contrast
        unclipped = (normal.clean > 0) & (normal.clean < 255) & (layers.clean < 255)
        assert np.abs(added - expected)[unclipped].max() <= 1 / 255 + 1e-9


def test_annotations_load_in_the_order_asked(folder: Path, masks: LungMasks) -> None:
    rows = _rows(folder)
    picked = [rows[5]["image"], str(folder / rows[2]["image"])]
    got = load_cxr_annotations(folder, picked)
    assert set(got) == {"evidence", "artefact", "clean"}
    assert all(a.shape == (2, 32, 32) and a.dtype == np.float32 for a in got.values())
    plan = {s.name: s for s in plan_cxr(SMALL, len(masks.names))}
    for k, r in enumerate((rows[5], rows[2])):
        layers = render_cxr_layers(plan[Path(r["image"]).stem], SMALL, masks)
        assert np.array_equal(got["clean"][k], layers.clean.astype(np.float32) / 255)
        assert np.abs(got["artefact"][k] - layers.artefact).max() < 1 / 255
    assert len(load_cxr_annotations(folder)["evidence"]) == len(rows)
    with pytest.raises(KeyError, match="not in"):
        load_cxr_annotations(folder, ["normal/nothing.png"])


# ----------------------------------------------------------------------------------------------------------------------
# Atomic, complete folders


def test_complete_folder_is_not_rebuilt(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("rebuilt")

    monkeypatch.setattr(cxr, "_write_folder", fail)
    assert make_cxr_folder(folder, SMALL) == folder


def test_interrupted_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []
    real = cxr.render_cxr_layers

    def interrupted(*args: object) -> object:
        calls.append(1)
        if len(calls) > 10:
            raise KeyboardInterrupt
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(cxr, "render_cxr_layers", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_cxr_folder(tmp_path / "bench", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_other_config_replaces_the_folder_and_an_interruption_keeps_the_old_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "bench"
    make_cxr_folder(root, SMALL)
    small2 = replace(SMALL, sources=default_cxr_sources(2, 5, 5))
    before = _files(root)

    def boom(*args: object) -> None:
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:
        m.setattr(cxr, "_write_folder", boom)
        with pytest.raises(RuntimeError, match="disk full"):
            make_cxr_folder(root, small2)
    assert _files(root) == before and _siblings(root) == ["bench"]
    (root / "index.csv").unlink()  # an incomplete folder of ours is rebuilt too
    make_cxr_folder(root, small2)
    assert len(_rows(root)) == 20 and json.loads((root / "config.json").read_text())["key"] == small2.key()
    assert _siblings(root) == ["bench"]


def test_foreign_folder_is_not_replaced(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "holiday.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a chest-X-ray benchmark"):
        make_cxr_folder(root, SMALL)
    assert (root / "holiday.png").read_bytes() == b"x"


def test_cxr_benchmark_caches_under_the_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = replace(SMALL, sources=default_cxr_sources(2, 4, 2))
    monkeypatch.setenv("RELPROP_CACHE", str(tmp_path / "env"))
    root = cxr_benchmark(config)
    assert root == tmp_path / "env" / f"cxr-{config.key()[:24]}" and len(_rows(root)) == 12
    monkeypatch.setattr(cxr, "_write_folder", lambda *a: pytest.fail("rebuilt"))
    assert cxr_benchmark(config) == root


def test_cxr_benchmark_cache_dir_argument(tmp_path: Path) -> None:
    config = replace(SMALL, sources=default_cxr_sources(2, 3, 3))
    root = cxr_benchmark(config, cache_dir=tmp_path)
    assert root.parent == tmp_path and (root / "config.json").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# Configuration and montage


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="external_markers"):
        CXRConfig(external_markers="sometimes")
    with pytest.raises(ValueError, match="markers="):
        CXRSource("ext", 3, (1, 1), external=True, markers="sometimes")
    with pytest.raises(ValueError, match="class rates"):
        CXRConfig(num_classes=3, sources=default_cxr_sources(2))
    with pytest.raises(ValueError, match="duplicate"):
        CXRConfig(sources=(CXRSource("a", 3, (1, 1), (0, 1), (0, 1)),) * 2)
    with pytest.raises(ValueError, match="required for a training source"):
        CXRSource("a", 3, (1, 1))
    with pytest.raises(ValueError, match="no training source"):
        CXRConfig(sources=(CXRSource("ext", 3, (1, 1), external=True),))
    with pytest.raises(ValueError, match="size"):
        CXRConfig(size=8)
    with pytest.raises(ValueError, match="name"):
        CXRSource("../up", 3, (1, 1), (0, 1), (0, 1))
    assert CXRConfig().key() == CXRConfig(sources=default_cxr_sources(2)).key() != CXRConfig(seed=1).key()
    assert sum(s.n for s in CXRConfig().sources or ()) == 2400
    assert [s.name for s in default_cxr_sources(2, 5, 0)] == ["hospital_a", "hospital_b"]


def test_montage_shows_every_source_and_class(folder: Path) -> None:
    image = cxr_montage(folder, per_class=2, scale=1)
    assert image.dtype == np.uint8 and image.shape == (4 * 34 + 2, 8 * 34 + 2, 3)


def test_folder_loader_reads_the_folder_and_its_csv(folder: Path) -> None:
    from relprop.data.folders import MaskedImageFolder, check_folder

    assert check_folder(folder) == [] and check_folder(csv=folder / "index.csv") == []
    data = MaskedImageFolder(csv=folder / "index.csv")
    assert len(data) == 80 and tuple(data.class_names) == SMALL.class_names
    image, mask, label = data[0]
    first = _rows(folder)[0]
    assert image.shape == mask.shape == (1, 32, 32) and SMALL.class_names[int(label)] == first["label"]
    assert np.array_equal(mask[0].numpy() > 0, _grey(folder / first["mask"]) > 0)
