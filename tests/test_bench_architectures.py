"""Smoke test of benchmarks/bench_architectures.py: rows are well formed, failures are recorded with their
message, and a resumed run measures nothing again. No assertion on whether a model passes, nor on times."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_architectures.py"


@pytest.fixture(scope="module")
def bench():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("bench_architectures", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


class _Counting(nn.Module):
    """Changes its own buffer on every forward: whatever the engine does, the row must come back 'fail'."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class _NotAClassifier(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_row(row: dict) -> None:
    assert row["status"] in ("ok", "fail", "timeout")
    assert row["key"] and row["suite"] and row["model"] and row["composite"]
    if row["status"] == "ok":
        assert row["ratio"] > 0 and row["explain_s"] > 0 and row["gradient_s"] > 0
    else:
        assert row["error_type"] and row["error"].startswith(row["error_type"] + ": ")
        assert len(row["error"]) > len(row["error_type"]) + 2


def test_torchvision_model_row_and_resume(bench, tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    argv = ["--suite", "torchvision", "--models", "squeezenet1_0", "--composites", "zero", "--size", "64",
            "--reps", "1", "--out", str(out)]  # fmt: skip
    summary = bench.main(argv)
    rows = _rows(out)
    assert len(rows) == 1
    _check_row(rows[0])
    assert (rows[0]["suite"], rows[0]["model"], rows[0]["composite"]) == ("torchvision", "squeezenet1_0", "zero")
    assert summary["suites"]["torchvision"]["counts"]["zero"]["of"] == 1

    again = bench.main(argv)  # resumed: nothing is measured again
    assert len(_rows(out)) == 1
    assert again["run"]["rows_new"] == 0
    assert again["suites"]["torchvision"]["models"]["squeezenet1_0"]["zero"]["status"] == rows[0]["status"]


def test_failures_are_recorded(bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.jsonl"
    models = [("custom", "counting", _Counting), ("custom", "not_a_classifier", _NotAClassifier)]
    summary = bench.main(["--composites", "zero,rlrp", "--size", "16", "--reps", "1", "--out", str(out)], models=models)
    rows = _rows(out)
    assert sorted((r["model"], r["composite"]) for r in rows) == [
        ("counting", "rlrp"), ("counting", "zero"), ("not_a_classifier", "rlrp"), ("not_a_classifier", "zero"),
    ]  # fmt: skip
    for r in rows:
        _check_row(r)
        assert r["status"] == "fail"
    counts = summary["suites"]["custom"]["counts"]
    assert counts["zero"]["ok"] == 0 and counts["zero"]["fail"] == 2 and counts["zero"]["of"] == 2
    blockers = summary["suites"]["custom"]["blockers"]
    assert sum(b["count"] for b in blockers) == 4
    text = capsys.readouterr().out
    assert "custom zero: 0 of 2 ok" in text and "blockers" in text
