"""Agreement with zennit 1.0.0: max |ours − zennit| / max |zennit| per architecture and preset, float32 and float64.

Random weights with randomised batch-norm statistics (as in tests/test_zennit.py), batch of 2, explained
classes 3 and 981.

    .venv/bin/python benchmarks/zennit_agreement.py [--size 64]
"""

from __future__ import annotations

import argparse
import copy

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--archs", nargs="+", default=["vgg16", "vgg19", "resnet18", "resnet50"])
    args = p.parse_args()
    torch.set_num_threads(2)
    print(f"# max|ours - zennit| / max|zennit|, input 2x3x{args.size}x{args.size}, targets (3, 981)")
    print(f"{'model':<10}{'preset':<28}{'float32':>10}{'float64':>10}")
    for arch in args.archs:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        model = getattr(torchvision.models, arch)(weights=None).eval()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    n = m.num_features
                    m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                    m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
        x = torch.rand(2, 3, args.size, args.size, generator=gen)
        canon = [ResNetCanonizer()] if arch.startswith("resnet") else [VGGCanonizer()]
        for preset, make in PRESETS.items():
            errors = []
            for dtype in (torch.float32, torch.float64):
                m, xd = copy.deepcopy(model).to(dtype), x.to(dtype)
                e = relprop.Explainer(m, preset).explain(xd, torch.tensor([3, 981]))
                with Gradient(model=copy.deepcopy(m), composite=make(canon)) as attributor:
                    _, ref = attributor(xd, e.output_relevance)
                errors.append(float((e.relevance - ref).abs().max() / ref.abs().max()))
            print(f"{arch:<10}{preset:<28}{errors[0]:10.1e}{errors[1]:10.1e}")


if __name__ == "__main__":
    main()
