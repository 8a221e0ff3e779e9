"""Helpers shared by the command modules: help-text wrapping, the command line as a string, warnings, and the
run folders of ``relprop train`` / ``relprop evaluate``."""

from __future__ import annotations

import json
import shlex
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn

#: the files of a run folder: the data set and model spec (``relprop train``), the test results (``evaluate``)
RUN_FILE = "run.json"
EVAL_FILE = "evaluation.json"


def wrap(text: str) -> str:
    """A sub-command description, filled to 78 columns."""
    return textwrap.fill(text, width=78)


def command_line(argv: Sequence[str]) -> str:
    """``relprop ARGS...`` as a shell command (recorded in the files a command writes)."""
    return "relprop " + shlex.join(argv)


def warn(message: str) -> None:
    """Print ``relprop: warning: <message>`` on stderr (above any progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"relprop: warning: {message}", file=sys.stderr)


def out_folder(path: Path, flag: str = "--out") -> Path:
    """``path`` if it can be the output folder of a command (missing, or a folder); a UsageError naming
    ``flag`` if it is an existing file."""
    from ..errors import UsageError

    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is an existing file, not a folder: pass a folder (it is created if missing)")
    return path


def read_run(run: Path) -> dict[str, Any]:
    """The ``run.json`` of a run folder written by ``relprop train``."""
    from ..errors import UsageError

    path = run / RUN_FILE
    if not path.is_file():
        raise UsageError(f"{path} not found: is {run} a run folder written by `relprop train`?")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, Mapping) or not {"data", "model_spec"} <= set(data):
        raise UsageError(f"{path} lacks the 'data' and 'model_spec' entries relprop writes")
    return dict(data)


def load_run(run: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a run folder (eval mode) and its run.json."""
    from ..errors import UsageError
    from ..isnet.training import load_checkpoint
    from ..models import build_model

    meta = read_run(run)
    ckpt = run / "last.ckpt"
    if not ckpt.is_file():
        raise UsageError(f"{ckpt} not found: train first with `relprop train --out {run}`")
    model, _, _ = load_checkpoint(ckpt, build_model)
    return model.eval(), meta
