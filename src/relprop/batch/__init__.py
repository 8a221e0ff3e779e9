"""Explaining data sets: many image files through one explainer, in batches, with a manifest and resume
(:mod:`.explain_folder`, used by ``relprop explain``), in one process or several (:mod:`.distributed`, Lightning's
ddp); :func:`explain_images` (:mod:`.runner`) chooses."""

from .explain_folder import (
    MANIFEST,
    SETTINGS,
    ImageBatch,
    ImageFiles,
    Job,
    Manifest,
    Summary,
    collate_images,
    heatmap_paths,
    options_fingerprint,
)
from .runner import ACCELERATORS, explain_images

__all__ = [
    "ACCELERATORS", "MANIFEST", "SETTINGS", "ImageBatch", "ImageFiles", "Job", "Manifest", "Summary", "collate_images",
    "explain_images", "heatmap_paths", "options_fingerprint",
]  # fmt: skip
