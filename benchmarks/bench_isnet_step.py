"""One ISNet training step on torchvision backbones: relprop vs the authors' LRP-Flex way vs a plain step.

Per backbone (train mode, ``--size``² inputs, batch ``--batch``, ``--classes`` outputs, one thread) three steps
are timed side by side, interleaved round by round after a warm-up, median over ``--reps`` rounds:

* ``plain``: forward + cross-entropy + backward + SGD step;
* ``relprop``: ``ISNetMaps(model, "stochastic")`` (one forward, one differentiable relevance map through
  relprop's engine: z^B first layer, LRP-ε hidden, LRP-0 classifier) + ``isnet_loss`` + backward + SGD step;
* ``lrp_flex``: the authors' formulation in plain autograd, written here: every ReLU's backward scaled by
  a / (a + ε) (LRP-ε as a modified gradient), the map is Gradient × Input of the same seed
  (``torch.autograd.grad(..., create_graph=True)``) down to the first convolution's output z₁, where z^B gives
  the map: R_x = x ⊙ Wᵀs − l ⊙ W⁺ᵀs − h ⊙ W⁻ᵀs, s = (z₁ ⊙ ∂f/∂z₁) / (z₁ − W⁺l − W⁻h); BatchNorm
  differentiated through its batch statistics (autograd's default); then the same loss, backward and SGD step
  (double backpropagation). Functional relus (DenseNet's last one) keep the plain gradient.

Prints the median process CPU time per step (less disturbed than wall time by other processes on a shared
machine; on CUDA the wall time) and the ratios relprop / lrp_flex (target <= 0.9) and relprop / plain
(target <= 3), then the wall-time ratios.

    .venv/bin/python benchmarks/bench_isnet_step.py                      # resnet18 and densenet121, 64², batch 8
    .venv/bin/python benchmarks/bench_isnet_step.py --models resnet18 --reps 5 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class _FlexReLUFn(torch.autograd.Function):
    """y = relu(z); backward multiplies the incoming gradient by y / (y + ε) (differentiable)."""

    @staticmethod
    def forward(ctx, z: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        y = torch.relu(z)
        ctx.save_for_backward(y)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return g * (y / (y + ctx.eps)), None


class FlexReLU(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, z: Tensor) -> Tensor:
        return _FlexReLUFn.apply(z, self.eps)  # type: ignore[no-any-return]


def _flex_copy(model: nn.Module, eps: float) -> nn.Module:
    """A copy of ``model`` whose ReLU modules and functional relus have the LRP-ε backward."""
    m = copy.deepcopy(model)
    for _, child in list(m.named_modules()):
        for cname, c in list(child.named_children()):
            if isinstance(c, nn.ReLU):
                setattr(child, cname, FlexReLU(eps))
    return m


def _zbox(conv: nn.Conv2d, x: Tensor, z: Tensor, r: Tensor) -> Tensor:
    """z^B for inputs in [0, 1] at ``conv`` (bias-free torchvision stems), written out with autograd ops."""
    w = conv.weight
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    ones = torch.ones_like(x[:1])
    conv_args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    bounds = F.conv2d(ones, wn, None, *conv_args)  # W⁺·0 + W⁻·1
    s = r / (z - bounds + 1e-6)
    out = torch.nn.grad.conv2d_input(x.shape, w, s, *conv_args)
    out_p = torch.nn.grad.conv2d_input(x.shape, wp, s, *conv_args)
    return (x - 1) * out + out_p  # x ⊙ Wᵀs − 0 ⊙ W⁺ᵀs − 1 ⊙ W⁻ᵀs, with W⁻ = W − W⁺


def _build(name: str, classes: int, size: int, batch: int, device: str) -> dict[str, Callable[[], None]]:
    import torchvision

    from relprop.isnet import HeatmapLossConfig, isnet_loss
    from relprop.isnet.variants import ISNetMaps, stochastic_classes

    torch.manual_seed(0)
    base = getattr(torchvision.models, name)(num_classes=classes).to(device).train()
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    mask = torch.zeros(batch, 1, size, size, device=device)
    mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    cfg = HeatmapLossConfig()

    def plain_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def relprop_step(model: nn.Module, opt: torch.optim.Optimizer, maps: ISNetMaps, gen: torch.Generator) -> None:
        opt.zero_grad(set_to_none=True)
        logits, heat = maps(x, y, generator=gen)
        loss, _, _ = isnet_loss(logits, y, heat, mask, 0.7, cfg)
        loss.backward()
        opt.step()

    def flex_step(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
        opt.zero_grad(set_to_none=True)
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        kept: list[Tensor] = []
        handle = first.register_forward_hook(lambda m, i, o: kept.append(o))
        logits = model(x)
        handle.remove()
        z1 = kept[0]
        idx = stochastic_classes(logits.detach(), gen)
        seed = logits * F.one_hot(idx, classes).to(logits.dtype)
        (g,) = torch.autograd.grad(seed.sum(), z1, create_graph=True)
        heat = _zbox(first, x, z1, z1 * g).unsqueeze(1)
        loss, _, _ = isnet_loss(logits, y, heat, mask, 0.7, cfg)
        loss.backward()
        opt.step()

    models = {k: copy.deepcopy(base) for k in ("plain", "relprop")}
    models["lrp_flex"] = _flex_copy(base, 0.01)
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in models.items()}
    maps = ISNetMaps(models["relprop"], "stochastic", low=0.0, high=1.0)
    gens = {k: torch.Generator().manual_seed(1) for k in ("relprop", "lrp_flex")}
    return {
        "plain": lambda: plain_step(models["plain"], opts["plain"]),
        "relprop": lambda: relprop_step(models["relprop"], opts["relprop"], maps, gens["relprop"]),
        "lrp_flex": lambda: flex_step(models["lrp_flex"], opts["lrp_flex"], gens["lrp_flex"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "densenet121"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    print(f"ISNet step, train mode, {a.size}² batch {a.batch}, {a.classes} classes, {a.threads} thread(s), {a.device}")
    head = f"{'model':<12} {'plain ms':>9} {'relprop ms':>11} {'lrp_flex ms':>12}"
    print(f"{head} {'relprop/flex':>13} {'relprop/plain':>14}")
    for name in a.models:
        steps = _build(name, a.classes, a.size, a.batch, a.device)
        for fn in steps.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in steps}
        cpu: dict[str, list[float]] = {k: [] for k in steps}
        order = list(steps)
        for rep in range(a.reps):
            for k in order[rep % 3 :] + order[: rep % 3]:  # rotate the order each round
                sync()
                t, c = time.perf_counter(), time.process_time()
                steps[k]()
                sync()
                times[k].append(time.perf_counter() - t)
                cpu[k].append(time.process_time() - c)
        on_gpu = a.device.startswith("cuda")
        for label, data in (("cpu", times if on_gpu else cpu), ("wall", times)):
            med = {k: statistics.median(v) * 1e3 for k, v in data.items()}
            r1, r2 = med["relprop"] / med["lrp_flex"], med["relprop"] / med["plain"]
            print(
                f"{name + ' ' + label:<12} {med['plain']:>9.1f} {med['relprop']:>11.1f} {med['lrp_flex']:>12.1f} "
                f"{r1:>9.2f} {'PASS' if r1 <= 0.9 else 'FAIL'} {r2:>9.2f} {'PASS' if r2 <= 3 else 'FAIL'}"
            )


if __name__ == "__main__":
    main()
