"""The how-to pages and their tutorial scripts fit together (parsed, not run; scripts/docs.sh runs them all).

- every page in docs/howto includes at least one tutorial script, and every script it includes exists, with the
  named snippet sections it quotes;
- every figure or generated text a page shows is written by one of the tutorial scripts;
- every tutorial script has main(argv) and the --out and --quick options, and run_all.py runs each of them;
- one cheap tutorial (composites) runs in quick mode and writes what its page shows.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HOWTO = ROOT / "docs" / "howto"
TUTORIALS = ROOT / "docs" / "tutorials"
PAGES = sorted(HOWTO.glob("*.md"))
SCRIPTS = sorted(p for p in TUTORIALS.glob("*.py") if p.name != "run_all.py")

SNIPPET = re.compile(r'^\s*--8<--\s+"([^"]+)"\s*$', re.MULTILINE)
IMAGE = re.compile(r"!\[[^\]]*\]\((figures/[^)\s]+)\)")
SECTION = re.compile(r"#\s*--8<--\s*\[(start|end):([\w-]+)\]")


def _snippets(page: Path) -> list[tuple[str, str | None]]:
    """(path, section or None) of every snippet a page includes."""
    out = []
    for ref in SNIPPET.findall(page.read_text(encoding="utf-8")):
        path, _, section = ref.partition(":")
        out.append((path, section or None))
    return out


def _scripts_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in SCRIPTS)


def _options(tree: ast.Module) -> set[str]:
    """The option strings of every add_argument call in a script."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            found |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return found


def test_the_pages_and_scripts_exist() -> None:
    assert len(PAGES) >= 7, [p.name for p in PAGES]
    assert len(SCRIPTS) >= 7, [p.name for p in SCRIPTS]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_includes_existing_tutorial_script(page: Path) -> None:
    snippets = _snippets(page)
    scripts = {path for path, _ in snippets if path.startswith("docs/tutorials/") and path.endswith(".py")}
    assert scripts, f"{page.name} includes no tutorial script (--8<-- \"docs/tutorials/NAME.py\")"
    for path, section in snippets:
        if not path.startswith("docs/tutorials/"):
            continue
        file = ROOT / path
        assert file.is_file(), f"{page.name} includes {path}, which does not exist"
        if section is not None:
            marks = SECTION.findall(file.read_text(encoding="utf-8"))
            assert ("start", section) in marks and ("end", section) in marks, (
                f"{page.name} includes section {section!r} of {path}, which has no start/end markers for it"
            )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_shows_only_what_a_tutorial_writes(page: Path) -> None:
    """Figures (![..](figures/X.png)) and generated snippets (docs/howto/figures/X) come from a script."""
    text = page.read_text(encoding="utf-8")
    generated = [ref for ref, _ in _snippets(page) if ref.startswith("docs/howto/figures/")]
    names = [Path(ref).name for ref in IMAGE.findall(text)] + [Path(ref).name for ref in generated]
    scripts = _scripts_text()
    for name in names:
        assert f'"{name}"' in scripts, f"{page.name} shows {name}, but no tutorial script writes a file of that name"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_has_main_out_and_quick(script: Path) -> None:
    tree = ast.parse(script.read_text(encoding="utf-8"), filename=str(script))
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert mains, f"{script.name} has no top-level main(argv)"
    assert [a.arg for a in mains[0].args.args] == ["argv"], f"{script.name}: main must take (argv)"
    options = _options(tree)
    assert {"--out", "--quick"} <= options, f"{script.name} options {sorted(options)} lack --out or --quick"
    assert ast.get_docstring(tree), f"{script.name} has no module docstring (its --help text)"
    guard = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert guard, f"{script.name} has no `if __name__ == '__main__':` guard"


def test_run_all_runs_every_script_and_every_script_has_a_page() -> None:
    spec = importlib.util.spec_from_file_location("relprop_tutorials_run_all", TUTORIALS / "run_all.py")
    assert spec is not None and spec.loader is not None
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    assert sorted(run_all.TUTORIALS) == sorted(p.stem for p in SCRIPTS)
    included = {path for page in PAGES for path, _ in _snippets(page)}
    for script in SCRIPTS:
        assert f"docs/tutorials/{script.name}" in included, f"no page in docs/howto includes {script.name}"


def test_run_all_names_a_failing_tutorial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("relprop_tutorials_run_all2", TUTORIALS / "run_all.py")
    assert spec is not None and spec.loader is not None
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    broken = tmp_path / "broken.py"
    broken.write_text("def main(argv):\n    raise ValueError('no data here')\n")
    run_all.HERE = tmp_path
    run_all.TUTORIALS = ("broken",)
    assert run_all.main(["--out", str(tmp_path / "out"), "--quick"]) == 1
    captured = capsys.readouterr()
    assert "FAILED: tutorial broken" in captured.out and "no data here" in captured.out
    assert "1 of 1 tutorials FAILED: broken" in captured.err


def test_composites_tutorial_runs_quick(tmp_path: Path) -> None:
    """The cheapest tutorial, run: real LeNet-5 on three real digits, every preset."""
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("relprop_tutorial_composites_test", TUTORIALS / "composites.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path), "--quick", "--device", "cpu"])
    from PIL import Image

    for name in ("composites_grid.png", "composites_epsilon.png"):
        with Image.open(tmp_path / name) as im:
            assert im.width > 400 and im.height > 150, (name, im.size)
    table = (tmp_path / "composites_table.txt").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == module.PRESETS
    # every LRP preset conserves relevance up to ε and the biases on this network; the gradients do not
    cons = {r.split("`")[1]: float(r.split("|")[2].split()[0]) for r in rows}
    assert all(cons[p] < 0.5 for p in module.PRESETS if p not in module.CONSERVES), cons
    summary = (tmp_path / "composites_summary.txt").read_text()
    assert "ZBox" in summary and "Gamma" in summary and "conv1" in summary
