"""Smoke test of benchmarks/bench_isnet_time.py: ``--quick`` runs end to end and reports every (C, method)
with positive, finite times (no assertion on the times themselves)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_isnet_time.py"


@pytest.fixture(scope="module")
def bench():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("bench_isnet_time", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


_ROW = re.compile(
    r"^\s*(\d+)\s+([a-z_]+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)(?:\s+(\S+))?\s*$"
)


def _rows(text: str) -> dict[tuple[int, str], list[str]]:
    rows = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m and not line.startswith("#"):
            rows[(int(m.group(1)), m.group(2))] = [g for g in m.groups()[2:] if g is not None]
    return rows


def test_quick_run_reports_every_method_and_class(bench, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    threads = torch.get_num_threads()
    out_json = tmp_path / "r.json"
    assert bench.main(["--quick", "--breakdown", "--json", str(out_json)]) == 0
    assert torch.get_num_threads() == threads  # restored
    text = capsys.readouterr().out
    assert "torch.set_num_threads(1)" in text
    assert "load average at start" in text and "load average at end" in text
    rows = _rows(text)
    for c in (2, 10):
        for method in bench.METHODS:
            assert (c, method) in rows, f"no row for C={c} {method}\n{text}"
            k, reps, steps, med, lo, hi, cpu, x_plain, x_c = rows[(c, method)][:9]
            assert int(k) == {"plain": 0, "original": c, "dual": 2}.get(method, 1)
            assert int(reps) >= 1 and int(steps) >= 1
            for v in (med, lo, hi, cpu, x_plain, x_c):
                assert math.isfinite(float(v)) and float(v) > 0, (c, method, v)
            assert float(lo) <= float(med) <= float(hi)
    for target in (1, 2, 3):
        assert re.search(rf"^TARGET {target} (PASS|FAIL)( \(on CPU time: (PASS|FAIL)\))?: ", text, re.M), text
    result = json.loads(out_json.read_text())
    assert {(r["classes"], r["method"]) for r in result["rows"]} == set(rows)
    assert all(r["median_ms"] > 0 and math.isfinite(r["median_ms"]) for r in result["rows"])
    assert len(result["targets"]) == 3
    assert all(math.isfinite(v) and v >= 0 for _, _, ph in result["breakdown_ms"] for v in ph.values())


def test_original_can_be_skipped(bench, capsys: pytest.CaptureFixture) -> None:
    argv = ["--quick", "--classes", "2", "5", "--methods", "plain", "original", "--max-original-classes", "2"]
    assert bench.main(argv) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == {(2, "plain"), (2, "original"), (5, "plain")}


def test_peak_memory_in_a_fresh_process(bench, capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--quick", "--memory", "--classes", "2", "--methods", "plain"]) == 0
    rows = _rows(capsys.readouterr().out)
    peak = rows[(2, "plain")][-1]
    assert peak == "-" or (math.isfinite(float(peak)) and float(peak) >= 0), peak


def test_torchvision_backbones_share_weights_across_classes(bench) -> None:
    cfg = bench.Config(model="resnet18", channels=3)
    a, b = bench.make_model(2, cfg), bench.make_model(7, cfg)
    sa, sb = a.state_dict(), b.state_dict()
    assert a.training and b.training and sb["fc.weight"].shape == (7, 512)
    for k, v in sa.items():
        if not k.startswith("fc."):
            assert torch.equal(v, sb[k]), k


def test_summary_puts_large_c_beside_small_c(bench, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_json = tmp_path / "r.json"
    argv = ["--quick", "--models", "cnn", "resnet18", "--classes", "2", "6", "--methods", "plain", "selective",
            "original", "--max-original-classes", "2", "--json", str(out_json)]  # fmt: skip
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "# summary (cnn, resnet18): each method at C=6 against C=2" in text
    assert "torchvision resnet18(weights=None, num_classes=C)" in text and "input 2x3x32x32" in text
    summary = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 8 and parts[0] in ("cnn", "resnet18"):
            summary[(parts[0], parts[1])] = parts[2:]
    for model in ("cnn", "resnet18"):
        lo, hi, ratio, xp0, xp1, xo = summary[(model, "selective")]
        assert math.isclose(float(ratio), float(hi) / float(lo), rel_tol=0.02, abs_tol=0.01)
        assert float(xp0) > 0 and float(xp1) > 0 and float(xo) > 0
        assert summary[(model, "original")][1] == "-"  # original only at C = 2
        assert re.search(rf"^TARGET 1 {model} \(median process CPU\) (PASS|FAIL): ", text, re.M)
    result = json.loads(out_json.read_text())
    assert [r["model"] for r in result["models"]] == ["cnn", "resnet18"]
    rows = {(r["model"], r["method"]): r for r in result["models"][1]["summary"]}
    cpu = {(r["classes"], r["method"]): r["cpu_ms"] for r in result["models"][1]["rows"]}
    want = cpu[(6, "selective")] / cpu[(2, "selective")]
    assert math.isclose(rows[("resnet18", "selective")]["c_max_over_c_min"], want)
