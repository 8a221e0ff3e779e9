"""The ISNet reproduction study's pipeline on tiny sizes (numbers meaningless; structure and resumption)."""

from __future__ import annotations

import json
from pathlib import Path

from relprop.cli import main


def test_quick_isnet_study_writes_report_and_reuses_finished_runs(tmp_path: Path, capsys) -> None:
    out, work = tmp_path / "report", tmp_path / "work"
    argv = ["study", "isnet", "--out", str(out), "--work", str(work), "--quick", "--jobs", "1", "--seeds", "0", "1",
            "--methods", "plain", "stochastic", "--data-cache", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["aggregate"]) == {"plain", "stochastic"}
    assert len(results["runs"]) == 4
    for row in results["aggregate"].values():
        for t in ("test_biased", "test_unbiased", "test_deceiving"):
            acc = row[f"{t}/accuracy"]
            assert len(acc["values"]) == 2 and all(0.0 <= v <= 1.0 for v in acc["values"])
    diag = results["runs"][0]["diagnostics"]
    assert {"logit_gain", "lrp_ratio", "grad_x_input_ratio"} <= set(diag) and diag["n"] == 100
    report = (out / "report.md").read_text()
    assert "Does the heatmap show what the square does?" in report
    assert "| plain |" in report and "| stochastic |" in report
    assert "relprop study isnet --out" in report
    assert (out / "heatmaps_deceiving.png").is_file() and (out / "curves.png").is_file()
    done = work / "stochastic-seed1" / "evaluation.json"
    stamp = done.stat().st_mtime_ns
    assert main(argv) == 0  # finished runs are reused, not retrained
    assert done.stat().st_mtime_ns == stamp
    assert main(argv[:-6] + ["--methods", "nonsense"]) == 2
    assert "unknown method(s) nonsense" in capsys.readouterr().err


def test_common_aggregation_formatting_and_method_check() -> None:
    import pytest

    from relprop.errors import UsageError
    from relprop.studies import common

    records = [
        {"method": m, "seed": s, "tests": {"t": {"accuracy": acc}}, "seconds_per_epoch": 2.0 * (s + 1)}
        for m, s, acc in (("b", 1, 0.7), ("a", 0, 0.25), ("b", 0, 0.5))
    ]
    ordered = common.in_method_order(records, ["b", "a"])
    assert [(r["method"], r["seed"]) for r in ordered] == [("b", 0), ("b", 1), ("a", 0)]
    agg = common.aggregate_runs(ordered, ["a", "b", "c"], ["t"], ["accuracy"])
    assert list(agg) == ["a", "b"]  # no runs of c: no row
    assert agg["b"]["seeds"] == [0, 1] and agg["b"]["t/accuracy"]["values"] == [0.5, 0.7]
    assert abs(agg["b"]["t/accuracy"]["mean"] - 0.6) < 1e-12 and agg["a"]["t/accuracy"]["std"] == 0.0
    assert agg["b"]["seconds_per_epoch"] == 3.0
    assert common.fmt_mean_spread([0.5, 0.7]) == "60.0 ± 14.1"
    assert [j[0] for j in common.by_cost([("plain", 0), ("original", 0), ("dual", 1)])] == ["original", "dual", "plain"]
    with pytest.raises(UsageError, match="unknown method.s. nonsense; choose from a, b"):
        common.check_methods(["a", "nonsense"], {"a": 1, "b": 2})
