"""Every supported layer type against an independent layer-by-layer LRP-ε reference (float64).

The reference walks an ``nn.Sequential`` backwards and, for each affine block (a Linear/Conv/ConvTranspose
with the BatchNorm that follows it, an average pooling, a stand-alone BatchNorm), applies
R_in = a ⊙ J_fᵀ (R / stab(f(a))) with J_fᵀ computed by autograd on the *modules themselves*, so it shares
neither the engine's BatchNorm folding nor its transposed convolutions. Activations and dropout pass
relevance through; max pooling and reshaping follow their gradient.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import relprop

EPS = 0.1
AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
POOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _blocks(model: nn.Sequential) -> list[tuple[str, list[nn.Module]]]:
    mods = list(model)
    out, i = [], 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, AFFINE) and i + 1 < len(mods) and isinstance(mods[i + 1], BN):
            out.append(("affine", [m, mods[i + 1]]))
            i += 2
            continue
        if isinstance(m, AFFINE + POOL):
            out.append(("affine", [m]))
        elif isinstance(m, BN):
            out.append(("bn", [m]))
        elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten)):
            out.append(("grad", [m]))
        else:
            out.append(("pass", [m]))
        i += 1
    return out


def reference_epsilon(model: nn.Sequential, x: torch.Tensor, target: int) -> torch.Tensor:
    blocks = _blocks(model)
    acts = [x]
    for _, ms in blocks:
        h = acts[-1]
        for m in ms:
            h = m(h)
        acts.append(h)
    logits = acts[-1]
    R = torch.zeros_like(logits)
    R[:, target] = logits[:, target]
    for (kind, ms), a, z in zip(reversed(blocks), reversed(acts[:-1]), reversed(acts[1:])):
        if kind == "pass":
            continue
        # a stand-alone BatchNorm is an affine map too: the epsilon composite gives it LRP-ε (Pass, zennit's
        # choice, makes relevance explode with trained statistics: DenseNet's BatchNorm after a concatenation)
        a_req = a.detach().requires_grad_(True)
        with torch.enable_grad():
            h = a_req
            for m in ms:
                h = m(h)
            if kind == "grad":
                (R,) = torch.autograd.grad(h, a_req, R)
                continue
            eps = 1e-6 if isinstance(ms[0], POOL) else EPS  # the epsilon composite uses Norm() on pooling
            s = R / (z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype))
            (g,) = torch.autograd.grad(h, a_req, s)
        R = a * g
    return R


def check(model: nn.Sequential, x: torch.Tensor, target: int = 1) -> None:
    model = model.double().eval()
    x = x.double()
    ours = relprop.explain(model, x, target, relprop.composites.epsilon(EPS))
    ref = reference_epsilon(model, x, target)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))


def _randomise(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BN):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


CASES = {
    "conv1d_stride_dilation": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3, stride=2, dilation=2, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3)
        ),  # fmt: skip
        (2, 2, 11),
    ),
    "conv2d_groups_bn_leaky": (
        lambda: nn.Sequential(
            nn.Conv2d(4, 6, 3, padding=1, groups=2),
            nn.BatchNorm2d(6),
            nn.LeakyReLU(0.1),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(6 * 9, 3),
        ),  # fmt: skip
        (2, 4, 6, 6),
    ),
    "conv2d_same_padding_elu_maxpool": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3, padding="same"), nn.ELU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 9, 3)
        ),  # fmt: skip
        (2, 3, 6, 6),
    ),
    "conv3d_gelu_adaptive": (
        lambda: nn.Sequential(nn.Conv3d(2, 3, 2), nn.GELU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(3, 3)),
        (2, 2, 4, 4, 4),
    ),
    "conv_transpose2d_bn_silu": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3),
            nn.ReLU(),
            nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(3),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(3 * 8 * 8, 3),
        ),  # fmt: skip
        (2, 2, 6, 6),
    ),
    "conv_transpose1d_groups": (
        lambda: nn.Sequential(
            nn.ConvTranspose1d(4, 4, 3, stride=2, groups=2), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 11, 3)
        ),  # fmt: skip
        (2, 4, 5),
    ),
    "dense_bn1d_sigmoid_dropout": (
        lambda: nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Sigmoid(), nn.Dropout(0.5), nn.Linear(8, 3)),
        (3, 5),
    ),
    "standalone_batchnorm": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3),
            nn.ReLU(),
            nn.BatchNorm2d(3),
            nn.Conv2d(3, 3, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 2 * 2, 3),
        ),  # fmt: skip
        (2, 2, 6, 6),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_layer_against_autograd_reference(case: str) -> None:
    torch.manual_seed(0)
    build, shape = CASES[case]
    model = _randomise(build())
    check(model, torch.randn(*shape))


def test_batchnorm_is_folded_not_left_as_a_step() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.BatchNorm2d(3), nn.Flatten())
    steps = relprop.RelevanceGraph(model).linear_steps
    assert [s.batchnorm is not None for s in steps] == [True, False]
    assert type(steps[1].module) is nn.BatchNorm2d
