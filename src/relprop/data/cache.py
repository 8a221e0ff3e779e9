"""On-disk cache for generated data sets: content-hashed names, atomic writes, corrupt files rebuilt.

The cache folder is, in order: the ``cache_dir`` argument, ``$RELPROP_CACHE``, ``~/.cache/relprop``.
Files are written to a temporary file in the same folder and moved into place with :func:`os.replace`, so a
reader sees either no file or a complete one; an unreadable file is reported with a :class:`CacheWarning`
and treated as missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_torch_save
from ..errors import CacheWarning

__all__ = ["CacheWarning", "atomic_torch_save", "content_key", "default_cache_dir", "load_cached", "resolve_cache_dir"]

ENV_VAR = "RELPROP_CACHE"


def default_cache_dir() -> Path:
    """``$RELPROP_CACHE`` if set and non-empty, else ``~/.cache/relprop``."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "relprop"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """``cache_dir`` if given, else :func:`default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def content_key(payload: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``payload`` (sorted keys, no whitespace)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def load_cached(path: str | os.PathLike[str]) -> Any | None:
    """The object saved at ``path`` (tensors and plain containers only), or ``None`` if there is no file.

    A file that exists but cannot be read is reported with a :class:`CacheWarning` and gives ``None``.
    """
    p = Path(path)
    if not p.is_file():
        return None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to read means: rebuild
        warnings.warn(f"cache file {p} is unreadable ({type(exc).__name__}: {exc}); rebuilding it", CacheWarning, 2)
        return None
