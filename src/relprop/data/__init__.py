"""Data sets for ISNet experiments: images with foreground masks, cached on disk.

``biased_digits`` builds the digits-with-a-background-artefact benchmark (see :mod:`relprop.data.digits`);
every split is a :class:`MaskedTensorDataset` whose items are ``(image, mask, label)``. ``MaskedImageFolder``
reads real image + mask data sets from folders or a CSV file, with the same items (see :mod:`relprop.data.folders`).
``cxr_benchmark`` writes the chest-X-ray-style shortcut benchmark on real lung masks as such a folder (see
:mod:`relprop.data.cxr`).
"""

from typing import TYPE_CHECKING, Any

from .cache import CacheWarning, default_cache_dir
from .cxr import (
    CXR_CLASSES,
    CXRConfig,
    CXRSample,
    CXRSource,
    LungMasks,
    cxr_benchmark,
    cxr_montage,
    default_cxr_sources,
    load_lung_masks,
    lung_mask_zip,
    make_cxr_folder,
    plan_cxr,
    render_cxr,
)
from .digits import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIRS,
    MNIST_CLASSES,
    SOURCES,
    SPLITS,
    BiasedDigitsConfig,
    MaskedTensorDataset,
    artefact_masks,
    artefact_positions,
    biased_digits,
    digit_box,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)

__all__ = [
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIRS", "MNIST_CLASSES", "SOURCES", "SPLITS", "BiasedDigitsConfig",
    "CacheWarning", "MaskedTensorDataset", "artefact_masks", "artefact_positions", "biased_digits",
    "default_cache_dir", "digit_box", "load_fashion_mnist", "load_mnist", "read_idx",
    "CXR_CLASSES", "CXRConfig", "CXRSample", "CXRSource", "LungMasks", "cxr_benchmark", "cxr_montage",
    "default_cxr_sources", "load_lung_masks", "lung_mask_zip", "make_cxr_folder", "plan_cxr", "render_cxr",
    # relprop.data.folders, imported on first use (so that `python -m relprop.data.folders` runs without
    # runpy's "found in sys.modules" warning)
    "DataError", "DataProblem", "LabelledSubset", "MaskedImageFolder", "check_folder", "split", "split_by_source",
]  # fmt: skip
_FOLDERS = frozenset({"DataError", "DataProblem", "LabelledSubset", "MaskedImageFolder", "check_folder", "split",
                      "split_by_source"})  # fmt: skip

if TYPE_CHECKING:
    from .folders import DataError, DataProblem, LabelledSubset, MaskedImageFolder, check_folder, split, split_by_source


def __getattr__(name: str) -> Any:
    if name in _FOLDERS:
        from . import folders

        return getattr(folders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
