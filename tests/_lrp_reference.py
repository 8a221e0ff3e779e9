"""Plain float64 reference implementations of the LRP rules, written from the paper formulas.

Test helper, deliberately slow and independent of relprop: a layer is turned into its explicit dense
matrix W (outputs × inputs) and bias vector b, and every rule is written in the contribution form of
the papers,

    R_i = Σ_j  c_ij / d_j · R_j,

with the contributions c_ij and denominators d_j spelled out per rule (numpy, one sample at a time).
Positive/negative contributions are taken elementwise, (z_ij)⁺ = max(w_ij a_i, 0), which equals the
W⁺a⁺ + W⁻a⁻ split of the docstrings in :mod:`relprop.rules`. ``stab(d) = d + ε·sign(d)`` with
sign(0) = +1, and 0/0 := 0 for LRP-0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def dense_matrix(layer: nn.Module, in_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of ``layer`` acting on one sample of shape ``in_shape``, flattened in C-order.

    Convolutions are applied to the identity basis (column i of W is the layer's response to the unit
    input e_i, without bias); the bias vector is the layer's response to the zero input.
    """
    n = int(np.prod(in_shape))
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            w = layer.weight.detach().double().cpu().numpy().copy()
            b = np.zeros(w.shape[0]) if layer.bias is None else layer.bias.detach().double().cpu().numpy().copy()
            return w, b
        weight = layer.weight.detach().double()
        bias = None if layer.bias is None else layer.bias.detach().double()
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
        zero = torch.zeros(1, *in_shape, dtype=torch.float64)
        if isinstance(layer, nn.ConvTranspose2d):

            def conv(x: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
                return F.conv_transpose2d(
                    x, weight, b, layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation
                )
        else:
            fn = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}[type(layer)]

            def conv(x: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
                return fn(x, weight, b, layer.stride, layer.padding, layer.dilation, layer.groups)

        w = conv(basis, None).reshape(n, -1).T.numpy().copy()
        b = conv(zero, bias).reshape(-1).numpy().copy() if bias is not None else np.zeros(w.shape[0])
    return w, b


def stab(d: np.ndarray, eps: float) -> np.ndarray:
    return d + eps * np.where(d >= 0, 1.0, -1.0)


def distribute(c: np.ndarray, d: np.ndarray, r: np.ndarray) -> np.ndarray:
    """R_i = Σ_j c_ij / d_j · R_j, with explicit sums; a zero denominator passes nothing (0/0 := 0)."""
    m, n = c.shape
    out = np.zeros(n)
    for j in range(m):
        if d[j] == 0.0:
            continue
        out += c[j, :] * (r[j] / d[j])
    return out


# -- one rule for one sample: w (m, n), b (m,), a (n,), r (m,) -------------------------------------------


def epsilon(w, b, a, r, eps: float, ignore_bias: bool = False):
    c = w * a[None, :]  # z_ij = w_ij a_i
    z = c.sum(1) + (0.0 if ignore_bias else b)
    d = z if eps == 0 else stab(z, eps)
    return distribute(c, d, r)


def zplus(w, b, a, r, stabilizer: float = 1e-6):
    cp = np.maximum(w * a[None, :], 0.0)
    return distribute(cp, stab(cp.sum(1) + np.maximum(b, 0.0), stabilizer), r)


def alpha_beta(w, b, a, r, alpha: float, beta: float, stabilizer: float = 1e-6):
    z = w * a[None, :]
    cp, cn = np.maximum(z, 0.0), np.minimum(z, 0.0)
    pos = distribute(cp, stab(cp.sum(1) + np.maximum(b, 0.0), stabilizer), r)
    neg = distribute(cn, stab(cn.sum(1) + np.minimum(b, 0.0), stabilizer), r)
    return alpha * pos - beta * neg


def gamma(w, b, a, r, g: float, stabilizer: float = 1e-6):
    c = w * a[None, :]
    z = c.sum(1) + b
    cp, cn = np.maximum(c, 0.0), np.minimum(c, 0.0)
    # outputs z_j > 0 favour positive contributions, outputs z_j < 0 favour negative ones
    c_up, b_up = c + g * cp, b + g * np.maximum(b, 0.0)
    c_dn, b_dn = c + g * cn, b + g * np.minimum(b, 0.0)
    r_up = np.where(z > 0, r, 0.0)
    r_dn = np.where(z < 0, r, 0.0)
    return distribute(c_up, stab(c_up.sum(1) + b_up, stabilizer), r_up) + distribute(
        c_dn, stab(c_dn.sum(1) + b_dn, stabilizer), r_dn
    )


def zbox(w, b, a, r, low: np.ndarray, high: np.ndarray, stabilizer: float = 1e-6):
    wp, wn = np.maximum(w, 0.0), np.minimum(w, 0.0)
    c = w * a[None, :] - wp * low[None, :] - wn * high[None, :]
    z = (w * a[None, :]).sum(1) + b
    d = z - ((wp * low[None, :]).sum(1) + np.maximum(b, 0.0)) - ((wn * high[None, :]).sum(1) + np.minimum(b, 0.0))
    return distribute(c, stab(d, stabilizer), r)


def wsquare(w, b, a, r, stabilizer: float = 1e-6):
    c = w * w
    return distribute(c, stab(c.sum(1) + b * b, stabilizer), r)


def flat(w, b, a, r, stabilizer: float = 1e-6):
    c = (w != 0).astype(np.float64)  # the receptive field: inputs connected to output j
    return distribute(c, stab(c.sum(1), stabilizer), r)


def batched(fn, w, b, a: torch.Tensor, r: torch.Tensor, **kw) -> torch.Tensor:
    """Apply a one-sample reference rule to each row of a (B, n) input and (B, m) relevance."""
    a_np = a.detach().double().reshape(a.shape[0], -1).cpu().numpy()
    r_np = r.detach().double().reshape(r.shape[0], -1).cpu().numpy()
    out = [fn(w, b, a_np[k], r_np[k], **kw) for k in range(a_np.shape[0])]
    return torch.from_numpy(np.stack(out)).reshape(a.shape)


def layer_epsilon(layer: nn.Module, a: torch.Tensor, r: torch.Tensor, eps: float) -> torch.Tensor:
    """LRP-ε through one Linear/Conv layer for a batch: a (B, ...) input, r relevance at its output."""
    w, b = dense_matrix(layer, tuple(a.shape[1:]))
    return batched(epsilon, w, b, a, r, eps=eps)


def norm_split(x: torch.Tensor, y: torch.Tensor, r: torch.Tensor, eps: float = 1e-6):
    """Relevance of the sum z = x + y split in proportion to the terms: R_x = x R / stab(z)."""
    z = (x + y).detach().double().numpy()
    s = r.detach().double().numpy() / stab(z, eps)
    return torch.from_numpy(x.detach().double().numpy() * s), torch.from_numpy(y.detach().double().numpy() * s)
