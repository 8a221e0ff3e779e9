"""``relprop study rlrp --quick``: the R-LRP study runs end to end on tiny sizes and writes a complete report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("skimage")

from relprop.cli import main  # noqa: E402
from relprop.studies import rlrp as study  # noqa: E402


def _numbers(obj: object) -> list[float]:
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in _numbers(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in _numbers(x)]
    if isinstance(obj, bool) or obj is None:
        return [math.nan] if obj is None else []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    return []


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    out = root / "out"
    threads = torch.get_num_threads()
    code = main(["study", "rlrp", "--quick", "--out", str(out), "--cache", str(root / "cache"), "--threads", "1"])
    assert code == 0
    assert torch.get_num_threads() == threads  # restored
    return out


def test_report_and_figures_exist(quick_run: Path) -> None:
    report = (quick_run / "report.md").read_text()
    assert report.startswith("# Relative LRP")
    assert "relprop study rlrp --quick" in report
    pngs = sorted(p.name for p in quick_run.glob("*.png"))
    for name in ("curves.png", "robustness.png", "sensitivity.png", "grid_lenet5.png", "grid_simplecnn.png"):
        assert name in pngs
        assert (quick_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (quick_run / name).is_file(), f"report links to a missing figure {name}"
    assert not list(quick_run.glob(".*.tmp")), "temporary files left behind"
    # the residual-addition and stand-alone-BatchNorm diagnostics (resnet18 and a tiny DenseNet in --quick)
    assert report.count("Diagnostic (not a method of the study)") == 2


def test_tables_have_every_method_and_finite_numbers(quick_run: Path) -> None:
    report = (quick_run / "report.md").read_text()
    for m in study.MAIN_METHODS:
        rows = [line for line in report.splitlines() if line.startswith(f"| {m.label} |")]
        rows += [line for line in report.splitlines() if line.startswith(f"| **{m.label}** |")]
        assert len(rows) >= 12, f"{m.label} is missing from some tables ({len(rows)} rows)"
        for row in rows:
            assert "nan" not in row.split("|", 2)[2], row
    data = json.loads((quick_run / "results.json").read_text())
    for key, res in data["models"].items():
        for m in study.MAIN_METHODS:
            values = res["methods"][m.key]
            for measure in ("morf", "lerf", "noise", "wnoise", "nudge", "sanity_top", "sanity_all", "class_r"):
                assert math.isfinite(values[measure]), (key, m.key, measure)
            assert values["nonfinite"] == 0, (key, m.key)
    assert all(math.isfinite(v) for v in _numbers(data["full_size"]))
    for res in data["full_size"].values():
        assert res["f32"]["rlrp"] == 0 and res["bf16"]["rlrp"] == 0


def test_simple_cnn_training_is_deterministic_and_cached(tmp_path: Path) -> None:
    settings = study.TrainSettings(train_per_class=20, test_per_class=20, epochs=1, batch_size=50)
    a, info_a = study.train_simple_cnn(settings, tmp_path)
    b, _ = study.train_simple_cnn(settings, None)  # trained again, not from the cache
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    cached = list(tmp_path.glob("simplecnn-*.pt"))
    assert len(cached) == 1
    c, info_c = study.train_simple_cnn(settings, tmp_path)
    assert info_c["cached"] == 1.0 and info_a["cached"] == 0.0
    assert info_c["test_accuracy"] == info_a["test_accuracy"]
    other = study.TrainSettings(train_per_class=20, test_per_class=20, epochs=1, batch_size=50, seed=1)
    assert study.settings_key(other) != study.settings_key(settings)


def test_sign_free_split_shares_relevance_by_magnitude() -> None:
    u, v = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([-2.0, 3.0, 0.0])
    R = torch.tensor([1.0, 2.0, 5.0])
    ru, rv = study.SignFreeSplitRLRP().add([u, v], u + v, R)
    assert torch.allclose(ru, torch.tensor([0.5, 0.5, 0.0])) and torch.allclose(rv, torch.tensor([0.5, 1.5, 0.0]))
    assert torch.allclose((ru + rv)[:2], R[:2])  # conserved where a term is non-zero; nothing from 0 + 0
    composite = study.sign_free_split_rlrp()
    assert isinstance(composite.add, study.SignFreeSplitRLRP)
    assert all(isinstance(rule, study.SignFreeSplitRLRP) for _, rule in composite.layer_map)


def test_ranks_share_ties_and_leave_out_nan() -> None:
    from relprop.studies.rlrp.report import ranks

    values = {"a": 1.0, "b": 1.0, "c": 0.5, "d": math.nan}
    assert ranks(values, higher_better=True) == {"a": 1, "b": 1, "c": 3}
    assert ranks(values, higher_better=False) == {"c": 1, "a": 2, "b": 2}
