"""Data sets for ISNet experiments: images with foreground masks, cached on disk.

``biased_digits`` builds the digits-with-a-background-artefact benchmark (see :mod:`relprop.data.digits`);
every split is a :class:`MaskedTensorDataset` whose items are ``(image, mask, label)``.
"""

from .cache import CacheWarning, default_cache_dir
from .digits import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIRS,
    MNIST_CLASSES,
    SOURCES,
    SPLITS,
    BiasedDigitsConfig,
    MaskedTensorDataset,
    artefact_positions,
    biased_digits,
    digit_box,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)

__all__ = [
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIRS", "MNIST_CLASSES", "SOURCES", "SPLITS", "BiasedDigitsConfig",
    "CacheWarning", "MaskedTensorDataset", "artefact_positions", "biased_digits", "default_cache_dir", "digit_box",
    "load_fashion_mnist", "load_mnist", "read_idx",
]  # fmt: skip
