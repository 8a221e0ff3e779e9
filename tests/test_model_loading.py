"""Model and data loading from local files: advertorch's pretrained LeNet-5, torchvision names, model files."""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from relprop import models
from relprop.cli import main
from relprop.models import LeNet5, ModelLoadError, load_advertorch_lenet5, load_mnist_digits, load_model

torch.set_num_threads(1)


def test_lenet5_matches_advertorch_state_dict_keys_and_shapes() -> None:
    state = torch.load(models.advertorch_weights_path("clean"), map_location="cpu", weights_only=True)
    own = LeNet5().state_dict()
    assert list(own) == list(state)
    assert all(own[k].shape == state[k].shape for k in own)


def test_pretrained_lenet5_is_accurate_on_real_mnist() -> None:
    model = load_advertorch_lenet5("clean")
    assert not model.training
    x, y = load_mnist_digits(50)
    assert x.shape == (500, 1, 28, 28)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.97, accuracy


def test_adversarially_trained_lenet5_loads_and_differs() -> None:
    clean, adv = load_advertorch_lenet5("clean"), load_advertorch_lenet5("adv")
    assert not torch.equal(clean.conv1.weight, adv.conv1.weight)
    x, y = load_mnist_digits(10)
    with torch.no_grad():
        assert (adv(x).argmax(1) == y).float().mean().item() >= 0.9


def test_missing_advertorch_weights_say_what_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"purelib": str(tmp_path)})
    with pytest.raises(FileNotFoundError) as info:
        load_advertorch_lenet5("clean")
    msg = str(info.value)
    assert "mnist_lenet5_clntrained.pt" in msg and "pip install advertorch==0.2.3" in msg
    with pytest.raises(ValueError, match="'clean' or 'adv'"):
        load_advertorch_lenet5("robust")  # type: ignore[arg-type]


def test_mnist_digits_are_deterministic_balanced_and_in_unit_range() -> None:
    x1, y1 = load_mnist_digits(3)
    x2, y2 = load_mnist_digits(3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.dtype == torch.float32 and y1.dtype == torch.int64
    assert y1.tolist() == [c for c in range(10) for _ in range(3)]
    assert x1.min() >= 0.0 and x1.max() <= 1.0 and x1.max() > 0.9
    assert len({tuple(img.flatten().tolist()) for img in x1}) == 30  # 30 different digits
    with pytest.raises(ValueError):
        load_mnist_digits(0)


def test_torchvision_name_with_local_state_dict(tmp_path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = load_model("resnet18", str(path), num_classes=10)
    assert not model.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    # checkpoint layouts seen in the wild: {"state_dict": ...} and DataParallel's "module." prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, path)
    with torch.no_grad():
        torch.testing.assert_close(load_model("resnet18", path, num_classes=10)(x), ref(x))


def test_full_model_file(tmp_path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    path = tmp_path / "net.pt"
    torch.save(net, path)
    loaded = load_model(str(path))
    assert isinstance(loaded, nn.Sequential) and not loaded.training
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


def test_lenet5_by_name() -> None:
    model = load_model("lenet5")
    assert isinstance(model, LeNet5)
    torch.testing.assert_close(model.conv1.weight, load_advertorch_lenet5().conv1.weight)


def test_unknown_architecture_names_it_and_lists_valid_ones() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet19")
    msg = str(info.value)
    assert "'resnet19'" in msg and "resnet18" in msg and "vgg16" in msg


def test_missing_files_are_named(tmp_path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model(str(missing))
    with pytest.raises(FileNotFoundError, match="weights.pth"):
        load_model("resnet18", str(tmp_path / "weights.pth"), num_classes=10)


def test_mismatched_state_dict_names_the_keys(tmp_path) -> None:
    pytest.importorskip("torchvision")
    path = tmp_path / "lenet.pth"
    torch.save(LeNet5().state_dict(), path)
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet18", str(path), num_classes=10)
    msg = str(info.value)
    assert "lenet.pth" in msg and "missing keys" in msg and "conv1.weight" in msg and "linear1.weight" in msg

    import torchvision

    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"shape mismatch.*fc\.weight \(10, 512\) vs \(1000, 512\)"):
        load_model("resnet18", str(path))  # default 1000 classes


def test_state_dict_given_as_model_and_garbage_file(tmp_path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(LeNet5().state_dict(), path)
    with pytest.raises(ModelLoadError, match="state_dict, not a full model"):
        load_model(str(path))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="junk.pt"):
        load_model(str(junk))
    with pytest.raises(ModelLoadError, match="junk.pt"):
        load_model("lenet5", str(junk))


def test_build_model_specs_and_errors() -> None:
    from relprop.models import DigitsCNN, build_model

    m = build_model({"name": "digits_cnn", "num_classes": 7, "in_channels": 3, "width": 4})
    assert isinstance(m, DigitsCNN)
    assert m(torch.rand(2, 3, 40, 40)).shape == (2, 7)
    assert build_model({"name": "resnet18", "num_classes": 3}).eval()(torch.rand(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(ModelLoadError, match="'name' key"):
        build_model({"num_classes": 3})
    with pytest.raises(ModelLoadError, match="depth"):
        build_model({"name": "digits_cnn", "depth": 3})
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        build_model({"name": "resnet9000"})
    with pytest.raises(ValueError, match="width=0"):
        DigitsCNN(width=0)


def test_small_resnet_traces_and_trains_through_isnet_maps() -> None:
    from relprop import Explainer
    from relprop.isnet import ISNetMaps, heatmap_loss
    from relprop.models import SmallResNet, build_model

    torch.manual_seed(0)
    m = build_model({"name": "small_resnet", "num_classes": 2, "in_channels": 1, "width": 4})
    assert isinstance(m, SmallResNet)
    x = torch.rand(3, 1, 24, 24)
    assert m(x).shape == (3, 2)
    e = Explainer(m.eval(), "isnet").explain(x, "predicted")
    assert e.relevance.shape == x.shape and torch.isfinite(e.relevance).all()
    m.train()
    mask = torch.zeros(3, 1, 24, 24)
    mask[:, :, 6:18, 6:18] = 1
    logits, maps = ISNetMaps(m, "selective", selective_class="label")(x, torch.tensor([0, 1, 0]))
    (torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0])) + heatmap_loss(maps, mask)).backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads if g is not None)


# --- timm:NAME, weights file formats and the errors of unusable files ----------------------------------------

TIMM_ARCH = "resnet10t"  # the smallest timm ResNet; relprop's engine explains it (efficientnet_b0 not yet)


def _timm_ref(num_classes: int = 3, seed: int = 0) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=num_classes)
    for m in model.modules():  # non-trivial BatchNorm statistics, so that loading them is visible
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_timm_name_loads_its_own_state_dict_pt_safetensors_and_checkpoint_dict(tmp_path) -> None:
    import argparse

    from safetensors.torch import save_file

    ref = _timm_ref(3)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref(x)
    fresh = load_model(f"timm:{TIMM_ARCH}", num_classes=3)
    assert type(fresh) is type(ref) and not fresh.training
    with torch.no_grad():
        assert fresh(x).shape == (2, 3) and not torch.allclose(fresh(x), expected)  # random init differs
    state = ref.state_dict()
    torch.save(state, tmp_path / "sd.pt")
    save_file(state, str(tmp_path / "sd.safetensors"))
    # timm's train.py layout: the args Namespace next to the weights (read without unpickling code)
    torch.save(
        {"epoch": 3, "arch": TIMM_ARCH, "args": argparse.Namespace(lr=0.1), "model": state}, tmp_path / "ckpt.pth"
    )
    torch.save({"model_state_dict": {f"_orig_mod.{k}": v for k, v in state.items()}}, tmp_path / "compiled.pt")
    for name in ("sd.pt", "sd.safetensors", "ckpt.pth", "compiled.pt"):
        model = load_model(f"timm:{TIMM_ARCH}", tmp_path / name, num_classes=3)
        assert not model.training
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0, msg=name)


def test_timm_class_count_mismatch_gives_a_hint_that_works(tmp_path) -> None:
    ref = _timm_ref(3)
    path = tmp_path / "three.pt"
    torch.save(ref.state_dict(), path)
    with pytest.raises(ModelLoadError) as info:
        load_model(f"timm:{TIMM_ARCH}", path)  # timm's default: 1000 classes
    msg = str(info.value)
    assert "three.pt" in msg and "fc.weight (3, 512) vs (1000, 512)" in msg
    match = re.search(r"pass --num-classes (\d+) \(num_classes=(\d+) in Python\)", msg)
    assert match and match.group(1) == match.group(2) == "3", msg
    model = load_model(f"timm:{TIMM_ARCH}", path, num_classes=int(match.group(2)))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    # a file of another architecture: no --num-classes promise that would not work
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet18", path)
    msg = str(info.value)
    assert "missing keys" in msg and "check the architecture" in msg and "pass --num-classes" not in msg


def test_torchvision_class_count_hint_works(tmp_path) -> None:
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=7).state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"pass --num-classes 7 \(num_classes=7 in Python\)"):
        load_model("resnet18", path)
    assert load_model("resnet18", path, num_classes=7)(torch.rand(1, 3, 32, 32)).shape == (1, 7)


def test_every_torchvision_name_is_accepted_without_downloading(monkeypatch) -> None:
    torchvision = pytest.importorskip("torchvision")
    names = torchvision.models.list_models(module=torchvision.models)
    built: list[str] = []

    def fake_get_model(name, **kwargs):  # building all 80 for real takes minutes; check what load_model asks
        assert kwargs.pop("weights") is None
        built.append(name)
        return nn.Linear(1, 1)

    monkeypatch.setattr(torchvision.models, "get_model", fake_get_model)
    for name in names:
        load_model(name)
    assert built == names and len(names) > 50


def test_unknown_timm_names_and_tags_have_close_matches() -> None:
    pytest.importorskip("timm")
    with pytest.raises(ModelLoadError) as info:
        load_model("timm:resnt18")
    msg = str(info.value)
    assert "unknown timm architecture 'resnt18'" in msg and "timm:resnet18" in msg and "timm.list_models()" in msg
    with pytest.raises(ModelLoadError, match=r"no pretrained tag 'foo'.*a1_in1k"):
        load_model("timm:resnet18.foo")
    tagged = load_model("timm:resnet18.a1_in1k", num_classes=2)  # a tag picks the config; weights stay local
    assert tagged(torch.rand(1, 3, 32, 32)).shape == (1, 2)
    with pytest.raises(ModelLoadError, match=r"timm has it: use timm:resnet18\.a1_in1k"):
        load_model("resnet18.a1_in1k")  # a timm name without the prefix
    with pytest.raises(ModelLoadError, match="did you mean resnet18"):
        load_model("resnet81")


def test_timm_not_installed_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(ModelLoadError) as info:
        load_model(f"timm:{TIMM_ARCH}")
    msg = str(info.value)
    assert "pip install 'relprop[timm]'" in msg and "pip install timm" in msg
    with pytest.raises(ModelLoadError, match="did you mean resnet18"):
        load_model("resnet81")  # torchvision's hints still work without timm


@pytest.mark.parametrize(
    "spec", ["hf-hub:timm/resnet18.a1_in1k", "timm:hf-hub:timm/resnet18.a1_in1k", "hf_hub:timm/resnet18.a1_in1k"]
)
def test_hf_hub_specs_are_refused_with_how_to_load_locally(spec, monkeypatch) -> None:
    timm = pytest.importorskip("timm")
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("must not build (or download) anything"))
    with pytest.raises(ModelLoadError) as info:
        load_model(spec)
    msg = str(info.value)
    assert "local files only" in msg and "never downloads" in msg
    assert "--model timm:resnet18.a1_in1k --weights" in msg and "timm/resnet18.a1_in1k" in msg


def test_pretrained_options_and_urls_are_refused(monkeypatch) -> None:
    from relprop.models import build_model

    timm = pytest.importorskip("timm")
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("must not build (or download) anything"))
    for spec in ("timm:resnet18,pretrained=True", "resnet18?pretrained=true", "timm:resnet18:pretrained"):
        with pytest.raises(ModelLoadError, match="never downloads weights"):
            load_model(spec)
    for spec in ({"name": "timm:resnet18", "pretrained": True}, {"name": "resnet18", "weights": "DEFAULT"}):
        with pytest.raises(ModelLoadError, match="relprop never downloads"):
            build_model(spec)
    with pytest.raises(ModelLoadError, match="is a URL: relprop loads local files only"):
        load_model("https://example.org/resnet18.pth")
    with pytest.raises(ModelLoadError, match="is a URL: relprop loads local files only"):
        load_model("resnet18", "https://example.org/resnet18.pth")
    with pytest.raises(ModelLoadError, match="never downloaded: use --model resnet18"):
        load_model("resnet18.IMAGENET1K_V1")  # a torchvision weights enum


def test_build_model_timm_spec_round_trips_through_a_state_dict() -> None:
    from relprop.models import build_model

    ref = _timm_ref(4)
    model = build_model({"name": f"timm:{TIMM_ARCH}", "num_classes": 4})
    model.load_state_dict(ref.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref(x))


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()
    assert noise[:1] != b"\x80" and noise[:2] != b"PK"  # plain noise, neither pickle nor zip
    files = {"random": tmp_path / "random.pth", "empty": tmp_path / "empty.pt", "dir": tmp_path / "ckpts"}
    files["random"].write_bytes(noise)
    files["empty"].write_bytes(b"")
    files["dir"].mkdir()
    (files["dir"] / "model.safetensors").write_bytes(b"x")
    files["fake_safetensors"] = tmp_path / "fake.safetensors"
    files["fake_safetensors"].write_bytes(noise[:100])
    files["missing"] = tmp_path / "missing.pt"
    return files


def _check_bad_file_error(kind: str, path: Path, exc: BaseException) -> None:
    msg = str(exc)
    assert "weights_only" not in msg and "arbitrary code" not in msg, msg
    assert str(path) in msg, msg
    if kind == "missing":
        assert isinstance(exc, FileNotFoundError) and "file not found" in msg
        return
    assert isinstance(exc, ModelLoadError), msg
    if kind == "random":
        assert "(1.0 kB) is not a PyTorch checkpoint (torch.save) or safetensors file" in msg, msg
    elif kind == "fake_safetensors":
        assert "(100 bytes) is not a PyTorch checkpoint" in msg and "safetensors header" in msg, msg
    elif kind == "empty":
        assert "is empty (0 bytes)" in msg, msg
    elif kind == "dir":
        assert "is a directory, not a file" in msg and "model.safetensors" in msg, msg


@pytest.mark.parametrize("spec", ["resnet18", f"timm:{TIMM_ARCH}", "lenet5"])
@pytest.mark.parametrize("kind", ["random", "empty", "dir", "missing", "fake_safetensors"])
def test_unusable_weights_files_give_specific_errors(tmp_path, spec, kind) -> None:
    if spec.startswith("timm:"):
        pytest.importorskip("timm")
    path = _bad_files(tmp_path)[kind]
    with pytest.raises((ModelLoadError, FileNotFoundError)) as info:
        load_model(spec, path, num_classes=3)
    _check_bad_file_error(kind, path, info.value)


@pytest.mark.parametrize("kind", ["random", "empty", "dir", "missing"])
def test_unusable_full_model_files_give_specific_errors(tmp_path, kind) -> None:
    path = _bad_files(tmp_path)[kind]
    with pytest.raises((ModelLoadError, FileNotFoundError)) as info:
        load_model(str(path) + ("/" if kind == "dir" else ""))
    _check_bad_file_error(kind, path, info.value)


class _Payload:
    """Unpickling this runs ``Path(marker).touch()``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_objects_in_a_weights_file_are_never_unpickled(tmp_path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": LeNet5().state_dict(), "extra": _Payload(marker)}, path)
    with pytest.raises(ModelLoadError) as info:
        load_model("lenet5", path)
    msg = str(info.value)
    assert "evil.pt" in msg and "pickled Python objects" in msg and "without unpickling code" in msg
    assert "weights_only" not in msg
    assert not marker.exists()
    full = tmp_path / "full.pt"
    torch.save(LeNet5(), full)  # a full model given as --weights: pointed to --model, still not unpickled
    with pytest.raises(ModelLoadError, match=r"LeNet5.*pass it as the model itself \(--model "):
        load_model("lenet5", full)
    # a safetensors file or a state_dict given as the model is reported, not unpickled
    from safetensors.torch import save_file

    save_file(LeNet5().state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelLoadError, match="safetensors file: it holds weights, not a full model"):
        load_model(str(tmp_path / "w.safetensors"))


def test_checkpoint_dict_without_a_state_dict_names_the_keys_tried(tmp_path) -> None:
    path = tmp_path / "opt.pt"
    torch.save({"epoch": 2, "optimizer": {"lr": 0.1}}, path)
    with pytest.raises(ModelLoadError) as info:
        load_model("lenet5", path)
    msg = str(info.value)
    assert "keys epoch, optimizer" in msg and "state_dict, model_state_dict, model" in msg
    torch.save({"net": LeNet5().state_dict(), "epoch": 2}, path)
    assert isinstance(load_model("lenet5", path), LeNet5)


# --- the command line ---------------------------------------------------------------------------------------


def _images(tmp_path: Path, n: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


@pytest.fixture(scope="module")
def cli_parser() -> None:
    """Build the parser once up front: building it imports lightning (train's add_parser imports
    relprop.isnet.training), ~3 s, or 10 s on a loaded machine, that would otherwise land in the first CLI test."""
    from relprop.cli import build_parser

    build_parser()


def _cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_explains_with_a_timm_model_and_safetensors_weights(tmp_path, capsys, cli_parser) -> None:
    from safetensors.torch import save_file

    images = _images(tmp_path, 1)
    weights = tmp_path / "r10t.safetensors"
    save_file(_timm_ref(3).state_dict(), str(weights))
    base = ["explain", images, "--model", f"timm:{TIMM_ARCH}", "--weights", weights, "--size", 32, "--save-raw"]

    code, out, err = _cli(capsys, *base, "--out", tmp_path / "bad")  # timm's default 1000 classes
    lines = [line for line in err.splitlines() if "relprop: error" in line]
    assert code == 2 and len(lines) == 1 and "--num-classes 3" in lines[0] and "weights_only" not in err, err

    code, out, err = _cli(capsys, *base, "--num-classes", 3, "--out", tmp_path / "out")  # the hint, followed
    assert code == 0, err
    assert out.startswith("wrote 1 heatmap and .npy relevance to ") and "random weights" not in err
    assert [p.name for p in (tmp_path / "out").glob("*_heatmap.png")] == ["im0_heatmap.png"]
    trained = np.load(tmp_path / "out" / "im0_relevance.npy")
    assert trained.shape == (3, 32, 32) and np.isfinite(trained).all() and np.abs(trained).sum() > 0

    save_file(_timm_ref(3, seed=1).state_dict(), str(weights))  # other weights, other relevance
    code, _, err = _cli(capsys, *base, "--num-classes", 3, "--out", tmp_path / "other")
    assert code == 0, err
    assert not np.allclose(np.load(tmp_path / "other" / "im0_relevance.npy"), trained)


def test_cli_timm_without_weights_warns_and_bad_weights_are_one_line(tmp_path, capsys, cli_parser) -> None:
    pytest.importorskip("timm")
    images = _images(tmp_path, 1)
    base = ["explain", images / "im0.png", "--model", f"timm:{TIMM_ARCH}", "--size", 32, "--num-classes", 3]
    code, _, err = _cli(capsys, *base, "--out", tmp_path / "out")
    assert code == 0 and f"timm:{TIMM_ARCH} has random weights" in err, err
    junk = _bad_files(tmp_path)["random"]
    for extra in (["--weights", junk], ["--weights", tmp_path / "ckpts"]):
        code, _, err = _cli(capsys, *base, *extra, "--out", tmp_path / "out2")
        lines = [line for line in err.splitlines() if "relprop: error" in line]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert "weights_only" not in err and ("not a PyTorch checkpoint" in err or "is a directory" in err)
    code, _, err = _cli(capsys, *base, "--model", "hf-hub:timm/resnet18.a1_in1k", "--out", tmp_path / "out3")
    assert code == 2 and "local files only" in err
    with pytest.raises(SystemExit):
        _cli(capsys, "explain", "--help")
    assert "timm:NAME" in capsys.readouterr().out
