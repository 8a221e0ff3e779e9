"""The Explainer's contract: targets, batching, gradients from the same engine, caches that stay correct."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 6),
    ).eval()


def test_target_forms_agree() -> None:
    model, x = cnn(), torch.rand(3, 3, 8, 8)
    ex = relprop.Explainer(model, "epsilon_gamma_box")
    logits = model(x)
    pred = logits.argmax(1)
    by_pred = ex(x, "predicted")
    assert torch.equal(by_pred, ex(x, pred))
    assert torch.equal(by_pred, ex(x, lambda z: z.argmax(1)))
    seed = torch.nn.functional.one_hot(pred, 6).float() * logits.detach()
    torch.testing.assert_close(by_pred, ex(x, seed))
    torch.testing.assert_close(by_pred, ex(x, lambda z: torch.nn.functional.one_hot(z.argmax(1), 6) * z))
    assert not torch.equal(ex(x, 0), ex(x, 1))


def test_int_target_broadcasts_and_batch_rows_are_independent() -> None:
    model, x = cnn(), torch.rand(4, 3, 8, 8)
    ex = relprop.Explainer(model, "epsilon_plus_flat")
    batched = ex(x, 2)
    singles = torch.cat([ex(x[i : i + 1], 2) for i in range(4)])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-7)


def test_explanation_fields_and_conservation_error() -> None:
    model, x = cnn(), torch.rand(2, 3, 8, 8)
    e = relprop.Explainer(model, "epsilon").explain(x, torch.tensor([1, 4]))
    assert e.relevance.shape == x.shape
    torch.testing.assert_close(e.logits, model(x))
    assert e.targets is not None and e.targets.tolist() == [1, 4]
    assert e.output_relevance.shape == (2, 6)
    expected = (e.relevance.sum((1, 2, 3)) - e.logits[[0, 1], [1, 4]]).abs() / e.logits[[0, 1], [1, 4]].abs()
    torch.testing.assert_close(e.conservation_error, expected.double(), rtol=1e-4, atol=1e-6)
    # with per-step rescaling (R-LRP), the factor is undone before comparing
    r = relprop.Explainer(model, "rlrp").explain(x, 1)
    raw = r.relevance.double().sum((1, 2, 3)) * r.log_scale.double().exp()
    torch.testing.assert_close(r.conservation_error, (raw - 1).abs())


def test_functional_form_equals_object_form() -> None:
    model, x = cnn(), torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(
        relprop.explain(model, x, 3, "epsilon_plus"), relprop.Explainer(model, "epsilon_plus")(x, 3)
    )


@pytest.mark.parametrize("arch", ["cnn", "resnet18"])
def test_gradient_composites_equal_autograd(arch: str) -> None:
    torch.manual_seed(0)
    model = cnn() if arch == "cnn" else torchvision.models.resnet18(num_classes=6).eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    model = model.double()
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr)[:, 5].sum(), xr)
    torch.testing.assert_close(relprop.explain(model, x, 5, "gradient"), grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(relprop.explain(model, x, 5, "gradient_x_input"), grad * x, rtol=1e-10, atol=1e-12)


def test_single_rule_as_composite() -> None:
    model, x = cnn(), torch.rand(2, 3, 8, 8)
    by_rule = relprop.explain(model, x, 1, relprop.Epsilon(1e-6))
    by_preset = relprop.explain(model, x, 1, "epsilon")
    torch.testing.assert_close(by_rule, by_preset)


def test_name_map_overrides_types() -> None:
    model, x = cnn(), torch.rand(2, 3, 8, 8)
    base = relprop.composites.epsilon()
    flat_first = relprop.Composite(base.layer_map, name_map={"0": relprop.Flat()})
    r = relprop.explain(model, x, 1, flat_first)
    # flat relevance is the same for every input channel at a pixel
    assert torch.allclose(r[:, 0], r[:, 1]) and torch.allclose(r[:, 1], r[:, 2])
    assert not torch.allclose(relprop.explain(model, x, 1, base)[:, 0], r[:, 0])


def test_cached_modified_weights_follow_parameter_changes() -> None:
    model, x = cnn(), torch.rand(2, 3, 8, 8)
    ex = relprop.Explainer(model, "epsilon_gamma_box")
    before = ex(x, 1)
    with torch.no_grad():
        model[4].weight.mul_(-1.5)  # in place: same tensor, new version
        model[1].running_var.mul_(2.0)  # folded BatchNorm statistics change too
    after = ex(x, 1)
    fresh = relprop.Explainer(model, "epsilon_gamma_box")(x, 1)
    torch.testing.assert_close(after, fresh)
    assert not torch.allclose(before, after)


def test_float64_and_dtype_preserved() -> None:
    model, x = cnn().double(), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    r = relprop.explain(model, x, 0)
    assert r.dtype == torch.float64


def test_no_graph_without_create_graph() -> None:
    model, x = cnn(), torch.rand(2, 3, 8, 8, requires_grad=True)
    r = relprop.explain(model, x, 0)
    assert r.grad_fn is None and not r.requires_grad
    r2 = relprop.explain(model, x, 0, create_graph=True)
    assert r2.grad_fn is not None
    torch.testing.assert_close(r, r2.detach())


def test_shared_relu_module_used_many_times() -> None:
    # torchvision's ResNet calls the same nn.ReLU several times; each call is its own step
    model = torchvision.models.resnet18(num_classes=4).eval()
    graph = relprop.RelevanceGraph(model)
    relus = [s for s in graph.steps if s.kind == "activation" and s.name == "layer1.0.relu"]
    assert len(relus) == 2


def test_clear_cache_after_edits_through_data() -> None:
    lin = nn.Sequential(nn.Linear(4, 3), nn.Flatten())
    ex = relprop.Explainer(lin, relprop.ZPlus())
    x, seed = torch.rand(2, 4), torch.ones(2, 3)
    ex(x, seed)
    lin[0].weight.data.mul_(-1)  # invisible to version counters
    ex.clear_cache()
    torch.testing.assert_close(ex(x, seed), relprop.Explainer(lin, relprop.ZPlus())(x, seed))


def test_per_step_rescaling_keeps_the_normalised_map_across_residual_branches() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval().double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    for composite in (relprop.composites.epsilon_plus(), relprop.composites.rlrp()):
        e_plain, e_scaled = (
            relprop.Explainer(model, composite, rescale=False).explain(x, 2),
            relprop.Explainer(model, composite, rescale=True).explain(x, 2),
        )
        assert e_plain.log_scale is None and e_scaled.log_scale is not None
        peak = e_plain.relevance.flatten(1).abs().amax(1)
        torch.testing.assert_close(e_scaled.relevance.flatten(1).abs().amax(1), torch.ones(2, dtype=torch.float64))
        torch.testing.assert_close(e_plain.relevance / peak.view(-1, 1, 1, 1), e_scaled.relevance)
        torch.testing.assert_close(e_scaled.log_scale.exp(), peak)
