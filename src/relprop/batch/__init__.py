"""Explaining data sets: many image files through one explainer, in batches, with a manifest and resume
(:mod:`.explain_folder`, used by ``relprop explain``)."""

from .explain_folder import (
    MANIFEST,
    SETTINGS,
    ImageBatch,
    ImageFiles,
    Job,
    Manifest,
    Summary,
    collate_images,
    explain_images,
    heatmap_paths,
    options_fingerprint,
)

__all__ = [
    "MANIFEST", "SETTINGS", "ImageBatch", "ImageFiles", "Job", "Manifest", "Summary", "collate_images",
    "explain_images", "heatmap_paths", "options_fingerprint",
]  # fmt: skip
