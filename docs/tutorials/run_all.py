"""Run every tutorial script into one folder (the documentation site shows the figures they write).

    python docs/tutorials/run_all.py --out docs/howto/figures --quick

Each tutorial runs in this process by default (torch and relprop are imported once), or in its own Python
process with --isolate. A progress line is printed per tutorial; a failure names the tutorial and its script,
the others still run, and the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: the tutorials, in the order they run (cheap ones first); each is HERE/<name>.py with main(argv)
TUTORIALS = (
    "composites",
    "explain_torchvision_timm",
    "rlrp",
    "evaluate",
    "gpu_and_many",
    "train_isnet",
    "report",
)


def _run_in_process(name: str, argv: list[str]) -> None:
    spec = importlib.util.spec_from_file_location(f"relprop_tutorial_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.main(argv)
    except SystemExit as exc:  # argparse errors and explicit exits
        if exc.code not in (None, 0):
            raise RuntimeError(f"exited with status {exc.code}") from exc


def _run_isolated(name: str, argv: list[str]) -> None:
    rc = subprocess.call([sys.executable, str(HERE / f"{name}.py"), *argv])
    if rc != 0:
        raise RuntimeError(f"exited with status {rc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder every tutorial writes its figures to")
    parser.add_argument("--quick", action="store_true", help="small settings (all tutorials in a few minutes)")
    parser.add_argument("--only", nargs="+", choices=TUTORIALS, metavar="NAME", help="run only these tutorials")
    parser.add_argument("--isolate", action="store_true", help="run each tutorial in its own Python process")
    args = parser.parse_args(argv)
    names = [n for n in TUTORIALS if args.only is None or n in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    tutorial_argv = ["--out", str(args.out), *(["--quick"] if args.quick else [])]
    failed: list[str] = []
    total = time.perf_counter()
    for k, name in enumerate(names, start=1):
        print(f"[{k}/{len(names)}] tutorial {name} (docs/tutorials/{name}.py) ...", flush=True)
        start = time.perf_counter()
        try:
            (_run_isolated if args.isolate else _run_in_process)(name, tutorial_argv)
        except Exception as exc:
            traceback.print_exc()
            failed.append(name)
            print(f"[{k}/{len(names)}] FAILED: tutorial {name} (docs/tutorials/{name}.py): "
                  f"{type(exc).__name__}: {exc}", flush=True)  # fmt: skip
        else:
            print(f"[{k}/{len(names)}] ok: {name} in {time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - total
    if failed:
        print(f"{len(failed)} of {len(names)} tutorials FAILED: {', '.join(failed)} ({seconds:.0f} s)", file=sys.stderr)
        return 1
    print(f"all {len(names)} tutorials ran in {seconds:.0f} s; figures in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
