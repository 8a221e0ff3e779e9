"""Packaging: the version is written once (relprop.__version__) and the wheel ships the typing marker and templates.

The wheel is built from a copy of pyproject.toml, README.md and src/ with the environment's setuptools (no
isolated build environment, nothing downloaded; about 5 s). CI also runs ``python -m build`` and ``twine check``.
"""

from __future__ import annotations

import email
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import relprop

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_installed_metadata_version_is_relprop_version() -> None:
    assert importlib.metadata.version("relprop") == relprop.__version__


def test_version_is_written_only_in_init() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"], "pyproject.toml must not repeat the version"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "relprop.__version__"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tree / "dist"
    code = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=tree, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("relprop-*.whl")
    return path


def test_wheel_ships_py_typed_and_templates(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "relprop/py.typed" in names
    templates = {n for n in names if n.startswith("relprop/viz/templates/")}
    on_disk = {f"relprop/viz/templates/{p.name}" for p in (ROOT / "src/relprop/viz/templates").iterdir() if p.is_file()}
    assert on_disk and templates == on_disk
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)


def test_wheel_metadata_version_and_entry_point(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        info = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(z.read(info))
        entry_points = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert metadata["Name"] == "relprop"
    assert metadata["Version"] == relprop.__version__
    assert wheel.name == f"relprop-{relprop.__version__}-py3-none-any.whl"
    assert "relprop = relprop.cli:main" in entry_points
