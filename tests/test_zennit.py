"""Cross-check against zennit 1.0.0 (the reference library) on torchvision architectures.

Acceptance: max |ours - zennit| <= 1e-4 * max |R| in float32, for vgg16, vgg19, resnet18, resnet50 with
random weights and randomised batch-norm statistics, for the four presets zennit also has.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torchvision
from zennit.attribution import Gradient
from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

import relprop

PRESETS = {
    "epsilon_plus_flat": lambda canon: EpsilonPlusFlat(canonizers=canon),
    "epsilon_gamma_box": lambda canon: EpsilonGammaBox(low=0.0, high=1.0, canonizers=canon),
    "epsilon_plus": lambda canon: EpsilonPlus(canonizers=canon),
    "epsilon_alpha2_beta1_flat": lambda canon: EpsilonAlpha2Beta1Flat(canonizers=canon),
}
ARCHS = {"vgg16": 32, "vgg19": 32, "resnet18": 48, "resnet50": 48}  # input size per architecture


def _randomise_batchnorm(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)


@functools.lru_cache(maxsize=1)
def _build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = getattr(torchvision.models, name)(weights=None).eval()
    _randomise_batchnorm(model, gen)
    size = ARCHS[name]
    return model, torch.rand(2, 3, size, size, generator=gen)


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, torch.Tensor, torch.nn.Module]:
    model, x = _build(request.param)
    # zennit's canonizers change the model while attributing (and restore it afterwards); give it a copy
    return request.param, model, x, copy.deepcopy(model)


def _zennit(model: torch.nn.Module, name: str, preset: str, x: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    canon = [ResNetCanonizer()] if name.startswith("resnet") else [VGGCanonizer()]
    with Gradient(model=model, composite=PRESETS[preset](canon)) as attributor:
        _, relevance = attributor(x, seed)
    return relevance


@pytest.mark.parametrize("preset", list(PRESETS))
def test_matches_zennit_float32(arch: tuple[str, torch.nn.Module, torch.Tensor], preset: str) -> None:
    name, model, x, zmodel = arch
    explanation = relprop.Explainer(model, preset).explain(x, target=torch.tensor([3, 981]))
    reference = _zennit(zmodel, name, preset, x, explanation.output_relevance)
    scale = reference.abs().max()
    assert scale > 0
    error = (explanation.relevance - reference).abs().max() / scale
    assert error <= 1e-4, f"{name}/{preset}: relative max error {error:.2e}"


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
@pytest.mark.parametrize("preset", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_matches_zennit_float64(name: str, preset: str) -> None:
    model, x = _build(name)
    model64 = copy.deepcopy(model).double()
    x64 = x.double()
    explanation = relprop.Explainer(model64, preset).explain(x64, target=5)
    reference = _zennit(model64, name, preset, x64, explanation.output_relevance)
    error = (explanation.relevance - reference).abs().max() / reference.abs().max()
    assert error <= 1e-9, f"{name}/{preset}: relative max error {error:.2e}"
