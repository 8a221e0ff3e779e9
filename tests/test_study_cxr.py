"""The CXR study's pipeline on tiny sizes (numbers meaningless; structure and resumption) and its metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from relprop.cli import main
from relprop.studies.cxr import macro_f1, roc_auc


def test_quick_cxr_study_writes_report_and_reuses_finished_runs(tmp_path: Path, capsys) -> None:
    out, work = tmp_path / "report", tmp_path / "work"
    argv = ["study", "cxr", "--out", str(out), "--work", str(work), "--quick", "--jobs", "1",
            "--seeds", "0", "1",
            "--methods", "plain", "selective", "--data-cache", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["aggregate"]) == {"plain", "selective"}
    assert len(results["runs"]) == 4
    for run in results["runs"]:
        for split in ("test_id", "external"):
            metrics = run["tests"][split]
            for key in ("accuracy", "f1", "auc", "background_share"):
                assert 0.0 <= metrics[key] <= 1.0, (run["method"], split, key, metrics[key])
    report = (out / "report.md").read_text()
    assert "relprop study cxr --out" in report and "## What the numbers say" in report
    assert "| plain |" in report and "| selective |" in report and "vs plain" in report
    assert (out / "heatmaps_external.png").is_file() and (out / "curves.png").is_file()
    done = work / "selective-seed1" / "evaluation.json"
    stamp = done.stat().st_mtime_ns
    assert main(argv) == 0  # finished runs are reused, not retrained
    assert done.stat().st_mtime_ns == stamp
    assert main(argv[:-3] + ["nonsense", "--data-cache", argv[-1]]) == 2
    assert "unknown method(s) nonsense" in capsys.readouterr().err


def test_roc_auc_matches_pairwise_count_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    for n in (2, 7, 50):
        scores = torch.randint(0, 5, (n,), generator=g).double()  # many ties
        labels = torch.randint(0, 2, (n,), generator=g)
        labels[0], labels[1] = 0, 1
        pos, neg = scores[labels == 1], scores[labels == 0]
        diff = pos[:, None] - neg[None, :]
        brute = float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())
        assert abs(roc_auc(scores, labels) - brute) < 1e-12
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([1, 1])))  # one class only


def test_macro_f1() -> None:
    y = torch.tensor([0, 0, 1, 1])
    assert macro_f1(y, y, 2) == 1.0
    assert abs(macro_f1(torch.tensor([0, 0, 0, 1]), y, 2) - (0.8 + 2 / 3) / 2) < 1e-12
