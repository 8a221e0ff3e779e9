"""``relprop check-data ROOT [--csv F] [--mask-root D] [--classes A,B]``: every problem of an image + mask data set."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ._common import wrap


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check-data",
        help="list every problem in an image + mask data set (missing masks, size mismatches, ...) without training",
        description=wrap(
            "Open every image and mask of a data set laid out as ROOT/<class>/<image> with masks in "
            "ROOT/masks/<class>/<stem>.<ext>, or listed in a CSV (image, mask, label[, source]), and print each "
            "problem with its file: missing mask, unreadable file, image/mask size mismatch, non-binary mask, "
            "empty class folder, unknown label, duplicate entry. Exit status 0: no problems; 1: problems found; "
            "2: unusable arguments."
        ),
    )
    p.add_argument(
        "root", nargs="?", metavar="ROOT",
        help="data folder ROOT/<class>/<image> with masks in ROOT/masks/<class>/<stem>.<ext>; with --csv, the "
        "folder relative paths start from (default: the CSV's folder)",
    )  # fmt: skip
    p.add_argument("--csv", metavar="FILE", help="CSV file with the columns image, mask, label[, source]")
    p.add_argument("--mask-root", metavar="DIR", help="mask folder <DIR>/<class>/<stem>.<ext> (folder layout)")
    p.add_argument("--classes", metavar="A,B,…", help="class names in index order, comma-separated")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Print the data set's problems one per line (stdout) and their count (stderr): exit status 1; none: a
    summary line and 0."""
    import sys
    from pathlib import Path

    from ..data.folders import check_data
    from ..errors import UsageError

    if args.root is None and args.csv is None:
        raise UsageError("give a data folder ROOT or --csv FILE")
    if args.csv is not None and not Path(args.csv).is_file():
        raise UsageError(f"--csv {args.csv}: file not found (a CSV with the columns image, mask, label[, source])")
    if args.root is not None and not Path(args.root).is_dir():
        what = "is a file, not a folder" if Path(args.root).exists() else "not found"
        raise UsageError(
            f"data folder {args.root} {what}: give the folder ROOT that holds ROOT/<class>/<image> and "
            "ROOT/masks/<class>/<stem>.<ext> (or --csv FILE)"
        )
    if args.mask_root is not None and not Path(args.mask_root).is_dir():
        raise UsageError(f"--mask-root {args.mask_root}: folder not found")
    classes = None if not args.classes else [c.strip() for c in args.classes.split(",")]
    found = check_data(args.root, csv=args.csv, mask_root=args.mask_root, classes=classes, progress=True)
    for problem in found.problems:
        print(problem)
    if found.problems:
        n = len(found.problems)
        print(f"{n} problem{'s' * (n != 1)}", file=sys.stderr)
        return 1

    def count(n: int, noun: str, plural: str) -> str:
        return f"{n} {noun if n == 1 else plural}"

    sources = len({s.source for s in found.samples})
    counts = [count(len(found.samples), "image", "images"), count(len(found.class_names), "class", "classes")]
    print(f"{', '.join(counts)}, {count(sources, 'source', 'sources')}, no problems")
    return 0
