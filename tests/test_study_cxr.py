"""The CXR-style reproduction study: its pipeline on tiny sizes (numbers meaningless; structure, resumption,
the lung-only reference, the target check) and its metrics."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from relprop.studies import cxr
from relprop.studies.cxr import (
    QUICK,
    RunSpec,
    StudySettings,
    ablated,
    build,
    evaluate_model,
    load_splits,
    macro_f1,
    roc_auc,
    target_check,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cxr-cache"))


def test_quick_study_writes_report_and_reuses_finished_runs(tmp_path: Path, cache: str, capsys) -> None:
    torch.set_num_threads(1)
    out, work = tmp_path / "report", tmp_path / "work"
    argv = ["--out", str(out), "--work", str(work), "--quick", "--jobs", "1", "--seeds", "0",
            "--methods", "lung_only", "plain", "selective", "--ablations", "P0.5", "--data-cache", cache]  # fmt: skip
    assert cxr.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["aggregate"]["small_resnet"]
    assert set(rows) == {"lung_only", "plain", "selective", "selective+P0.5"}
    assert len(results["runs"]) == 4
    for run in results["runs"]:
        assert set(run["tests"]) == {"test_id", "external_markers", "external_acquisition"}
        for split, metrics in run["tests"].items():
            for key in ("accuracy", "f1", "auc", "background_share"):
                assert 0.0 <= metrics[key] <= 1.0, (run["label"], split, key, metrics[key])
            assert (run["method"] == "lung_only") == math.isnan(metrics["artefact_effect"])
        assert run["settings"]["P"] == (0.5 if run["ablation"] == "P0.5" else 0.7)
    assert [c["method"] for c in results["targets"]] == ["selective"]
    report = (out / "report.md").read_text()
    for text in ("python -m relprop.studies.cxr --out", "## Target check", "## Ablations", "| P0.5 (P = 0.5) |",
                 "| lung_only |", "external_acquisition", "What the heatmaps show", "## Compute"):  # fmt: skip
        assert text in report, text
    assert (out / "heatmaps_external_small_resnet.png").is_file() and (out / "curves.png").is_file()
    done = next((work / "small_resnet").glob("selective+P0.5-*-seed0")) / "evaluation.json"
    stamp = done.stat().st_mtime_ns
    assert cxr.main(argv) == 0  # finished runs are reused, not retrained
    assert done.stat().st_mtime_ns == stamp
    assert cxr.main([*argv[:-2], "--ablations", "nonsense", "--data-cache", cache]) == 2
    assert "unknown method(s) or ablation(s) nonsense" in capsys.readouterr().err
    # more epochs: the same run folder resumes from its checkpoint and trains on; fewer is refused
    longer = ["--out", str(out), "--work", str(work), "--quick", "--jobs", "1", "--seeds", "0", "--methods", "plain",
              "--ablations", "--data-cache", cache]  # fmt: skip
    plain = next((work / "small_resnet").glob("plain-*-seed0"))
    first = json.loads((plain / "evaluation.json").read_text())
    assert cxr.main([*longer, "--epochs", "2"]) == 0
    again = json.loads((plain / "evaluation.json").read_text())
    assert len(again["history"]) == 2 and again["history"][0] == first["history"][0]
    assert cxr.main([*longer, "--epochs", "1"]) == 2
    assert "trained for 2 epochs" in capsys.readouterr().err
    assert again["checkpoint"] == "best"  # the lowest-validation-loss checkpoint by default, as the authors
    assert cxr.main([*longer, "--epochs", "2", "--checkpoint", "last"]) == 0  # re-evaluated, not retrained
    last = json.loads((plain / "evaluation.json").read_text())
    assert last["checkpoint"] == "last" and last["history"] == again["history"]


def test_relprop_study_cxr_has_the_study_options(tmp_path: Path, cache: str, capsys) -> None:
    from relprop.cli import main

    argv = ["study", "cxr", "--out", str(tmp_path / "o"), "--work", str(tmp_path / "w"), "--quick",
            "--methods", "plain", "nonsense", "--data-cache", cache]  # fmt: skip
    assert main(argv) == 2
    assert "unknown method(s) or ablation(s) nonsense" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_tuned_c1_c2_come_from_a_separate_plain_run(tmp_path: Path, cache: str) -> None:
    torch.set_num_threads(1)
    settings = replace(QUICK, tune_epochs=1, match="authors")
    run = RunSpec("selective", "small_resnet", 0, settings)
    record = cxr.run_one(("selective", run, str(tmp_path), cache, "cpu"))
    tuned = json.loads((run.folder(tmp_path) / "tune.json").read_text())
    assert 0 < tuned["C1"] <= tuned["C2"] and list(record["c1c2"]) == [tuned["C1"], tuned["C2"]]
    loss = record["config"]["loss"]
    assert (loss["C1"], loss["C2"]) == (tuned["C1"], tuned["C2"]) and loss["guard"] is True
    assert record["config"]["match"] == "authors"
    assert (run.folder(tmp_path) / "tune" / "last.ckpt").is_file()  # the plain run is kept apart, not resumed


def test_splits_hold_out_each_external_hospital_with_its_ground_truth(cache: str) -> None:
    splits = load_splits(QUICK, cache)
    assert set(splits) == {"train", "val", "test_id", "external_markers", "external_acquisition"}
    paths = {name: set(s.paths) for name, s in splits.items()}
    names = list(paths)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not paths[a] & paths[b], (a, b)
    hospital = {name: {Path(p).name.rsplit("_", 1)[0] for p in ps} for name, ps in paths.items()}
    assert hospital["external_markers"] == {"hospital_c"} and hospital["external_acquisition"] == {"hospital_d"}
    assert hospital["train"] | hospital["val"] | hospital["test_id"] == {"hospital_a", "hospital_b"}
    for s in splits.values():
        assert s.evidence.shape == s.artefact.shape == s.clean.shape == s.images.shape
        assert not (s.evidence & (s.masks == 0)).any() and not (s.artefact & (s.masks == 1)).any()
        has_evidence = s.evidence.flatten(1).any(1)
        assert torch.equal(has_evidence, s.labels == 1)  # opacity images only
        diff = (s.images - s.clean).abs()  # markers change the image only where their alpha is
        assert diff[~s.artefact].max() <= 0.1 + 1 / 255 and diff[s.artefact].max() > 0.2
    lung = splits["test_id"].dataset(lung_only=True)
    x, m, _ = lung[0]
    assert (x[m == 0] == 0).all() and torch.equal(x[m == 1], splits["test_id"].images[0][m == 1])


def test_lung_only_evaluation_ignores_the_background(cache: str) -> None:
    torch.manual_seed(0)
    split = load_splits(QUICK, cache)["external_markers"]
    model = build(cxr.model_spec("small_resnet", QUICK)).eval()
    noisy = replace(split, images=torch.where(split.masks > 0, split.images, torch.rand_like(split.images)))
    a = evaluate_model(model, split, lung_only=True, device="cpu")
    b = evaluate_model(model, noisy, lung_only=True, device="cpu")
    assert a == pytest.approx(b, nan_ok=True)
    c = evaluate_model(model, noisy, lung_only=False, device="cpu")
    assert c["background_share"] != pytest.approx(b["background_share"])


def test_densenet121_gets_one_input_channel() -> None:
    model = build(cxr.model_spec("densenet121", QUICK))
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1 and model(torch.rand(2, 1, 32, 32)).shape == (2, 2)


def test_run_keys_and_ablations_change_one_thing() -> None:
    s = StudySettings()
    for name in cxr.ABLATIONS:
        changed = {k for k, v in vars(ablated(s, name)).items() if v != getattr(s, k)}
        assert changed == {cxr.ABLATIONS[name][0]}, name
    assert ablated(s, "epochs2x").epochs == 2 * s.epochs
    a = RunSpec("selective", "small_resnet", 0, s)
    assert a.key() == RunSpec("selective", "small_resnet", 1, s).key() != RunSpec("selective", "small_resnet", 0,
                                                                                    ablated(s, "P0.5")).key()
    assert a.folder(Path("w")) != RunSpec("selective", "small_resnet", 1, s).folder(Path("w"))


def _row(values: list[float]) -> dict[str, object]:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return {"seeds": list(range(len(values))),
            "external_markers/accuracy": {"mean": mean, "std": std, "values": values}}  # fmt: skip


def test_target_check_compares_with_plain_spread_and_lung_only() -> None:
    agg = {"small_resnet": {
        "plain": _row([0.60, 0.62, 0.64]),  # mean 62, std 2
        "lung_only": _row([0.80, 0.80, 0.80]),
        "selective": _row([0.76, 0.77, 0.78]),  # +15 above plain, 3 below lung_only: met
        "stochastic": _row([0.63, 0.64, 0.65]),  # +2 above plain: not more than the std (2.0 vs 1.0 → 2.0)
        "dual": _row([0.70, 0.72, 0.74]),  # +10 but 8 below lung_only
    }}  # fmt: skip
    checks = {c["method"]: c for c in target_check(agg)}
    assert set(checks) == {"selective", "stochastic", "dual"}
    assert checks["selective"]["met"] and checks["selective"]["vs_plain"] == pytest.approx(15.0)
    assert checks["selective"]["gap_to_lung_only"] == pytest.approx(3.0)
    assert not checks["stochastic"]["above_plain"] and checks["stochastic"]["spread"] == pytest.approx(2.0)
    assert checks["dual"]["above_plain"] and not checks["dual"]["within_5_of_lung_only"] and not checks["dual"]["met"]


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
