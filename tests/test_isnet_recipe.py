"""The authors' training recipe: C1/C2 tuning in a separate plain run, the RecipeWarning about ISNet training
from a network that already learned the shortcut, the new TrainConfig fields and the `relprop train` flags."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from relprop.errors import RecipeWarning
from relprop.isnet import ISNetMaps, TrainConfig, fit, load_checkpoint, relevance_totals
from relprop.isnet.checkpoints import CHECKPOINT_NAME, METRICS_NAME, TUNING_NAME, load_weights
from relprop.isnet.config import ResumeConflict
from relprop.isnet.fitting import TOTALS_NAME, TUNING_DIR, check_resume
from relprop.isnet.loss import HeatmapLossConfig
from relprop.isnet.step import build_maps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _isnet_train_worker import BoxDataset, plain_model  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _c1_c2(totals: torch.Tensor) -> tuple[float, float]:
    """The authors' formula, written out: C1 = max(μ/5, μ − 3σ), C2 = min(25·C1, μ + 3σ), σ the sample std."""
    t = totals.double()
    mu = float(t.sum() / t.numel())
    sigma = float(((t - mu) ** 2).sum() / (t.numel() - 1)) ** 0.5
    c1 = max(mu / 5, mu - 3 * sigma)
    return c1, min(25 * c1, mu + 3 * sigma)


def test_tuning_trains_a_separate_copy_and_the_isnet_starts_from_the_initial_model(tmp_path: Path) -> None:
    data = BoxDataset(48)
    config = TrainConfig(method="selective", epochs=1, batch_size=16, seed=1, tune_epochs=2)
    model = plain_model(0)
    initial = _state(model)
    result = fit(model, data, None, config, out_dir=tmp_path / "tuned", progress=False)
    record = json.loads((tmp_path / "tuned" / TUNING_NAME).read_text())
    tuning_history = json.loads((tmp_path / "tuned" / TUNING_DIR / METRICS_NAME).read_text())["history"]
    assert len(tuning_history) == 2 and tuning_history[0]["train_heatmap"] is None  # a plain run of 2 epochs
    # the same ISNet training with these C1/C2 given by hand, from the same initial weights, without tuning
    by_hand = plain_model(0)
    assert all(torch.equal(initial[k], v) for k, v in by_hand.state_dict().items())
    loss = HeatmapLossConfig(C1=record["C1"], C2=record["C2"])
    manual = TrainConfig(method="selective", epochs=1, batch_size=16, seed=1, loss=loss)
    fit(by_hand, data, None, manual, out_dir=tmp_path / "manual", progress=False)
    for k, v in by_hand.state_dict().items():
        assert torch.equal(result.model.state_dict()[k], v), k  # trained from the initial model, not the tuned one
    tuned_net = load_checkpoint(tmp_path / "tuned" / TUNING_DIR / CHECKPOINT_NAME, lambda spec: plain_model(5))[0]
    assert any(not torch.equal(tuned_net.state_dict()[k], v) for k, v in by_hand.state_dict().items())
    assert record["C1"] != 1.0 and result.tuning is not None and result.tuning["C1"] == record["C1"]


def test_c1_c2_are_the_formula_on_the_recorded_whole_map_totals(tmp_path: Path) -> None:
    data = BoxDataset(40)
    config = TrainConfig(method="stochastic", epochs=1, batch_size=10, seed=2, tune_epochs=2, hidden_layers=("4",))
    fit(plain_model(3), data, None, config, out_dir=tmp_path, progress=False, max_steps=0)
    record = json.loads((tmp_path / TUNING_NAME).read_text())
    totals = torch.load(tmp_path / TUNING_DIR / TOTALS_NAME, weights_only=True)["input"]
    assert totals.dtype == torch.float64 and totals.numel() == len(data)  # one per sample of the last epoch
    c1, c2 = _c1_c2(totals)
    assert record["C1"] == pytest.approx(c1, rel=1e-12) and record["C2"] == pytest.approx(c2, rel=1e-12)
    assert record["n"] == 40 and record["tune_on"] == "map"
    metrics = json.loads((tmp_path / METRICS_NAME).read_text())
    assert metrics["tuning"]["C1"] == record["C1"] and "config" not in metrics["tuning"]
    assert metrics["config"]["loss"]["C1"] == record["C1"] and metrics["config"]["loss"]["C2"] == record["C2"]
    assert metrics["config"]["tune_epochs"] == 2
    # deep supervision: the hidden layer gets C1/C2 of its own, from its own totals
    layer = torch.load(tmp_path / TUNING_DIR / TOTALS_NAME, weights_only=True)["4"]
    assert layer.numel() == len(data) and not torch.allclose(layer, totals)
    c1, c2 = _c1_c2(layer)
    assert record["layers"]["4"]["C1"] == pytest.approx(c1, rel=1e-12)
    assert record["layers"]["4"]["C2"] == pytest.approx(c2, rel=1e-12)
    assert metrics["config"]["hidden_bounds"] == {"4": [record["layers"]["4"]["C1"], record["layers"]["4"]["C2"]]}


def test_recorded_totals_are_whole_map_sums_of_the_tuning_networks_maps(tmp_path: Path) -> None:
    data = BoxDataset(30)
    # a learning rate so small that the weights are the same during the recorded epoch and after it
    config = TrainConfig(method="selective", epochs=1, batch_size=10, seed=2, lr=1e-12, tune_epochs=1)
    fit(plain_model(3), data, None, config, out_dir=tmp_path, progress=False, max_steps=0)
    totals = torch.load(tmp_path / TUNING_DIR / TOTALS_NAME, weights_only=True)["input"]
    net = load_checkpoint(tmp_path / TUNING_DIR / CHECKPOINT_NAME, lambda spec: plain_model(7))[0]
    x = torch.stack([data[i][0] for i in range(len(data))])
    _, maps = ISNetMaps(net, "selective")(x, create_graph=False)
    whole = relevance_totals(maps)
    by_hand = maps.detach().abs().double().sum((2, 3, 4)).mean(1)
    assert torch.allclose(whole, by_hand)
    # the epoch visits the samples in a shuffled order: compare the sorted values
    assert torch.allclose(totals.sort().values, whole.sort().values, rtol=1e-5)
    fg = relevance_totals(maps, data.masks)
    assert not torch.allclose(totals.sort().values, fg.sort().values, rtol=1e-3)


def test_tune_on_foreground_records_foreground_totals(tmp_path: Path) -> None:
    data = BoxDataset(30)
    config = TrainConfig(
        method="selective", epochs=1, batch_size=10, seed=2, lr=1e-12, tune_epochs=1, tune_on="foreground"
    )
    fit(plain_model(3), data, None, config, out_dir=tmp_path, progress=False, max_steps=0)
    totals = torch.load(tmp_path / TUNING_DIR / TOTALS_NAME, weights_only=True)["input"]
    net = load_checkpoint(tmp_path / TUNING_DIR / CHECKPOINT_NAME, lambda spec: plain_model(7))[0]
    x = torch.stack([data[i][0] for i in range(len(data))])
    _, maps = ISNetMaps(net, "selective")(x, create_graph=False)
    fg = (maps.detach().abs() * data.masks[:, None]).double().sum((2, 3, 4)).mean(1)
    assert torch.allclose(totals.sort().values, fg.sort().values, rtol=1e-5)


def test_a_resumed_run_does_not_tune_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import relprop.isnet.fitting as fitting

    data = BoxDataset(32)
    config = TrainConfig(method="selective", epochs=2, batch_size=16, seed=1, tune_epochs=1)
    first = fit(plain_model(0), data, None, config, out_dir=tmp_path, progress=False, max_steps=1)
    assert not first.finished
    written = (tmp_path / TUNING_NAME).read_bytes()

    def no_tuning(*args: object, **kwargs: object) -> None:
        raise AssertionError("the resumed run tuned C1/C2 again")

    monkeypatch.setattr(fitting, "_tune", no_tuning)
    resumed = fit(plain_model(9), data, None, config, out_dir=tmp_path, progress=False)
    assert resumed.finished and len(resumed.history) == 2
    assert (tmp_path / TUNING_NAME).read_bytes() == written
    assert resumed.tuning is not None and resumed.tuning["C1"] == json.loads(written)["C1"]
    # a resume with another tuning setting is refused, naming the record
    other = TrainConfig(method="selective", epochs=2, batch_size=16, seed=1, tune_epochs=1, tune_on="foreground")
    with pytest.raises(ResumeConflict, match="tuning.json.*tune_on"):
        fit(plain_model(9), data, None, other, out_dir=tmp_path, progress=False)
    (tmp_path / CHECKPOINT_NAME).unlink()  # stopped between the tuning and the first ISNet checkpoint
    with pytest.raises(ResumeConflict, match="tuning.json.*tune_on"):
        check_resume(tmp_path, plain_model(9), other)
    assert check_resume(tmp_path, plain_model(9), config) is None
    # a run trained without tuning cannot be resumed with tuning
    untuned = tmp_path / "untuned"
    fit(plain_model(0), data, None, TrainConfig(method="selective", epochs=1, batch_size=16), out_dir=untuned,
        progress=False)  # fmt: skip
    with pytest.raises(ResumeConflict, match="tune_epochs"):
        fit(plain_model(0), data, None, TrainConfig(method="selective", epochs=2, batch_size=16, tune_epochs=1),
            out_dir=untuned, progress=False)  # fmt: skip


def test_a_tuning_run_stopped_inside_its_recorded_epoch_resumes_to_the_same_totals(tmp_path: Path) -> None:
    from relprop.isnet.checkpoints import read_checkpoint
    from relprop.isnet.fitting import _fit

    data = BoxDataset(40)
    isnet = TrainConfig(method="selective", epochs=1, batch_size=8, seed=4, tune_epochs=2, hidden_layers=("4",))
    plain = TrainConfig(method="plain", epochs=2, batch_size=8, seed=4)
    common = {"progress": False, "model_spec": None, "accelerator": "cpu", "devices": 1, "strategy": "auto",
              "tuning": isnet}  # fmt: skip
    _fit(plain_model(0), data, None, plain, out_dir=tmp_path / "whole", resume=True, max_steps=-1, **common)
    whole = read_checkpoint(tmp_path / "whole" / CHECKPOINT_NAME)["relprop"]["tuning_totals"]
    # 5 steps per epoch: stop after step 7 (inside the recorded second epoch), then resume
    _fit(plain_model(0), data, None, plain, out_dir=tmp_path / "split", resume=True, max_steps=7, **common)
    part = read_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)["relprop"]
    assert part["batch"] == 2 and part["tuning_totals"]["input"].numel() == 16
    _fit(plain_model(8), data, None, plain, out_dir=tmp_path / "split", resume=True, max_steps=-1, **common)
    split = read_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)["relprop"]["tuning_totals"]
    assert set(split) == set(whole) == {"input", "4"}
    for name in whole:
        assert whole[name].numel() == len(data)
        assert torch.equal(split[name], whole[name]), name  # nothing lost or counted twice, same order


def test_ddp_tuning_records_every_processs_samples_once(tmp_path: Path) -> None:
    """strategy="ddp" (gloo) on 2 CPU processes with batch 8 each against one process with batch 16: the same
    global batches, so the same totals (gathered from both processes) and C1/C2."""
    import subprocess

    from _isnet_train_worker import ddp_tune_config

    worker = Path(__file__).resolve().parent / "_isnet_train_worker.py"
    proc = subprocess.Popen(
        [sys.executable, str(worker), "ddp_tune", str(tmp_path / "ddp")], cwd=worker.parent.parent,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    fit(plain_model(2), BoxDataset(), None, ddp_tune_config(16), out_dir=tmp_path / "one", progress=False,
        max_steps=0)  # fmt: skip
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    for name in ("input", "4"):
        ddp = torch.load(tmp_path / "ddp" / TUNING_DIR / TOTALS_NAME, weights_only=True)[name]
        one = torch.load(tmp_path / "one" / TUNING_DIR / TOTALS_NAME, weights_only=True)[name]
        assert ddp.numel() == one.numel() == len(BoxDataset())
        assert torch.allclose(ddp.sort().values, one.sort().values, rtol=1e-5), name
    ddp_record = json.loads((tmp_path / "ddp" / TUNING_NAME).read_text())
    one_record = json.loads((tmp_path / "one" / TUNING_NAME).read_text())
    assert ddp_record["C1"] == pytest.approx(one_record["C1"], rel=1e-5)
    assert ddp_record["layers"]["4"]["C2"] == pytest.approx(one_record["layers"]["4"]["C2"], rel=1e-5)


def _recipe_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, RecipeWarning)]


def test_recipe_warning_for_plain_first_schedules_and_plain_checkpoint_starts(tmp_path: Path) -> None:
    data = BoxDataset(16)
    base = {"epochs": 1, "batch_size": 16, "seed": 0}
    with pytest.warns(RecipeWarning, match=r"P = 0.*epochs 0\.\.1.*deceiving 0\.0 %.*tune_epochs") as record:
        fit(plain_model(0), data, None, TrainConfig(method="selective", P={0: 0.0, 2: 0.7}, **base),
            out_dir=tmp_path / "schedule", progress=False, max_steps=0)  # fmt: skip
    assert [w.filename for w in record if issubclass(w.category, RecipeWarning)] == [__file__]  # the caller's line
    fit(plain_model(0), data, None, TrainConfig(method="plain", **base), out_dir=tmp_path / "plain", progress=False)
    plain_net, _, _ = load_checkpoint(tmp_path / "plain" / CHECKPOINT_NAME, lambda spec: plain_model(4))
    with pytest.warns(RecipeWarning, match=r"weights of a plain run.*plain.*last\.ckpt.*89\.5 % / 74\.7 %"):
        fit(plain_net, data, None, TrainConfig(method="stochastic", **base), out_dir=tmp_path / "from_plain",
            progress=False, max_steps=0)  # fmt: skip
    other = plain_model(5)
    load_weights(other, tmp_path / "plain")  # a run folder: its last.ckpt
    with pytest.warns(RecipeWarning, match="weights of a plain run"):
        fit(other, data, None, TrainConfig(method="selective", **base), out_dir=tmp_path / "from_plain2",
            progress=False, max_steps=0)  # fmt: skip
    # and not otherwise: constant P, a fresh model, a model from an ISNet run, a plain run from a plain run,
    # an ISNet schedule that never has P = 0, tuning (its plain run is a copy)
    fit(plain_model(0), data, None, TrainConfig(method="selective", **base), out_dir=tmp_path / "isnet",
        progress=False)  # fmt: skip
    isnet_net, _, _ = load_checkpoint(tmp_path / "isnet" / CHECKPOINT_NAME, lambda spec: plain_model(4))
    quiet = [
        (plain_model(1), TrainConfig(method="selective", **base)),
        (isnet_net, TrainConfig(method="selective", **base)),
        (plain_net, TrainConfig(method="plain", **base)),
        (plain_model(1), TrainConfig(method="selective", P={0: 0.3, 1: 0.7}, **base)),
        (plain_model(1), TrainConfig(method="selective", tune_epochs=1, **base)),
    ]
    for i, (model, config) in enumerate(quiet):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(model, data, None, config, out_dir=tmp_path / f"quiet{i}", progress=False, max_steps=0)
        assert _recipe_warnings(caught) == [], (i, config)


def test_new_fields_round_trip_and_old_configs_load() -> None:
    config = TrainConfig(
        method="dual", match="relprop", hidden_layers=["0", "3"], d_layers=0.5, hidden_bounds={"3": [0.5, 4]},
        tune_epochs=5, tune_on="foreground", P={0: 0.3, 4: 0.7}, clip=None,
        loss=HeatmapLossConfig(foreground="l2", guard=True, C1=2.0, C2=30.0),
    )  # fmt: skip
    assert config.hidden_layers == ("0", "3") and config.hidden_bounds == {"3": (0.5, 4.0)}
    d = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig.from_dict(d) == config
    assert config.hidden_loss_configs()["3"].C1 == 0.5 and config.hidden_loss_configs()["0"].C1 == 2.0
    assert config.hidden_loss_configs()["3"].foreground == "l2"
    # a config written before these fields existed
    old = TrainConfig().to_dict()
    for key in ("match", "hidden_layers", "d_layers", "hidden_bounds", "tune_epochs", "tune_on"):
        old.pop(key)
    old["loss"].pop("foreground")
    old["loss"].pop("guard")
    assert TrainConfig.from_dict(old) == TrainConfig()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"match": "theirs"}, r"TrainConfig.match='theirs': choose one of relprop, authors"),
        ({"hidden_layers": "layer1"}, "tuple of module names"),
        ({"hidden_layers": ("a", "a")}, "twice"),
        ({"hidden_bounds": {"b": (1, 2)}}, "'b' is not one of hidden_layers"),
        ({"hidden_layers": ("a",), "hidden_bounds": {"a": (3, 2)}}, "0 < C1 <= C2"),
        ({"d_layers": 1.5}, "d_layers=1.5"),
        ({"tune_epochs": -1}, "tune_epochs=-1"),
        ({"tune_on": "fg"}, "tune_on='fg'"),
    ],
)
def test_new_fields_are_checked(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        TrainConfig(**kwargs)


def test_an_old_run_folder_without_the_new_fields_still_resumes(tmp_path: Path) -> None:
    data = BoxDataset(32)
    config = TrainConfig(method="selective", epochs=1, batch_size=16, seed=1)
    fit(plain_model(0), data, None, config, out_dir=tmp_path, progress=False)
    path = tmp_path / CHECKPOINT_NAME
    ckpt = torch.load(path, weights_only=True)
    for key in ("match", "hidden_layers", "d_layers", "hidden_bounds", "tune_epochs", "tune_on"):
        ckpt["relprop"]["config"].pop(key)
    for key in ("foreground", "guard"):
        ckpt["relprop"]["config"]["loss"].pop(key)
    torch.save(ckpt, path)
    more = TrainConfig(method="selective", epochs=2, batch_size=16, seed=1)
    result = fit(plain_model(0), data, None, more, out_dir=tmp_path, progress=False)
    assert result.finished and [h["epoch"] for h in result.history] == [0, 1]


def test_match_and_hidden_layers_reach_isnet_maps() -> None:
    model = plain_model(0)
    maps = build_maps(model, TrainConfig(method="stochastic", match="authors", hidden_layers=("1", "4")))
    assert maps.match == "authors" and maps.hidden_layers == ("1", "4")
    plain = build_maps(model, TrainConfig(method="stochastic"))
    assert plain.match == "relprop" and plain.hidden_layers == ()


def test_deep_supervision_in_isnet_step_is_the_loss_on_maps_and_hidden() -> None:
    from relprop.isnet import deep_supervision_loss, isnet_step

    model = plain_model(2)
    data = BoxDataset(8, seed=3)
    batch = (data.images, data.masks, data.labels)
    config = TrainConfig(
        method="selective", P=0.6, hidden_layers=("1", "4"), d_layers=0.7, hidden_bounds={"4": (0.3, 5.0)},
        loss=HeatmapLossConfig(foreground="l2", C1=0.5, C2=4.0),
    )  # fmt: skip
    loss, stats = isnet_step(model, batch, config)
    logits, maps, hidden = ISNetMaps(model, "selective", hidden_layers=("1", "4")).maps_and_hidden(
        data.images, data.labels
    )
    configs = {
        "input": config.loss,
        "1": config.loss,  # no bounds of its own: loss.C1/C2
        "4": HeatmapLossConfig(foreground="l2", C1=0.3, C2=5.0),
    }
    lh = deep_supervision_loss({"input": maps, **hidden}, data.masks, configs, d_layers=0.7)
    ce = torch.nn.functional.cross_entropy(logits, data.labels)
    assert float(loss.detach()) == pytest.approx(float((0.4 * ce + 0.6 * lh).detach()), rel=1e-6)
    assert stats["heatmap"] == pytest.approx(float(lh.detach()), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# --- relprop train -----------------------------------------------------------------------------------------------


def _train_args(*argv: str):
    from relprop.cli import build_parser

    return build_parser().parse_args(["train", "--out", "unused", *argv])


def test_cli_flags_reach_train_config() -> None:
    from relprop.cli.train import config_from_args

    config = config_from_args(
        _train_args(
            "--method", "stochastic", "--P", "0:0.3,4:0.7", "--clip", "0", "--foreground", "l2", "--guard",
            "--match", "authors", "--hidden-layers", "1, 4", "--d-layers", "0.6", "--tune-epochs", "5",
            "--tune-on", "foreground", "--C1", "2", "--C2", "30", "--d", "0.8", "--lr", "0.02", "--epochs", "3",
        )
    )  # fmt: skip
    assert config.method == "stochastic" and config.P == {0: 0.3, 4: 0.7} and config.clip is None
    assert config.loss == HeatmapLossConfig(d=0.8, C1=2.0, C2=30.0, foreground="l2", guard=True)
    assert config.match == "authors" and config.hidden_layers == ("1", "4") and config.d_layers == 0.6
    assert config.tune_epochs == 5 and config.tune_on == "foreground" and config.lr == 0.02 and config.epochs == 3
    default = config_from_args(_train_args())
    assert default.clip == 1.0 and default.P == 0.7 and default.tune_epochs == 0 and default.tune_on == "map"
    assert default.loss.foreground == "hybrid" and not default.loss.guard and default.match == "relprop"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--lr", "-1"], "--lr -1.0: must be a finite number > 0"),
        (["--epochs", "0"], "--epochs 0: must be an integer >= 1"),
        (["--C1", "0"], "--C1 0.0: must be > 0"),
        (["--C1", "5", "--C2", "2"], "--C2 2.0: must be >= C1"),
        (["--d", "2"], "--d 2.0: the GWRP decay"),
        (["--P", "1.5"], "--P 1.5: P must be a number in"),
        (["--P", "1:0.7"], "--P 1:0.7: the P schedule must have an entry for epoch 0"),
        (["--d-layers", "2"], "--d-layers 2.0"),
        (["--tune-epochs", "-2"], "--tune-epochs -2"),
        (["--clip", "-1"], "--clip -1.0"),
        (["--hidden-layers", "a,a"], "--hidden-layers a,a: names a module twice"),
    ],
)
def test_cli_errors_name_the_flag(argv: list[str], needle: str) -> None:
    from relprop.cli.train import config_from_args
    from relprop.errors import UsageError

    with pytest.raises(UsageError) as info:
        config_from_args(_train_args(*argv))
    assert needle in str(info.value) and "TrainConfig" not in str(info.value)


def test_cli_rejects_a_p_that_is_not_a_number_or_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _train_args("--P", "lots")
    assert info.value.code == 2
    assert "--P" in capsys.readouterr().err


def test_cli_init_errors_name_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from relprop.cli import main

    small = ["--epochs", "1", "--n-train", "60", "--width", "4", "--quiet", "--threads", "1"]
    assert main(["train", "--out", str(tmp_path / "a"), *small, "--init", str(tmp_path / "missing")]) == 2
    assert "--init" in capsys.readouterr().err
    other = tmp_path / "other"
    fit(plain_model(0), BoxDataset(16), None, TrainConfig(method="plain", epochs=1, batch_size=16), out_dir=other,
        progress=False)  # fmt: skip
    assert main(["train", "--out", str(tmp_path / "b"), *small, "--init", str(other)]) == 2
    err = capsys.readouterr().err
    assert "--init" in err and "do not fit" in err
