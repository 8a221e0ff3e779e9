"""Run the code blocks of docs/getting-started.md, so that its pictures come from the code it shows.

    .venv/bin/python scripts/docs_getting_started.py     (scripts/docs.sh runs it before building the site)

Every ```python block runs, in order, in one namespace; then every ```bash line that starts with ``relprop `` runs
with this interpreter's ``relprop`` (its folder first on PATH). Both run in docs/generated/getting-started/ (a
generated, git-ignored folder, emptied first), where the page's images point. Exits non-zero if a block fails.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "getting-started.md"
OUT = ROOT / "docs" / "generated" / "getting-started"
FENCE = re.compile(r"^```(?P<lang>\w+)[^\n]*\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(text: str, lang: str) -> list[str]:
    return [m["body"] for m in FENCE.finditer(text) if m["lang"] == lang]


def main() -> int:
    start = time.perf_counter()
    text = PAGE.read_text(encoding="utf-8")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    here = os.getcwd()
    os.chdir(OUT)
    try:
        namespace: dict[str, object] = {"__name__": "__getting_started__"}
        for i, code in enumerate(blocks(text, "python"), start=1):
            print(f"docs_getting_started: python block {i}", flush=True)
            exec(compile(code, f"{PAGE.name} (python block {i})", "exec"), namespace)
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        for code in blocks(text, "bash"):
            for line in code.splitlines():
                command = line.split("#", 1)[0].strip()
                if not command.startswith("relprop "):
                    continue
                print(f"docs_getting_started: {command}", flush=True)
                rc = subprocess.call(shlex.split(command), env=env)
                if rc != 0:
                    print(f"docs_getting_started: '{command}' exited with status {rc}", file=sys.stderr)
                    return 1
    finally:
        os.chdir(here)
    made = sorted(str(p.relative_to(OUT)) for p in OUT.rglob("*.png"))
    took = time.perf_counter() - start
    print(f"docs_getting_started: {len(made)} pictures in {OUT.relative_to(ROOT)} ({took:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
