"""The ``relprop`` command line: ``demo``, ``explain``, ``study``, ``train``, ``evaluate``, ``check-data``, ``report``.

One module per command; each has ``add_parser(subparsers)``, which adds its sub-parser with
``set_defaults(run=function(args, argv) -> exit code)``. This package parses arguments and prints; the work is
done by the library (:mod:`relprop.batch`, :mod:`relprop.data`, :mod:`relprop.isnet`, :mod:`relprop.studies`,
:mod:`relprop.viz`). Heavy modules are imported inside the run functions.

Errors are reported here, in :func:`main`, and nowhere else: a user's error (a
:class:`~relprop.errors.RelpropError` such as :class:`~relprop.errors.UsageError`; an ``OSError`` that relprop
raised itself with a message, without an errno, such as "model file not found: m.pt"; a missing optional
package) prints exactly one line ``relprop: error: <message>`` on stderr and exits with status 2; an
interruption prints ``relprop: interrupted: <what to do>`` and exits with 130. Anything else is a bug: its
traceback is printed and the exit status is 1. argparse's usage errors exit with 2 as usual.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from ..errors import RelpropError
from . import check_data, demo, evaluate, explain, report, study, train

#: the command modules, in the order of ``relprop --help``
COMMANDS = (demo, explain, study, train, evaluate, check_data, report)
#: what main reports as ``relprop: error: ...`` (see :func:`is_user_error`; anything else is a bug and keeps its
#: traceback)
EXPECTED_ERRORS: tuple[type[Exception], ...] = (RelpropError,)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix (one ``relprop: error:`` line, exit status 2) rather than a bug: a
    :class:`~relprop.errors.RelpropError`; an ``OSError`` raised by relprop with a message of its own (no errno,
    such as ``FileNotFoundError("model file not found: m.pt")``); a ``ModuleNotFoundError`` of a package other
    than relprop (an optional dependency that is not installed)."""
    if isinstance(exc, EXPECTED_ERRORS):
        return True
    if isinstance(exc, ModuleNotFoundError):
        return bool(exc.name) and (exc.name or "").split(".")[0] != "relprop"
    return isinstance(exc, OSError) and exc.errno is None and bool(str(exc))


def build_parser() -> argparse.ArgumentParser:
    """The ``relprop`` argument parser with every command's sub-parser."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="relprop",
        description="Layer-wise Relevance Propagation heatmaps for PyTorch image classifiers.",
        epilog="Run `relprop COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"relprop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relprop`` command; returns the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(words)
    try:
        return int(args.run(args, words))
    except KeyboardInterrupt as exc:  # TrainingInterrupted and the commands say what was kept and how to resume
        text = _one_line(exc) if str(exc) else ""
        print(f"relprop: interrupted{': ' + text if text else ''}", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_user_error(exc):
            traceback.print_exc()
            print(f"relprop: internal error ({type(exc).__name__}): this is a bug; please report it", file=sys.stderr)
            return 1
        print(f"relprop: error: {_one_line(exc)}", file=sys.stderr)
        return 2


__all__ = ["COMMANDS", "EXPECTED_ERRORS", "build_parser", "is_user_error", "main"]
