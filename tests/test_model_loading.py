"""Model and data loading from local files: advertorch's pretrained LeNet-5, torchvision names, model files."""

from __future__ import annotations

import sysconfig

import pytest
import torch
import torch.nn as nn

from relprop import models
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
