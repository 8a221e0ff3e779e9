"""Operations that tracing writes out in primitive steps, so that relevance rules see their parts.

- ``nn.MultiheadAttention`` (a leaf module for ``torch.fx``) becomes its projections (Linear steps), q·kᵀ
  (a product), the scaling, masks, softmax, dropout, attention × v (a product) and the output projection.
- ``F.scaled_dot_product_attention`` becomes q·kᵀ, scaling, masks, softmax and attention × v.
- torchvision's ``stochastic_depth`` (wrapped as one call for ``torch.fx``) is the identity when it is inactive
  (eval mode or p = 0), as timm's ``drop_path`` already is when traced.

Each decomposition runs on the tracer's proxies and computes what the original computes (tests compare
outputs); parameters are read through the tracer so that tracing never adds attributes to the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UnsupportedLayerError

#: returned by a decomposition that keeps the original call as one node
KEEP = object()


def _attention(q: Any, k: Any, v: Any, scale: Any, bias: Any, dropout_p: float, training: bool) -> tuple[Any, Any]:
    """softmax(q kᵀ · scale + bias) v, and the attention weights."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    attn = torch.softmax(scores, dim=-1)
    if dropout_p:
        attn = F.dropout(attn, dropout_p, training)
    return torch.matmul(attn, v), attn


@torch.fx.wrap
def mask_to_bias(mask: torch.Tensor, dtype: torch.dtype, device: torch.device, attend: bool = True) -> torch.Tensor:
    """An attention mask as an additive bias: a bool mask becomes 0 / −inf (``attend``: True marks the positions to
    attend, as in scaled_dot_product_attention; False: True marks those to ignore, as in MultiheadAttention)."""
    if mask.dtype == torch.bool:
        drop = ~mask if attend else mask
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(drop.to(device), float("-inf"))
    return mask.to(dtype=dtype, device=device)


@torch.fx.wrap
def causal_bias(n: int, m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The additive bias of a causal mask for scores (…, n, m): −inf above the diagonal."""
    keep = torch.ones(n, m, dtype=torch.bool, device=device).tril()
    return torch.zeros(n, m, dtype=dtype, device=device).masked_fill(~keep, float("-inf"))


def sdpa(
    query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
    scale: float | None = None, enable_gqa: bool = False,
) -> Any:  # fmt: skip
    """``F.scaled_dot_product_attention`` written out."""
    if enable_gqa:
        raise UnsupportedLayerError(
            "scaled_dot_product_attention(enable_gqa=True) is not supported; repeat the key/value heads "
            "explicitly (k.repeat_interleave(groups, dim=-3)) before the call"
        )
    if not isinstance(dropout_p, (int, float)) or not isinstance(is_causal, bool):
        return KEEP
    factor = scale if scale is not None else query.size(-1) ** -0.5
    bias = None
    if attn_mask is not None:
        bias = mask_to_bias(attn_mask, query.dtype, query.device)
    if is_causal:
        causal = causal_bias(query.size(-2), key.size(-2), query.dtype, query.device)
        bias = causal if bias is None else bias + causal
    out, _ = _attention(query, key, value, factor, bias, float(dropout_p), True)
    return out


def multihead_attention(
    tracer: fx.Tracer, m: nn.MultiheadAttention, query: Any, key: Any, value: Any, key_padding_mask: Any = None,
    need_weights: bool = True, attn_mask: Any = None, average_attn_weights: bool = True, is_causal: bool = False,
) -> tuple[Any, Any]:  # fmt: skip
    """``nn.MultiheadAttention.forward`` written out (projections, per-head attention, output projection)."""
    path = tracer.path_of_module(m)

    def param(name: str) -> Any:
        return tracer.create_proxy("get_attr", f"{path}.{name}", (), {})

    if m.bias_k is not None or m.add_zero_attn:
        raise UnsupportedLayerError(
            f"module '{path}' (MultiheadAttention) uses add_bias_kv or add_zero_attn, which relprop does not "
            "support; build the attention without them"
        )
    e, h = m.embed_dim, m.num_heads
    d = e // h
    if not m.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    if m._qkv_same_embed_dim:
        w = param("in_proj_weight")
        ws = [w[:e], w[e : 2 * e], w[2 * e :]]
    else:
        ws = [param("q_proj_weight"), param("k_proj_weight"), param("v_proj_weight")]
    bs: list[Any] = [None, None, None]
    if m.in_proj_bias is not None:
        b = param("in_proj_bias")
        bs = [b[:e], b[e : 2 * e], b[2 * e :]]
    q, k, v = (F.linear(t, wi, bi) for t, wi, bi in zip((query, key, value), ws, bs))

    def heads(t: Any) -> Any:
        return t.reshape(t.shape[0], t.shape[1], h, d).transpose(1, 2)

    bias = None
    if attn_mask is not None:
        # MultiheadAttention's bool masks mark the positions NOT to attend
        bias = mask_to_bias(attn_mask, query.dtype, query.device, False)
    if key_padding_mask is not None:
        kpm = mask_to_bias(key_padding_mask, query.dtype, query.device, False)[:, None, None, :]
        bias = kpm if bias is None else bias + kpm
    out, attn = _attention(heads(q), heads(k), heads(v), d**-0.5, bias, m.dropout, m.training)
    out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], e)
    out = m.out_proj(out)
    if not m.batch_first:
        out = out.transpose(0, 1)
    weights = (attn.mean(1) if average_attn_weights else attn) if need_weights else None
    return out, weights


@torch.fx.wrap
def swin_shift(pad_h: int, pad_w: int, window: list[int], shift: list[int]) -> tuple[int, int]:
    """torchvision Swin's cyclic shift: none along a side the window covers entirely."""
    return (0 if window[0] >= pad_h else shift[0], 0 if window[1] >= pad_w else shift[1])


@torch.fx.wrap
def swin_mask(
    pad_h: int, pad_w: int, window: list[int], shift: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:  # fmt: skip
    """torchvision Swin's attention mask of shifted windows (zeros without a shift), shaped (1, nW, 1, N, N)."""
    n_w = (pad_h // window[0]) * (pad_w // window[1])
    n = window[0] * window[1]
    if sum(shift) == 0:
        return torch.zeros(1, n_w, 1, n, n, dtype=dtype, device=device)
    mask = torch.zeros((pad_h, pad_w), dtype=dtype, device=device)
    h_slices = ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None))
    w_slices = ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None))
    count = 0
    for h in h_slices:
        for w in w_slices:
            mask[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    mask = mask.view(pad_h // window[0], window[0], pad_w // window[1], window[1]).permute(0, 2, 1, 3).reshape(n_w, n)
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
    return mask.unsqueeze(1).unsqueeze(0)


@torch.fx.wrap
def swin_v2_qkv_bias(qkv_bias: torch.Tensor) -> torch.Tensor:
    """Swin V2 uses no key bias."""
    b = qkv_bias.clone()
    n = b.numel() // 3
    b[n : 2 * n] = 0
    return b


def shifted_window_attention(
    input: Any, qkv_weight: Any, proj_weight: Any, relative_position_bias: Any, window_size: list[int],
    num_heads: int, shift_size: list[int], attention_dropout: float = 0.0, dropout: float = 0.0,
    qkv_bias: Any = None, proj_bias: Any = None, logit_scale: Any = None, training: bool = True,
) -> Any:  # fmt: skip
    """torchvision's ``shifted_window_attention`` (Swin V1 and V2) without Python branches on the feature map's size:
    the shift and the mask are computed from the sizes in the forward pass (a shift of 0 and a zero mask where the
    original skips them)."""
    b, h, w, c = input.shape[0], input.shape[1], input.shape[2], input.shape[3]
    pad_r = (window_size[1] - w % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - h % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    pad_h, pad_w = x.shape[1], x.shape[2]
    shift = swin_shift(pad_h, pad_w, window_size, shift_size)
    x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    n_w = (pad_h // window_size[0]) * (pad_w // window_size[1])
    n = window_size[0] * window_size[1]
    x = x.view(b, pad_h // window_size[0], window_size[0], pad_w // window_size[1], window_size[1], c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b * n_w, n, c)
    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = swin_v2_qkv_bias(qkv_bias)
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if logit_scale is not None:  # cosine attention
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * (c // num_heads) ** -0.5).matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias
    attn = attn.view(x.size(0) // n_w, n_w, num_heads, n, n) + swin_mask(
        pad_h, pad_w, window_size, shift, input.dtype, input.device
    )
    attn = F.softmax(attn.view(-1, num_heads, n, n), dim=-1)
    attn = F.dropout(attn, p=attention_dropout, training=training)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), n, c)
    x = F.dropout(F.linear(x, proj_weight, proj_bias), p=dropout, training=training)
    x = x.view(b, pad_h // window_size[0], pad_w // window_size[1], window_size[0], window_size[1], c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, pad_h, pad_w, c)
    x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


def _stochastic_depth(input: Any, p: float, mode: str, training: bool = True) -> Any:
    return input if (training is False or p == 0.0) else KEEP


FUNCTIONS: dict[Callable[..., Any], Callable[..., Any]] = {F.scaled_dot_product_attention: sdpa}
#: calls that are the identity unless the model trains; in training they are a step of kind ``pass``
TRAINING_IDENTITIES: set[Any] = set()
try:  # torchvision is optional
    from torchvision.ops import stochastic_depth as _tv_stochastic_depth

    FUNCTIONS[_tv_stochastic_depth] = _stochastic_depth
    TRAINING_IDENTITIES.add(_tv_stochastic_depth)
    from torchvision.models import swin_transformer as _tv_swin

    FUNCTIONS[_tv_swin.shifted_window_attention] = shifted_window_attention
    FUNCTIONS[_tv_swin._patch_merging_pad] = _tv_swin._patch_merging_pad  # no branches: traced through
except ImportError:  # pragma: no cover
    pass

__all__ = ["FUNCTIONS", "KEEP", "TRAINING_IDENTITIES", "causal_bias", "mask_to_bias", "multihead_attention", "sdpa"]
