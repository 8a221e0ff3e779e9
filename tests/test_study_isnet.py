"""The ISNet reproduction study: its pipeline on tiny sizes (numbers meaningless; structure, resumption), the
method/mode/recipe plumbing, the target check and ablation tables, and the digits ResNet18 backbone."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
import torch

from relprop.cli import main
from relprop.errors import UsageError
from relprop.studies import isnet as study


def test_quick_isnet_study_writes_report_and_reuses_finished_runs(tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    out, work = tmp_path / "report", tmp_path / "work"
    head = ["study", "isnet", "--out", str(out), "--work", str(work), "--quick", "--jobs", "1", "--seeds", "0", "1",
            "--backbones", "digits_cnn", "--data-cache", str(tmp_path / "cache")]  # fmt: skip
    argv = head + ["--methods", "plain", "selective"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["aggregate"]) == {"digits_cnn"}
    # 2 methods x 2 seeds, plus QUICK's ablation (selective, lr / 10, seed 0)
    assert len(results["runs"]) == 5
    assert sum(1 for r in results["runs"] if r["ablation"] == "lr") == 1
    for agg in results["aggregate"].values():
        assert set(agg) == {"plain", "selective"}
        for row in agg.values():
            assert row["seeds"] == [0, 1]
            for t in study.TEST_SPLITS:
                acc = row[f"{t}/accuracy"]
                assert len(acc["values"]) == 2 and all(0.0 <= v <= 1.0 for v in acc["values"])
            assert "test_deceiving/artefact_shown" in row and "test_deceiving/tiling" in row
    dec = results["runs"][0]["tests"]["test_deceiving"]
    assert {"artefact_shown", "artefact_shown_gi", "artefact_effect", "tiling", "spread"} <= set(dec)
    assert dec["shortcut_n"] == study.QUICK.diagnostics_n
    lr_runs = [r for r in results["runs"] if r["ablation"] == "lr"]
    assert all(r["config"]["lr"] == pytest.approx(study.QUICK.lr / 10) for r in lr_runs)
    assert {t["method"] for t in results["targets"]["digits_cnn"]} == {"plain", "selective"}
    assert len(results["ablations"]) == 1 and results["ablations"][0]["change"] == "lr 0.01 → 0.001"
    report = (out / "report.md").read_text()
    for heading in ("### digits_cnn", "## Target check", "## Ablations", "## Time", "## The authors' full settings"):
        assert heading in report, heading
    assert sum(line.startswith("| selective |") for line in report.splitlines()) == 1
    assert "| digits_cnn | selective | 0 | lr 0.01 → 0.001 |" in report
    assert "relprop study isnet --out" in report
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert {"heatmaps_digits_cnn.png", "curves_digits_cnn.png"} <= {p.name for p in out.glob("*.png")}
    done = next((work / "digits_cnn").glob("selective-seed1-*")) / "evaluation.json"
    stamp = done.stat().st_mtime_ns
    assert main(argv) == 0  # finished runs are reused, not retrained
    assert done.stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert main(head + ["--methods", "plain", "selective", "stochastic", "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "7 runs, 2 to train" in listing and listing.count(" done") == 5  # stochastic is new
    assert main(head + ["--methods", "nonsense"]) == 2
    assert "unknown method 'nonsense'" in capsys.readouterr().err
    assert main(head + ["--methods", "selective@theirs"]) == 2
    assert "unknown mode 'theirs'" in capsys.readouterr().err
    # the ResNet18 backbone through the Python entry, per-backbone methods, no ablations
    res = study.run_study(tmp_path / "r18", methods={"digits_resnet18": ["stochastic"]}, seeds=[0],
                          settings=replace(study.QUICK, backbones=("digits_resnet18",), ablate=()), work=work, jobs=1,
                          cache_dir=str(tmp_path / "cache"))  # fmt: skip
    assert list(res["aggregate"]["digits_resnet18"]) == ["stochastic"] and not res["ablations"]
    assert res["runs"][0]["model_spec"]["name"] == "digits_resnet18"
    assert (tmp_path / "r18" / "heatmaps_digits_resnet18.png").is_file()
    assert "## Ablations" not in (tmp_path / "r18" / "report.md").read_text()


def test_method_names_modes_and_train_configs() -> None:
    assert study.parse_method("selective-label@authors") == ("selective-label", "authors")
    assert study.parse_method("stochastic") == ("stochastic", "ours") == study.parse_method("stochastic@ours")
    assert study.label("selective", "ours") == "selective" and study.label("dual", "authors") == "dual@authors"
    with pytest.raises(UsageError, match="plain has no LRP maps"):
        study.parse_method("plain@authors")
    with pytest.raises(UsageError, match="no dual variant"):
        study.parse_method("dual@authors")
    s0 = replace(study.StudySettings(), tune_epochs=0)
    assert study.StudySettings().foreground == "l2" and study.StudySettings().tune_epochs == 5  # the authors' recipe
    assert study.train_config("stochastic", 0, s0).loss.foreground == "l2"
    assert study.train_config("stochastic", 0, replace(s0, foreground="hybrid")).loss.foreground == "hybrid"
    with pytest.raises(UsageError, match="unknown method 'x'.*unknown mode 'y'"):
        study.check_methods(["x", "dual@y", "dual"])
    s = replace(study.StudySettings(), tune_epochs=0)
    c = study.train_config("selective-label", 3, s)
    assert (c.method, c.selective_class, c.seed, c.epochs, c.batch_size, c.lr, c.P) == (
        "selective", "label", 3, s.epochs, s.batch_size, s.lr, s.P)  # fmt: skip
    assert study.train_config("rrr", 0, s).rrr_lambda == s.rrr_lambda
    from relprop.isnet import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    if "match" in known:  # helper E's TrainConfig: the authors' mode is a field
        c = study.train_config("selective@authors", 0, s)
        assert c.match == "authors" and c.loss.guard
        c = study.train_config("selective", 0, s)
        assert c.match != "authors" and not c.loss.guard
    else:
        with pytest.raises(UsageError, match="TrainConfig.match='authors'"):
            study.train_config("selective@authors", 0, s)
    if "tune_epochs" in known:
        assert study.train_config("stochastic", 0, replace(s, tune_epochs=5)).tune_epochs == 5
        assert study.train_config("plain", 0, replace(s, tune_epochs=5)).tune_epochs != 5  # no maps, no tuning
    else:
        with pytest.raises(UsageError, match="tune_epochs=5"):
            study.train_config("stochastic", 0, replace(s, tune_epochs=5))


def test_ablations_change_one_element_and_runs_are_keyed_by_everything() -> None:
    s = replace(study.StudySettings(), tune_epochs=0)  # runs without TrainConfig.tune_epochs too
    changed = {}
    for element in study.ABLATIONS:
        m, b, s2 = study.ablated(element, "stochastic", "digits_cnn", s)
        diff = {k for k, v in asdict(s2).items() if v != asdict(s)[k]}
        changed[element] = (m, b, diff)
    assert changed["lr"][2] == {"lr"} and changed["P"][2] == {"P"} and changed["epochs"][2] == {"epochs"}
    assert changed["tuning"][2] == {"tune_epochs"} and changed["foreground"][2] == {"foreground"}
    assert changed["mode"] == ("stochastic@authors", "digits_cnn", set())
    assert changed["backbone"] == ("stochastic", "digits_resnet18", set())
    assert study.ablated("mode", "stochastic@authors", "digits_cnn", s)[0] == "stochastic"
    assert study.ablated("tuning", "x", "digits_cnn", replace(s, tune_epochs=3))[2].tune_epochs == 0
    key = study.run_key("digits_cnn", "selective", 0, s)
    assert key == study.run_key("digits_cnn", "selective", 0, replace(study.StudySettings(), tune_epochs=0))
    others = {study.run_key("digits_cnn", "selective", 1, s), study.run_key("digits_resnet18", "selective", 0, s),
              study.run_key("digits_cnn", "selective-label", 0, s),
              study.run_key("digits_cnn", "selective", 0, replace(s, n_train=100)),
              study.run_key("digits_cnn", "selective", 0, replace(s, width=8))}  # fmt: skip
    assert key not in others and len(others) == 5
    jobs = study.plan({"digits_cnn": ["plain", "selective-label"], "digits_resnet18": ["original", "selective-label"]},
                      [0, 1, 2], replace(s, ablate=("selective-label",), ablations=("lr", "backbone")), Path("w"), "")
    names = sorted((j.backbone, j.method, j.seed, j.ablation) for j in jobs)
    assert ("digits_resnet18", "original", 0, "") in names and ("digits_resnet18", "original", 1, "") not in names
    assert sum(1 for n in names if n[3] == "lr") == 2
    assert not any(n[3] == "backbone" for n in names)  # each backbone's ablation lands on the other's main run
    assert len(names) == 3 + 3 + 1 + 3 + 2
    assert jobs[0].method == "original"  # most expensive first


def _row(b: float, d: float, seeds: int = 3) -> dict:
    return {"test_biased/accuracy": {"mean": b}, "test_deceiving/accuracy": {"mean": d}, "seeds": list(range(seeds))}


def test_target_check_counts_points_lost_and_collapse() -> None:
    agg = {"plain": _row(1.0, 0.05), "selective": _row(0.96, 0.92), "stochastic@authors": _row(0.98, 0.80),
           "dual": _row(0.99, 0.7), "rrr": _row(0.9, 0.1)}  # fmt: skip
    rows = {r["method"]: r for r in study.target_check(agg)}
    assert set(rows) == {"plain", "selective", "stochastic@authors"}
    assert rows["plain"]["met"] and rows["selective"]["met"]
    assert rows["selective"]["lost"] == pytest.approx(4.0) and rows["selective"]["missed_by"] == 0
    assert not rows["stochastic@authors"]["met"] and rows["stochastic@authors"]["missed_by"] == pytest.approx(13.0)
    assert not study.target_check({"plain": _row(1.0, 0.25)})[0]["met"]


def test_ablation_rows_pair_each_change_with_its_base_run() -> None:
    s = replace(study.StudySettings(), backbones=("digits_cnn",), ablate=("stochastic",), ablations=("lr", "mode"))

    def rec(method: str, settings: study.StudySettings, b: float, d: float, ablation: str = "") -> dict:
        tests = {"test_biased": {"accuracy": b}, "test_deceiving": {"accuracy": d, "artefact_shown": 0.1}}
        saved = json.loads(json.dumps(asdict(settings)))  # as read back from evaluation.json
        return {"backbone": "digits_cnn", "method": method, "seed": 0, "settings": saved, "tests": tests,
                "ablation": ablation}  # fmt: skip

    records = [rec("stochastic", s, 0.97, 0.80), rec("stochastic", replace(s, lr=s.lr / 10), 0.95, 0.93, "lr"),
               rec("stochastic@authors", s, 0.9, 0.6)]  # fmt: skip
    rows = {r["element"]: r for r in study.ablation_rows(records, s)}
    assert rows["lr"]["moved"] == pytest.approx(13.0) and rows["lr"]["gap"] == 0.0
    assert rows["lr"]["change"] == "lr 0.01 → 0.001"
    assert rows["mode"]["d1"] == pytest.approx(60.0) and rows["mode"]["gap"] == pytest.approx(25.0)
    assert rows["mode"]["change"] == "stochastic → stochastic@authors"


def test_digits_resnet18_is_torchvision_resnet18_with_a_small_canvas_stem() -> None:
    from torchvision.models import resnet18
    from torchvision.models.resnet import BasicBlock, ResNet

    from relprop.isnet import ISNetMaps
    from relprop.models import BACKBONES, build_model, digits_resnet18

    assert "digits_resnet18" in BACKBONES
    full = digits_resnet18(width=64)
    tv = resnet18(weights=None, num_classes=10)
    assert isinstance(full, ResNet) and sum(isinstance(m, BasicBlock) for m in full.modules()) == 8
    # same layers as torchvision's resnet18 except the stem (3x3, 1 channel instead of 7x7, 3 channels)
    n_full = sum(p.numel() for p in full.parameters())
    n_tv = sum(p.numel() for p in tv.parameters())
    assert n_tv - n_full == 64 * 3 * 7 * 7 - 64 * 1 * 3 * 3
    small = build_model({"name": "digits_resnet18", "num_classes": 10, "width": 8, "stem_stride": 2})
    assert small.conv1.stride == (2, 2) and small.conv1.in_channels == 1 and small.fc.in_features == 64
    assert isinstance(small.maxpool, torch.nn.Identity)
    torch.manual_seed(0)
    x = torch.rand(3, 1, 40, 40)
    feats = small.layer4(small.layer3(small.layer2(small.layer1(small.relu(small.bn1(small.conv1(x)))))))
    assert feats.shape == (3, 64, 3, 3)
    assert small(x).shape == (3, 10)
    assert float(small.bn1.weight.detach().min()) == 1.0 and float(small.bn1.bias.detach().abs().max()) == 0.0
    with pytest.raises(ValueError, match="width=0"):
        digits_resnet18(width=0)
    maps = ISNetMaps(small.train(), "selective")
    mask = torch.zeros(3, 1, 40, 40)
    mask[..., 6:34, 6:34] = 1
    logits, heat = maps(x, torch.tensor([0, 1, 2]))
    assert logits.shape == (3, 10) and heat.shape[0] == 3 and heat.shape[-2:] == (40, 40)
    assert bool(torch.isfinite(heat).all()) and float(heat.abs().sum()) > 0


def test_common_aggregation_formatting_and_method_check() -> None:
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
    assert common.accelerator_of("cpu") == ("cpu", 1) and common.accelerator_of("cuda") == ("gpu", 1)
    assert common.accelerator_of("cuda:1") == ("gpu", [1])
    with pytest.raises(UsageError, match="--device 'tpu'"):
        common.accelerator_of("tpu")
