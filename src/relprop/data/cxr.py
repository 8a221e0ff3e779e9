"""Chest-X-ray-style shortcut benchmark on real lung masks, written as an image + mask folder.

Every image is a stylised greyscale chest radiograph built around one real lung mask (the 435 non-empty masks
of ``semantic_masks_v7labs_lungs.zip`` shipped with ``torchxrayvision==1.5.7``, read straight from the zip):

- *anatomy* (class- and marker-independent): a torso-shaped soft-tissue silhouette with a brighter spine,
  faint ribs, a smooth intensity gradient and noise; the lungs are darker regions shaped by the mask (fitted
  into a canonical box, then a small random rotation, scaling and shift), with a faint lung texture;
- *class evidence*, strictly inside the lung mask: ``normal`` (none), ``opacity`` (1-3 blurred bright
  patches) and, with ``num_classes=3``, ``pleural_effusion`` (bright fluid filling the base of one lung
  under a meniscus);
- *hospital markers*, strictly outside the lung mask: the text tag ``PORTABLE`` (bottom band), a bright
  border frame, and a laterality letter (``L``/``R``) at a source-specific corner;
- optionally a global brightness/contrast change per source (applied to the whole image, lungs included: an
  acquisition property, not a local mark, so no background loss can remove it).

Sources: training sources (default ``hospital_a``, ``hospital_b``) whose tag and border rates depend on the
class (e.g. 90 % of ``opacity`` images from ``hospital_a`` carry ``PORTABLE``, 10 % of its ``normal`` ones),
with different class prevalences; and external sources drawn from held-out lung masks whose marker rates are
derived from the training sources by a rule (:attr:`CXRSource.markers`, default
:attr:`CXRConfig.external_markers`): ``"independent"`` (every class gets the pooled training rate of the
marker), ``"anticorrelated"`` (class ``c`` gets the pooled training rate of class ``C-1-c``) or ``"training"``
(each class keeps its pooled training rate). The default external sources separate the two shifts:
``hospital_c`` differs from the training hospitals *only* in its background markers (independent of the
class; a new letter placement), ``hospital_d`` *only* in its acquisition (contrast 0.9 over the whole image;
markers at the training rates, no letter). Labels and markers are allotted in exact counts (rounded), so the
rates hold for small data sets too.

Every image also has its ground truth: the class evidence map, the markers' alpha and the image without
markers (:func:`render_cxr_layers`; written to the folder, read back by :func:`load_cxr_annotations`), so
metrics can ask whether a heatmap follows the evidence or the artefacts.

Folder layout written by :func:`make_cxr_folder` (the layout real data sets use)::

    root/<class>/<name>.png          8-bit grey image, <name> = <source>_<index>
    root/masks/<class>/<name>.png    8-bit lung mask, 0 (background) or 255 (lung = foreground)
    root/index.csv                   image,mask,label,source (relative paths; label = class name)
    root/metadata.csv                image,label,source,external,tag,border,letter,lung_mask,evidence,artefact,clean
    root/<class>/evidence/<name>.png  8-bit class evidence added inside the lungs (255 = the nominal strength
                                      ``CXRConfig.evidence``; 0 everywhere for ``normal``)
    root/<class>/artefacts/<name>.png 8-bit alpha of the markers (outside the lungs; 0 = none)
    root/<class>/clean/<name>.png     the same image without any marker
    root/config.json                 the configuration and its content hash

The ground truth sits in subfolders of the class folders, which image-folder loaders skip. Class names sort
alphabetically in label order (``normal`` < ``opacity`` < ``pleural_effusion``), so loaders
that index sorted class folders agree with the label indices. Everything is deterministic from the seed.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .._io import _UMASK, atomic_write
from .cache import CacheWarning, content_key, resolve_cache_dir

__all__ = [
    "CXR_CLASSES", "CXRConfig", "CXRLayers", "CXRSample", "CXRSource", "LungMasks", "cxr_benchmark", "cxr_montage",
    "default_cxr_sources", "load_cxr_annotations", "load_lung_masks", "lung_mask_zip", "make_cxr_folder",
    "plan_cxr", "render_cxr", "render_cxr_layers",
]  # fmt: skip

CXR_CLASSES: tuple[str, ...] = ("normal", "opacity", "pleural_effusion")
FORMAT_VERSION = 2  # bump when the construction changes: it is part of the content hash
BANK = 256  # side of the canonical lung-mask bank
LUNG_BOX = (0.12, 0.86, 0.10, 0.90)  # canonical lung bounding box (top, bottom, left, right), fractions of the side
TAG_TEXT = "PORTABLE"
INDEX_COLUMNS = ("image", "mask", "label", "source")
METADATA_COLUMNS = (
    "image", "label", "source", "external", "tag", "border", "letter", "lung_mask", "evidence", "artefact", "clean",
)  # fmt: skip
LAYER_FOLDERS = {"evidence": "evidence", "artefact": "artefacts", "clean": "clean"}
CORNERS = ("top_left", "top_right")
EXTERNAL_MARKERS = ("independent", "anticorrelated", "training")
_PACKAGE = "torchxrayvision"
_ZIP_MEMBER = "data/semantic_masks_v7labs_lungs.zip"
_INSTALL_HINT = "pip install torchxrayvision==1.5.7"
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_KIND = "cxr_benchmark"


# ----------------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class CXRSource:
    """One hospital: its size, class prevalence, marker rates and intensity change.

    Attributes:
        name: folder-safe name (lower-case letters, digits, ``_``, ``-``), unique within a config.
        n: number of images.
        prevalence: fraction of images per class (normalised; one entry per class).
        p_tag: per class, the fraction of images carrying the ``PORTABLE`` tag; ``None`` (external sources
            only): derived from the training sources by :attr:`CXRConfig.external_markers`.
        p_border: per class, the fraction of images with a bright border frame; ``None`` as for ``p_tag``.
        external: an out-of-distribution test source (held-out lung masks, derived marker rates).
        markers: how an external source derives the rates it does not give: ``"independent"``,
            ``"anticorrelated"`` or ``"training"`` (see the module doc); ``None``: the config's
            :attr:`CXRConfig.external_markers`.
        letter: laterality letter drawn on every image of the source (``""``: none).
        letter_corner: ``"top_left"`` or ``"top_right"``.
        brightness: added to the whole image (intensities in [0, 1]).
        contrast: the whole image is scaled by it around 0.5.
    """

    name: str
    n: int
    prevalence: tuple[float, ...]
    p_tag: tuple[float, ...] | None = None
    p_border: tuple[float, ...] | None = None
    external: bool = False
    letter: str = "L"
    letter_corner: str = "top_left"
    brightness: float = 0.0
    contrast: float = 1.0
    markers: str | None = None

    def __post_init__(self) -> None:
        for name in ("prevalence", "p_tag", "p_border"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"CXRSource.name={self.name!r} must match {_NAME_RE.pattern}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise ValueError(f"CXRSource {self.name!r}: n={self.n!r} must be an int >= 0")
        if not self.prevalence or min(self.prevalence) < 0 or sum(self.prevalence) <= 0:
            raise ValueError(f"CXRSource {self.name!r}: prevalence={self.prevalence} must be >= 0 with a positive sum")
        for name in ("p_tag", "p_border"):
            value = getattr(self, name)
            if value is None and not self.external:
                raise ValueError(f"CXRSource {self.name!r}: {name} is required for a training source")
            if value is not None and (len(value) != len(self.prevalence) or not all(0 <= p <= 1 for p in value)):
                raise ValueError(f"CXRSource {self.name!r}: {name}={value} needs one rate in [0, 1] per class")
        if self.markers is not None and self.markers not in EXTERNAL_MARKERS:
            raise ValueError(
                f"CXRSource {self.name!r}: markers={self.markers!r} must be None or one of {EXTERNAL_MARKERS}"
            )
        if self.letter_corner not in CORNERS:
            raise ValueError(f"CXRSource {self.name!r}: letter_corner={self.letter_corner!r} must be one of {CORNERS}")
        if not isinstance(self.letter, str) or len(self.letter) > 2:
            raise ValueError(
                f"CXRSource {self.name!r}: letter={self.letter!r} must be a string of at most 2 characters"
            )
        for name in ("brightness", "contrast"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.contrast <= 0:
            raise ValueError(f"CXRSource {self.name!r}: contrast={self.contrast} must be > 0")


def default_cxr_sources(
    num_classes: int = 2, n_train: int = 800, n_external: int = 400, *, acquisition: float = 0.9
) -> tuple[CXRSource, ...]:
    """The default sources: ``hospital_a`` and ``hospital_b`` (``n_train`` images each) for training,
    ``hospital_c`` and ``hospital_d`` (``n_external`` each) external.

    ``hospital_a`` (many sick patients, portable scans): ``PORTABLE`` on 90 % of ``opacity`` and 10 % of
    ``normal`` images, border on 20 % / 60 %, letter ``R`` top left. ``hospital_b`` (mostly healthy):
    ``PORTABLE`` on 70 % / 5 %, border on 10 % of ``opacity`` and 75 % of ``normal`` images, letter ``L`` top
    right. Both share one acquisition (no intensity change). ``hospital_c`` (the *markers* shift): uniform
    prevalence, marker rates independent of the class (the config's ``external_markers``), letter ``L`` top left,
    the training acquisition. ``hospital_d`` (the *acquisition* shift): uniform prevalence, the markers at their
    pooled per-class training rates, no letter, the whole image's contrast scaled by ``acquisition`` (lungs
    included). ``n_external=0`` leaves out the external sources; ``acquisition=1`` makes ``hospital_d`` a second
    in-distribution-like test (held-out lung masks only).
    """
    prev_a: tuple[float, ...]
    prev_b: tuple[float, ...]
    tag_a: tuple[float, ...]
    tag_b: tuple[float, ...]
    border_a: tuple[float, ...]
    border_b: tuple[float, ...]
    if num_classes == 2:
        prev_a, prev_b = (0.35, 0.65), (0.7, 0.3)
        tag_a, tag_b, border_a, border_b = (0.1, 0.9), (0.05, 0.7), (0.6, 0.2), (0.75, 0.1)
    elif num_classes == 3:
        prev_a, prev_b = (0.3, 0.45, 0.25), (0.55, 0.2, 0.25)
        tag_a, tag_b, border_a, border_b = (0.1, 0.9, 0.5), (0.05, 0.7, 0.3), (0.6, 0.2, 0.3), (0.75, 0.1, 0.2)
    else:
        raise ValueError(f"num_classes={num_classes} must be 2 or 3")
    uniform = (1.0 / num_classes,) * num_classes
    train = (
        CXRSource("hospital_a", n_train, prev_a, tag_a, border_a, letter="R"),
        CXRSource("hospital_b", n_train, prev_b, tag_b, border_b, letter="L", letter_corner="top_right"),
    )
    if n_external == 0:
        return train
    return train + (
        CXRSource("hospital_c", n_external, uniform, external=True, letter="L"),
        CXRSource(
            "hospital_d", n_external, uniform, external=True, letter="", contrast=acquisition, markers="training"
        ),
    )


@dataclass(frozen=True)
class CXRConfig:
    """Everything that determines a chest-X-ray-style benchmark (and its content hash).

    Attributes:
        size: side of the square images (16..512).
        num_classes: 2 (``normal``, ``opacity``) or 3 (also ``pleural_effusion``).
        sources: the hospitals; ``None``: :func:`default_cxr_sources` for ``num_classes`` (1600 training
            images, 400 in each of the two external hospitals).
        external_markers: marker rates of external sources without explicit rates and without their own
            :attr:`CXRSource.markers`: ``"independent"`` (every class gets the marker's pooled training rate),
            ``"anticorrelated"`` (class ``c`` gets the pooled training rate of class ``num_classes - 1 - c``)
            or ``"training"`` (each class its pooled training rate).
        evidence: intensity of the class evidence inside the lungs (image intensities lie in [0, 1]).
        noise: standard deviation of the pixel noise.
        jitter: scale of the random rotation (±6°), scaling (±7 %) and shift (±4 %) of the lung masks.
        n_masks: use the first ``n_masks`` non-empty lung masks of the zip (``None``: all 435).
        external_mask_fraction: fraction of the masks held out for the external sources (at least one).
        seed: seed of everything random.
    """

    size: int = 64
    num_classes: int = 2
    sources: tuple[CXRSource, ...] | None = None
    external_markers: str = "independent"
    evidence: float = 0.25
    noise: float = 0.03
    jitter: float = 1.0
    n_masks: int | None = None
    external_mask_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low, high in (("size", 16, 512), ("num_classes", 2, 3), ("seed", 0, None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                raise ValueError(f"CXRConfig.{name}={value!r} must be an int in {low}..{high or 'inf'}")
        sources = default_cxr_sources(self.num_classes) if self.sources is None else tuple(self.sources)
        object.__setattr__(self, "sources", sources)
        if not sources or not all(isinstance(s, CXRSource) for s in sources):
            raise TypeError("CXRConfig.sources must be a non-empty sequence of CXRSource")
        if len({s.name for s in sources}) != len(sources):
            raise ValueError(f"CXRConfig.sources: duplicate names {[s.name for s in sources]}")
        for s in sources:
            if len(s.prevalence) != self.num_classes:
                raise ValueError(
                    f"source {s.name!r} has {len(s.prevalence)} class rates, num_classes={self.num_classes}"
                )
        if not any(s.n for s in sources):
            raise ValueError("CXRConfig.sources hold no images")
        if self.external_markers not in EXTERNAL_MARKERS:
            raise ValueError(f"CXRConfig.external_markers={self.external_markers!r} must be one of {EXTERNAL_MARKERS}")
        derived = [s.name for s in sources if s.p_tag is None or s.p_border is None]
        if derived and not any(not s.external and s.n for s in sources):
            raise ValueError(
                f"sources {derived} derive their marker rates, but there is no training source with images"
            )
        if self.n_masks is not None and (isinstance(self.n_masks, bool) or not isinstance(self.n_masks, int)):
            raise ValueError(f"CXRConfig.n_masks={self.n_masks!r} must be an int or None")
        need = 2 if any(s.external for s in sources) and any(not s.external for s in sources) else 1
        if self.n_masks is not None and self.n_masks < need:
            raise ValueError(f"CXRConfig.n_masks={self.n_masks} must be >= {need}")
        for name in ("evidence", "noise", "jitter", "external_mask_fraction"):
            object.__setattr__(self, name, float(getattr(self, name)))  # 1 and 1.0: the same content hash
        for name in ("evidence", "noise", "jitter"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"CXRConfig.{name}={getattr(self, name)} must be >= 0")
        if not 0 < self.external_mask_fraction < 1:
            raise ValueError(f"CXRConfig.external_mask_fraction={self.external_mask_fraction} must lie in (0, 1)")

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names in label order (also the class folder names)."""
        return CXR_CLASSES[: self.num_classes]

    def source(self, name: str) -> CXRSource:
        """The source called ``name``."""
        for s in self.sources or ():
            if s.name == name:
                return s
        raise KeyError(f"no source {name!r} in this CXRConfig")

    def marker_rates(self) -> dict[str, dict[str, tuple[float, ...]]]:
        """Per source, the per-class rates of the ``tag`` and ``border`` markers (derived ones filled in)."""
        sources = self.sources or ()
        train = [s for s in sources if not s.external]
        out: dict[str, dict[str, tuple[float, ...]]] = {}
        for s in sources:
            out[s.name] = {}
            for marker in ("tag", "border"):
                given = getattr(s, f"p_{marker}")
                if given is None:
                    pooled = _pooled_rates(train, marker, self.num_classes)
                    rule = s.markers or self.external_markers
                    if rule == "independent":
                        given = (pooled[1],) * self.num_classes
                    elif rule == "anticorrelated":
                        given = tuple(reversed(pooled[0]))
                    else:
                        given = pooled[0]
                out[s.name][marker] = given
        return out

    def key(self) -> str:
        """sha256 (hex) of the canonical JSON of all fields plus the construction's format version."""
        return content_key({"kind": _KIND, "format": FORMAT_VERSION, **asdict(self)})


def _pooled_rates(train: Sequence[CXRSource], marker: str, num_classes: int) -> tuple[tuple[float, ...], float]:
    """Per-class marker rates over the pooled training images, and the overall marker rate."""
    with_marker, per_class = np.zeros(num_classes), np.zeros(num_classes)
    for s in train:
        counts = _allocate(s.n, s.prevalence)
        with_marker += [_round(k * p) for k, p in zip(counts, getattr(s, f"p_{marker}"))]
        per_class += counts
    rates = tuple(float(m / k) if k else 0.0 for m, k in zip(with_marker, per_class))
    return rates, float(with_marker.sum() / max(per_class.sum(), 1))


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _allocate(n: int, weights: Sequence[float]) -> list[int]:
    """``n`` split in proportion to ``weights`` (largest remainder, ties to the lower index)."""
    w = np.asarray(weights, np.float64) / float(sum(weights))
    exact = n * w
    counts = np.floor(exact).astype(int)
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - int(counts.sum())]:
        counts[i] += 1
    return counts.tolist()


# ----------------------------------------------------------------------------------------------------------------------
# Lung masks


class LungMasks(NamedTuple):
    """Non-empty lung masks fitted into the canonical lung box: bool ``masks`` (N, 256, 256) and their zip ``names``."""

    masks: np.ndarray
    names: tuple[str, ...]


def lung_mask_zip() -> Path:
    """Path of torchxrayvision's ``data/semantic_masks_v7labs_lungs.zip``, located without importing the package.

    Raises ``FileNotFoundError`` (naming ``pip install torchxrayvision==1.5.7``) if it is not installed.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / _ZIP_MEMBER
        if path.is_file():
            return path
    where = "is not installed" if spec is None else "has no lung-mask file " + _ZIP_MEMBER
    raise FileNotFoundError(
        f"the chest-X-ray benchmark needs the real lung masks shipped with torchxrayvision, but {_PACKAGE} {where}; "
        f"install it with `{_INSTALL_HINT}` (no download happens at run time)"
    )


def _fit_mask(data: bytes) -> np.ndarray | None:
    """A zip member as a bool BANK×BANK mask fitted into LUNG_BOX (aspect kept, centred); ``None`` if empty."""
    im = Image.open(io.BytesIO(data)).convert("L")
    factor = min(im.size) // (2 * BANK)
    if factor > 1:
        im = im.reduce(factor)
    a = np.asarray(im) >= 128
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    if rows.size == 0:
        return None
    crop = Image.fromarray(a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.uint8) * 255)
    top, bottom, left, right = (round(f * BANK) for f in LUNG_BOX)
    scale = min((bottom - top) / crop.height, (right - left) / crop.width)
    w, h = max(1, round(crop.width * scale)), max(1, round(crop.height * scale))
    out = np.zeros((BANK, BANK), np.uint8)
    y, x = top + (bottom - top - h) // 2, left + (right - left - w) // 2
    out[y : y + h, x : x + w] = np.asarray(crop.resize((w, h), Image.Resampling.BILINEAR))
    return out >= 128


def _zip_members(z: zipfile.ZipFile) -> list[str]:
    return sorted(n for n in z.namelist() if not n.endswith("/"))


_MEMO: dict[tuple[str, int | None], LungMasks] = {}


def load_lung_masks(limit: int | None = None, *, cache_dir: str | os.PathLike[str] | None = None) -> LungMasks:
    """The first ``limit`` (``None``: all 435) non-empty lung masks of the zip, in sorted member order.

    Each mask is cut to its bounding box and fitted, aspect kept, into the canonical lung box of a
    256×256 frame. The full set is cached in memory and in ``cache_dir`` (default ``$RELPROP_CACHE`` or
    ``~/.cache/relprop``) as ``lung-masks-<hash>.npz`` (the hash covers the zip's bytes); a partial set is
    read from that cache when present and otherwise decodes only the members it needs.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} must be >= 1 or None")
    path = lung_mask_zip()
    raw = path.read_bytes()
    zkey = _zip_key(raw)
    if (zkey, limit) in _MEMO:
        return _MEMO[(zkey, limit)]
    full = _MEMO.get((zkey, None))
    cache_file = _bank_file(zkey, cache_dir)
    if full is None:
        full = _read_bank(cache_file)
        if full is not None:
            _MEMO[(zkey, None)] = full
    if full is None:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            masks: list[np.ndarray] = []
            names: list[str] = []
            for name in _zip_members(z):
                if limit is not None and len(masks) >= limit:
                    break
                fitted = _fit_mask(z.read(name))
                if fitted is not None:
                    masks.append(fitted)
                    names.append(name.rsplit("/", 1)[-1])
        if not masks:
            raise ValueError(f"{path} holds no non-empty lung mask")
        result = LungMasks(np.stack(masks), tuple(names))
        if limit is None or len(masks) < limit:  # every member was read: this is the full set
            _MEMO[(zkey, None)] = full = result
            _write_bank(cache_file, result)
    else:
        result = full
    if limit is not None and limit < len(result.names):
        result = LungMasks(result.masks[:limit], result.names[:limit])
    if limit is not None and len(result.names) < limit:
        raise ValueError(f"limit={limit} exceeds the {len(result.names)} non-empty lung masks in {path}")
    result.masks.flags.writeable = False
    _MEMO[(zkey, limit)] = result
    return result


def _zip_key(raw: bytes) -> str:
    """Content hash of the mask bank built from the zip bytes ``raw``."""
    digest = hashlib.sha256(raw).hexdigest()
    return content_key({"kind": "lung_masks", "format": FORMAT_VERSION, "bank": BANK, "box": LUNG_BOX, "zip": digest})


def _bank_file(zkey: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    return resolve_cache_dir(cache_dir) / f"lung-masks-{zkey[:24]}.npz"


def _read_bank(path: Path) -> LungMasks | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            n = int(f["count"])
            masks = np.unpackbits(f["bits"], count=n * BANK * BANK).reshape(n, BANK, BANK).astype(bool)
            names = tuple(str(s) for s in f["names"])
        if len(names) != n or n == 0:
            raise ValueError(f"{n} masks with {len(names)} names")
        return LungMasks(masks, names)
    except Exception as exc:  # any failure to read means: rebuild
        warnings.warn(f"cache file {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it", CacheWarning, 3)
        return None


def _write_bank(path: Path, bank: LungMasks) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, bits=np.packbits(bank.masks), count=len(bank.names), names=np.array(bank.names))
    try:
        atomic_write(path, lambda f: f.write(buf.getvalue()))
    except OSError as exc:
        warnings.warn(f"could not write cache file {path} ({exc}); continuing without cache", CacheWarning, 3)


# ----------------------------------------------------------------------------------------------------------------------
# Plan and rendering


@dataclass(frozen=True)
class CXRSample:
    """One planned image: everything :func:`render_cxr` needs besides the config and the masks.

    ``source_index`` and ``index`` (the image's position in its source) seed the image's random streams;
    ``mask_index`` indexes :attr:`LungMasks.masks`; ``tag``, ``border`` and ``letter`` switch the markers.
    """

    name: str
    source: str
    source_index: int
    index: int
    label: int
    mask_index: int
    tag: bool
    border: bool
    letter: bool = True


def plan_cxr(config: CXRConfig, n_masks: int) -> list[CXRSample]:
    """The images of ``config`` (source by source) for a bank of ``n_masks`` lung masks.

    Masks: a seeded permutation of ``range(n_masks)``; its last ``external_mask_fraction`` (at least one mask)
    goes to the external sources, the rest to the training sources; each image draws one with replacement.
    Labels and markers are allotted in exact (rounded) counts and shuffled.
    """
    sources = config.sources or ()
    rng = np.random.default_rng([config.seed, 0])
    perm = rng.permutation(n_masks)
    has_ext, has_train = any(s.external for s in sources), any(not s.external for s in sources)
    n_ext = min(max(1, _round(config.external_mask_fraction * n_masks)), n_masks - 1) if has_ext and has_train else 0
    pools = {True: perm[n_masks - n_ext :] if has_ext and has_train else perm, False: perm[: n_masks - n_ext]}
    rates = config.marker_rates()
    out = []
    for si, s in enumerate(sources):
        labels = np.repeat(np.arange(config.num_classes), _allocate(s.n, s.prevalence))
        marks = {}
        for marker in ("tag", "border"):
            on = np.zeros(s.n, bool)
            for c, p in enumerate(rates[s.name][marker]):
                members = np.flatnonzero(labels == c)
                on[rng.permutation(members)[: _round(len(members) * p)]] = True
            marks[marker] = on
        order = rng.permutation(s.n)
        mask_ids = rng.choice(pools[s.external], size=s.n)
        for i, j in enumerate(order):
            out.append(
                CXRSample(
                    f"{s.name}_{i:05d}",
                    s.name,
                    si,
                    i,
                    int(labels[j]),
                    int(mask_ids[i]),
                    bool(marks["tag"][j]),
                    bool(marks["border"][j]),
                )
            )
    return out


@lru_cache(maxsize=64)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix of a 1-D Gaussian blur with reflected borders: ``K @ a`` blurs the rows' axis."""
    r = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    m = np.zeros((n, n))
    for d, w in zip(range(-r, r + 1), k):
        j = np.arange(n) + d
        j = np.where(j < 0, -j - 1, j)
        j = np.where(j >= n, 2 * n - j - 1, j).clip(0, n - 1)
        np.add.at(m, (np.arange(n), j), w)
    return m


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    k = _blur_matrix(a.shape[0], round(float(sigma), 4))
    return k @ a @ k.T


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise scaled to unit standard deviation."""
    a = _blur(rng.standard_normal((n, n)), sigma)
    return a / max(float(a.std()), 1e-8)


@lru_cache(maxsize=32)
def _text_alpha(text: str, height: int) -> np.ndarray:
    """``text`` in PIL's default font as an alpha patch in [0, 1], ``height`` pixels tall."""
    try:
        font: Any = ImageFont.load_default(size=48)
    except (ImportError, OSError):  # Pillow without FreeType: the small bitmap font
        font = ImageFont.load_default()
    x0, y0, x1, y1 = font.getbbox(text)
    canvas = Image.new("L", (x1 - x0 + 4, y1 - y0 + 4))
    ImageDraw.Draw(canvas).text((2 - x0, 2 - y0), text, fill=255, font=font)
    canvas = canvas.crop(canvas.getbbox() or (0, 0, 1, 1))
    width = max(1, round(canvas.width * height / canvas.height))
    patch = np.asarray(canvas.resize((width, height), Image.Resampling.LANCZOS), np.float64) / 255.0
    patch.flags.writeable = False
    return patch


def _paste(alpha: np.ndarray, patch: np.ndarray, y: int, x: int) -> None:
    h, w = alpha.shape
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + patch.shape[0], h), min(x + patch.shape[1], w)
    if y1 > y0 and x1 > x0:
        region = patch[y0 - y : y1 - y, x0 - x : x1 - x]
        alpha[y0:y1, x0:x1] = np.maximum(alpha[y0:y1, x0:x1], region)


def _jittered_mask(bank_mask: np.ndarray, size: int, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """The bank mask at ``size`` after a random rotation, scaling and shift about the centre (bool)."""
    im = Image.fromarray(bank_mask.astype(np.uint8) * 255)
    if size != BANK:
        im = im.resize((size, size), Image.Resampling.BOX if size < BANK else Image.Resampling.BILINEAR)
    angle = math.radians(6.0 * jitter * rng.uniform(-1, 1))
    scale = 1.0 + 0.07 * jitter * rng.uniform(-1, 1)
    tx, ty = 0.04 * jitter * size * rng.uniform(-1, 1, size=2)
    a, b = math.cos(angle) / scale, math.sin(angle) / scale
    c = size / 2
    coeffs = (a, b, c - a * (c + tx) - b * (c + ty), -b, a, c + b * (c + tx) - a * (c + ty))
    out = im.transform((size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    return np.asarray(out) >= 128


def _anatomy(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class-independent body and lungs (float, roughly [0, 1])."""
    n = mask.shape[0]
    y, x = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        rows, cols = np.array([n // 4, 3 * n // 4]), np.array([n // 4, 3 * n // 4])
    cy, cx = (rows[0] + rows[-1] + 1) / 2, (cols[0] + cols[-1] + 1) / 2
    h, w = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
    u = np.abs(x - cx) / (0.64 * w * rng.uniform(0.95, 1.08))
    v = np.abs(y - cy - 0.2 * h) / (0.84 * h)
    body = 1.0 / (1.0 + np.exp(((u**3 + v**3) ** (1 / 3) - 1.0) / 0.04))  # a rounded-box torso with shoulders
    spine = np.exp(-(((x - cx) / (0.07 * w)) ** 2))
    period, curve = n / rng.uniform(6.0, 8.0), rng.uniform(0.6, 1.2)
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (y + curve * (x - cx) ** 2 / n) / period + rng.uniform(0, 2 * np.pi))
    phi = rng.uniform(0, 2 * np.pi)
    gradient = 0.07 * ((x - n / 2) * math.cos(phi) + (y - n / 2) * math.sin(phi)) / (n / 2)
    soft = _blur(mask.astype(np.float64), 0.6 * n / 64)
    img = 0.06 + body * (0.56 + 0.1 * spine + 0.04 * ribs) + gradient
    img -= 0.36 * soft
    img += 0.04 * _smooth_noise(rng, n, n / 40) * soft
    return img


def _evidence(mask: np.ndarray, label: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Class evidence, zero outside ``mask``: none, opacity patches, or a pleural effusion."""
    n = mask.shape[0]
    out = np.zeros((n, n))
    ys, xs = np.nonzero(mask)
    if label == 0 or ys.size == 0:
        return out
    y, x = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    if label == 1:  # opacity: 1-3 blurred patches centred inside the lungs, patchy
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(ys.size))
            sy, sx = rng.uniform(0.05, 0.1, size=2) * n
            patch = np.exp(-0.5 * (((y - ys[k] - 0.5) / sy) ** 2 + ((x - xs[k] - 0.5) / sx) ** 2))
            out += rng.uniform(0.6, 1.0) * patch
        out *= 0.75 + 0.25 * np.tanh(_smooth_noise(rng, n, n / 32))
    else:  # pleural effusion: fluid filling the base of one lung under a meniscus that rises laterally
        mid = (xs.min() + xs.max() + 1) / 2
        side = (x < mid) if rng.random() < 0.5 else (x >= mid)
        half = mask & side
        if not half.any():
            half = mask
        hy, hx = np.nonzero(half)
        top, bottom, span = hy.min(), hy.max() + 1, max(float(np.abs(hx + 0.5 - mid).max()), 1.0)
        height = bottom - top
        level = bottom - rng.uniform(0.2, 0.35) * height - 0.12 * height * (np.abs(x - mid) / span) ** 2
        out = rng.uniform(1.0, 1.3) / (1.0 + np.exp(-(y - level) / (0.015 * n))) * half
    return strength * out * mask


def _markers(sample: CXRSample, source: CXRSource, n: int, rng: np.random.Generator) -> np.ndarray:
    """Alpha (0..1) of the sample's markers: laterality letter, ``PORTABLE`` tag, border frame."""
    alpha = np.zeros((n, n))
    if sample.letter and source.letter:
        patch = _text_alpha(source.letter, max(3, round(n / 7)))
        y = round(n * rng.uniform(0.02, 0.05))
        dx = round(n * rng.uniform(0.03, 0.06))
        _paste(alpha, patch, y, dx if source.letter_corner == "top_left" else n - patch.shape[1] - dx)
    if sample.tag:
        patch = _text_alpha(TAG_TEXT, max(3, round(n / 10)))
        y = n - patch.shape[0] - round(n * rng.uniform(0.02, 0.05))
        x = round(rng.uniform(0.08, 0.92) * (n - patch.shape[1]))
        _paste(alpha, patch, y, x)
    if sample.border:
        t = max(1, round(n / 40))
        frame = np.zeros((n, n), bool)
        frame[:t], frame[-t:], frame[:, :t], frame[:, -t:] = True, True, True, True
        alpha = np.maximum(alpha, 0.85 * frame)
    return alpha


class CXRLayers(NamedTuple):
    """One rendered image and its ground truth (all (size, size) arrays).

    ``image``: uint8 image; ``mask``: bool lung mask (the foreground); ``evidence``: float64 class evidence added
    inside the lungs, in units of :attr:`CXRConfig.evidence` (0 outside the lungs and everywhere for class 0);
    ``artefact``: float64 alpha of the markers in [0, 1] (0 inside the lungs); ``clean``: uint8 image of the same
    sample without any marker (equal to ``image`` wherever ``artefact`` is 0).
    """

    image: np.ndarray
    mask: np.ndarray
    evidence: np.ndarray
    artefact: np.ndarray
    clean: np.ndarray


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_cxr_layers(sample: CXRSample, config: CXRConfig, masks: LungMasks) -> CXRLayers:
    """The sample's image with its lung mask, evidence map, marker alpha and marker-free image.

    Independent random streams (from ``config.seed``, the source and the index) drive the lung jitter and
    anatomy, the class evidence, the noise and the marker placement, so changing ``label`` changes pixels
    only inside the mask and switching markers off changes pixels only outside it.
    """
    source = config.source(sample.source)
    n = config.size

    def stream(k: int) -> np.random.Generator:
        return np.random.default_rng([config.seed, 1 + k, sample.source_index, sample.index])

    anatomy_rng = stream(0)
    mask = _jittered_mask(masks.masks[sample.mask_index], n, config.jitter, anatomy_rng)
    img = _anatomy(mask, anatomy_rng)
    evidence = _evidence(mask, sample.label, config.evidence, stream(1))
    img += evidence
    img += config.noise * stream(2).standard_normal((n, n))
    img = (img - 0.5) * source.contrast + 0.5 + source.brightness
    alpha = _markers(sample, source, n, stream(3)) * ~mask
    marked = img * (1.0 - alpha) + 0.97 * alpha
    unit = evidence / config.evidence if config.evidence > 0 else evidence
    return CXRLayers(_to_uint8(marked), mask, unit, alpha, _to_uint8(img))


def render_cxr(sample: CXRSample, config: CXRConfig, masks: LungMasks) -> tuple[np.ndarray, np.ndarray]:
    """The sample's uint8 (size, size) image and bool (size, size) lung mask (the foreground); see
    :func:`render_cxr_layers` for the ground truth besides."""
    layers = render_cxr_layers(sample, config, masks)
    return layers.image, layers.mask


# ----------------------------------------------------------------------------------------------------------------------
# Folders


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, key: str) -> bool:
    """``root`` holds a finished folder for the config hashed ``key``: config.json, index.csv, every file."""
    meta = _read_json(root / "config.json")
    if not isinstance(meta, dict) or meta.get("kind") != _KIND or meta.get("key") != key:
        return False
    try:
        with open(root / "index.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return False
    if len(rows) != meta.get("n_images"):
        return False
    return all((root / r["image"]).is_file() and (root / r["mask"]).is_file() for r in rows)


def _is_replaceable(root: Path) -> bool:
    """An empty folder, or one of ours (possibly for another config)."""
    if not any(root.iterdir()):
        return True
    meta = _read_json(root / "config.json")
    return isinstance(meta, dict) and meta.get("kind") == _KIND


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)


def _write_folder(folder: Path, config: CXRConfig, masks: LungMasks) -> None:
    names = config.class_names
    for c in names:
        (folder / c).mkdir()
        (folder / "masks" / c).mkdir(parents=True)
        for sub in LAYER_FOLDERS.values():
            (folder / c / sub).mkdir()
    index, metadata = [], []
    for s in plan_cxr(config, len(masks.names)):
        layers = render_cxr_layers(s, config, masks)
        rel_image, rel_mask = f"{names[s.label]}/{s.name}.png", f"masks/{names[s.label]}/{s.name}.png"
        rel = {k: f"{names[s.label]}/{sub}/{s.name}.png" for k, sub in LAYER_FOLDERS.items()}
        Image.fromarray(layers.image).save(folder / rel_image, format="PNG")
        Image.fromarray(layers.mask.astype(np.uint8) * 255).save(folder / rel_mask, format="PNG")
        Image.fromarray(_to_uint8(layers.evidence)).save(folder / rel["evidence"], format="PNG")
        Image.fromarray(_to_uint8(layers.artefact)).save(folder / rel["artefact"], format="PNG")
        Image.fromarray(layers.clean).save(folder / rel["clean"], format="PNG")
        src = config.source(s.source)
        index.append((rel_image, rel_mask, names[s.label], s.source))
        metadata.append(
            (
                rel_image,
                names[s.label],
                s.source,
                int(src.external),
                int(s.tag),
                int(s.border),
                src.letter if s.letter else "",
                masks.names[s.mask_index],
                rel["evidence"],
                rel["artefact"],
                rel["clean"],
            )
        )
    _write_csv(folder / "index.csv", INDEX_COLUMNS, index)
    _write_csv(folder / "metadata.csv", METADATA_COLUMNS, metadata)
    meta = {
        "kind": _KIND,
        "format": FORMAT_VERSION,
        "key": config.key(),
        "n_images": len(index),
        "class_names": list(names),
        "marker_rates": config.marker_rates(),
        "config": asdict(config),
    }
    (folder / "config.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")  # written last


def make_cxr_folder(
    root: str | os.PathLike[str], config: CXRConfig | None = None, *, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Write the benchmark of ``config`` (default :class:`CXRConfig`) as an image + mask folder at ``root``.

    The folder is built in a temporary folder next to ``root`` and renamed into place, so ``root`` is never
    half-written; an interrupted build removes its temporary folder. If ``root`` already holds a complete
    folder for the same config (``root/config.json`` carries the content hash) nothing is rebuilt. A
    complete or partial folder of another config is replaced; any other non-empty ``root`` raises
    ``FileExistsError``. ``cache_dir`` is where the decoded lung masks are cached (see
    :func:`load_lung_masks`). Returns ``root``.
    """
    config = CXRConfig() if config is None else config
    if not isinstance(config, CXRConfig):
        raise TypeError(f"config must be a CXRConfig, got {type(config).__name__}")
    root = Path(root).expanduser()
    key = config.key()
    if _is_complete(root, key):
        return root
    if root.exists() and not (root.is_dir() and _is_replaceable(root)):
        raise FileExistsError(f"{root} exists and is not a chest-X-ray benchmark folder; refusing to replace it")
    masks = load_lung_masks(config.n_masks, cache_dir=cache_dir)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        _write_folder(tmp, config, masks)
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700; give the usual permissions
        _publish(tmp, root, key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _publish(tmp: Path, root: Path, key: str) -> None:
    """Move the finished ``tmp`` to ``root``; an old folder there is moved aside first, then deleted."""
    old = None
    if root.exists():
        if _is_complete(root, key):  # finished meanwhile by another process
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.old-"))
        os.replace(root, old / "folder")
    try:
        os.rename(tmp, root)
    except OSError:
        if not _is_complete(root, key):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def cxr_benchmark(config: CXRConfig | None = None, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The benchmark folder of ``config``, built once under ``cache_dir`` (default ``$RELPROP_CACHE`` or
    ``~/.cache/relprop``) as ``cxr-<hash>`` (hash: :meth:`CXRConfig.key`) and reused afterwards."""
    config = CXRConfig() if config is None else config
    if not isinstance(config, CXRConfig):
        raise TypeError(f"config must be a CXRConfig, got {type(config).__name__}")
    root = resolve_cache_dir(cache_dir) / f"cxr-{config.key()[:24]}"
    return make_cxr_folder(root, config, cache_dir=cache_dir)


def load_cxr_annotations(
    root: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]] | None = None
) -> dict[str, np.ndarray]:
    """The ground truth of benchmark images of the folder ``root``, as float32 arrays (N, size, size) in [0, 1]:
    ``evidence`` (class evidence in units of the nominal strength, clipped at 1), ``artefact`` (the markers'
    alpha) and ``clean`` (the image without markers). ``images``: image paths (relative to ``root`` as in
    ``index.csv``, or absolute) in the order wanted; ``None``: every image in ``index.csv`` order.
    """
    root = Path(root)
    path = root / "metadata.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = {r["image"]: r for r in csv.DictReader(f)}
    except OSError as exc:
        raise FileNotFoundError(f"{path}: not readable ({exc}); was {root} written by make_cxr_folder?") from None
    if rows and "evidence" not in next(iter(rows.values())):
        raise ValueError(f"{path} has no ground-truth columns (a folder of an older format); rebuild it")
    if images is None:
        wanted = list(rows)
    else:
        resolved = root.resolve()
        wanted = []
        for im in images:
            p = Path(im)
            wanted.append(p.resolve().relative_to(resolved).as_posix() if p.is_absolute() else p.as_posix())
    missing = [w for w in wanted if w not in rows]
    if missing:
        raise KeyError(f"{len(missing)} image(s) not in {path}, e.g. {missing[0]!r}")
    out: dict[str, np.ndarray] = {}
    for key in LAYER_FOLDERS:
        arrays = [np.asarray(Image.open(root / rows[w][key]).convert("L"), np.float32) / 255.0 for w in wanted]
        out[key] = np.stack(arrays) if arrays else np.zeros((0, 0, 0), np.float32)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Montage


def cxr_montage(root: str | os.PathLike[str], per_class: int = 2, scale: int = 2) -> np.ndarray:
    """Examples of a benchmark folder as a uint8 RGB image: one row per source, ``per_class`` images per class.

    Each example is shown twice: the image, then the image with its lung mask tinted red.
    """
    from ..viz.heatmap import montage

    root = Path(root)
    with open(root / "index.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    meta = _read_json(root / "config.json") or {}
    classes = meta.get("class_names") or sorted({r["label"] for r in rows})
    sources = list(dict.fromkeys(r["source"] for r in rows))
    if not rows:
        raise ValueError(f"{root / 'index.csv'} lists no images")
    side = Image.open(root / rows[0]["image"]).size
    blank = np.full((side[1], side[0], 3), 160, np.uint8)
    tiles: list[np.ndarray] = []
    for source in sources:
        for label in classes:
            picked = [r for r in rows if r["source"] == source and r["label"] == label][:per_class]
            for r in picked:
                grey = np.asarray(Image.open(root / r["image"]).convert("L"))
                lung = np.asarray(Image.open(root / r["mask"]).convert("L")) > 0
                rgb = np.repeat(grey[:, :, None], 3, axis=2)
                tint = rgb.astype(np.float64)
                tint[lung] = 0.55 * tint[lung] + 0.45 * np.array([255.0, 40.0, 40.0])
                tiles += [rgb, (tint + 0.5).astype(np.uint8)]
            tiles += [blank] * (2 * (per_class - len(picked)))
    return montage(tiles, ncols=2 * per_class * len(classes), pad=2, scale=scale)
