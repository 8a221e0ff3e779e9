"""Which relevance maps the ISNet variants penalise, produced through relprop's engine.

Every variant returns ``(logits, maps)`` from **one** forward pass of the model, with maps of shape
(B, K, C, h, w) that are differentiable with respect to the model's parameters (``create_graph=True``),
ready for :func:`relprop.isnet.heatmap_loss`:

=================  =====  ==========================================================================
variant            K      maps
=================  =====  ==========================================================================
``original``       C      one LRP map per logit: R seeded with z_c on class c (cost grows with C)
``dual``           2      all logits at once (R = z), once with the ISNet ε rules, once with z⁺
``selective``      1      the softmax log-odds η_c = log(p_c + δ) − log(1 − p_c + δ) of one class c;
                          R = z ⊙ ∂η_c/∂z at the logits, so the LRP-0 classifier layer gives a ⊙ Wᵀ ∂η_c/∂z
``stochastic``     1      per sample the top logit with probability 1/2 (5/11 with ``match="authors"``),
                          otherwise a uniformly drawn other class
``grad_input``     1      ablation: x ⊙ ∂p_top/∂x (Gradient × Input of the top softmax), no LRP rules
=================  =====  ==========================================================================

LRP rules (``match="relprop"``, preset ``isnet``): z^B with the data range [low, high] at the first layer, LRP-ε
(ε = 0.01, stabiliser ε·sign(z)) in hidden layers, LRP-0 at the classifier layer. BatchNorm in training mode uses
the batch statistics, detached in the relevance pass, so one sample's map depends on the other samples only
through the (detached) normalisation constants, as in the authors' older LRP Block.

``match="authors"`` (preset ``isnet_authors``) reproduces the Faster ISNet's LRP-Flex code (PedroRASB/FasterISNet)
where it differs:

- **First layer (z^B).** relprop: s = R / stab(z − W⁺l − W⁻h − b), the bias removed, ε = 1e-6. Authors:
  s = R / stab(z − W⁺l − W⁻h − l·b⁺ − h·b⁻), ε = 0.01: with l = 0, h = 1 the positive bias stays in the
  denominator (:class:`~relprop.rules.ZBox` ``bias="bounded"``).
- **First-layer BatchNorm in training mode.** relprop: folded with the batch statistics BatchNorm computes
  (biased variance), detached. Authors: folded with the *unbiased* batch variance (``torch.var``), detached,
  and z recomputed with those weights (``batch_variance="unbiased"``).
- **Hidden BatchNorm in training mode.** relprop: batch statistics detached, so one sample's map does not
  depend on the other samples' seeds. Authors: differentiated through the batch mean and variance by autograd,
  so the samples of a batch are coupled (:class:`~relprop.rules.Flex`).
- **Hidden layers.** relprop: LRP-ε on every Linear/Conv/BatchNorm, Norm(1e-6) at additions and pooling.
  Authors: the ε only where a ReLU follows (a / (a + ε) in their ReLU backward), LRP-0 (the plain gradient)
  elsewhere; equal on Linear/Conv + ReLU stacks, different where a convolution feeds a BatchNorm (DenseNet).
- **Double backpropagation at the first layer.** Authors: their z^B detaches the layer's bias and a folded
  BatchNorm's shift (``ZBox(bias_gradient=False)``); relprop differentiates through them. Values are the same.
- **Selective:** δ = 1e-7 (relprop) or 0.01 (authors). **Stochastic:** the top logit with probability 1/2
  (relprop) or 5/11 (authors: ``randint(0, 11) > 5``).

Small batches in training mode: a BatchNorm that normalises over very few values per channel (DenseNet121's last
block at 32x32 has 1x1 maps: 2 values in a batch of 2) has a batch variance far below the squared mean. With
detached statistics its affine map y = (γ/σ)·x + (β − γμ/σ) has a shift that nearly cancels the scaled input, and
LRP-ε (equally LRP-Flex with detached statistics, which is the same computation there) multiplies the relevance by
about |μ|/σ at each such layer: maps of 1e21 for logits below 1 on DenseNet121. Differentiating through the
statistics (``match="authors"``) keeps them far smaller (1e4 there) but not of the logits' order. With 8 or more
values per channel both stay of the logits' order; :class:`ISNetMaps` warns
(:class:`DegenerateBatchStatisticsWarning`) below 5.

``dual`` has no LRP-Flex form (the authors' dual map is their older LRP Block's) and is refused with
``match="authors"``; ``grad_input`` is the same in both.

:func:`rrr_penalty` is the Right-for-the-Right-Reasons baseline (Ross et al., 2017):
Σ ((1 − M) ⊙ ∂ Σ_c log p_c / ∂x)², per image, averaged over the batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..composites import Composite, isnet_authors, isnet_zplus
from ..composites import isnet as isnet_composite
from ..errors import InputError
from ..explainer import Explainer
from ..graph.batchnorm import batch_statistics_counts
from .loss import ConfigError, check_labels, check_mask

VARIANTS = ("original", "dual", "selective", "stochastic", "grad_input")
Variant = Literal["original", "dual", "selective", "stochastic", "grad_input"]
SelectiveClass = Literal["lowest", "label", "predicted"]
MATCHES = ("relprop", "authors")
Match = Literal["relprop", "authors"]
#: the default selective δ and the stochastic variant's probability of the top logit, per ``match``
SELECTIVE_DELTA = {"relprop": 1e-7, "authors": 0.01}
TOP_PROBABILITY = {"relprop": 0.5, "authors": 5 / 11}
#: a training-mode BatchNorm over fewer values per channel than this gets a DegenerateBatchStatisticsWarning
MIN_BATCH_STATISTICS = 5


class DegenerateBatchStatisticsWarning(UserWarning):
    """A BatchNorm in training mode normalises over so few values per channel that the maps can explode."""


def maps_per_image(variant: str, num_classes: int) -> int:
    """K, the number of maps per image a variant produces."""
    _check_variant(variant)
    return {"original": num_classes, "dual": 2}.get(variant, 1)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown ISNet variant {variant!r}; choose one of {', '.join(VARIANTS)}")


class ISNetMaps:
    """Produces the logits and the penalised relevance maps of an ISNet variant for a batch.

    Args:
        model: any model relprop can trace, returning logits (B, C). It is not modified; the maps use
            the mode the model is in (``model.train()`` during training: batch statistics, dropout).
        variant: ``original``, ``dual``, ``selective``, ``stochastic`` or ``grad_input``.
        low, high: input range for the z^B rule at the first layer (the data range).
        epsilon: ε of the LRP-ε rule in hidden layers (and of the first layer with ``match="authors"``).
        selective_class: for ``selective``, which class's log-odds to explain: ``"lowest"`` logit (the
            authors' training choice), the ``"label"``, or the ``"predicted"`` class.
        selective_delta: δ in η = log(p + δ) − log(1 − p + δ); None: 1e-7, or 0.01 with ``match="authors"``.
        match: ``"relprop"`` (default: the rules described in the module docstring) or ``"authors"`` (the Faster
            ISNet's LRP-Flex code: first-layer z^B keeping b⁺, BatchNorm differentiated through its batch
            statistics, δ = 0.01, top logit with probability 5/11); see the table in :mod:`relprop.isnet.variants`.
        hidden_layers: module names (as in ``model.named_modules()``) whose output relevance
            :meth:`maps_and_hidden` returns too (LRP deep supervision).
        leaf_modules: passed to :class:`~relprop.Explainer`.

    Call it as ``logits, maps = isnet_maps(x, labels)``; ``maps`` has shape (B, K, C, h, w).
    """

    def __init__(
        self,
        model: nn.Module,
        variant: Variant | str = "selective",
        *,
        low: float = 0.0,
        high: float = 1.0,
        epsilon: float = 0.01,
        selective_class: SelectiveClass | str = "lowest",
        selective_delta: float | None = None,
        match: Match | str = "relprop",
        hidden_layers: Sequence[str] = (),
        leaf_modules: Mapping[type, str] | None = None,
    ) -> None:
        _check_variant(variant)
        if match not in MATCHES:
            raise ConfigError(
                f"ISNetMaps(match={match!r}): use 'relprop' (relprop's ISNet rules) or 'authors' (the Faster ISNet "
                "authors' LRP-Flex code)"
            )
        if match == "authors" and variant == "dual":
            raise ConfigError(
                "ISNetMaps('dual', match='authors'): the authors' LRP-Flex has no dual (z+ and ε) form; use "
                "match='relprop' for the dual ISNet, or another variant with match='authors'"
            )
        if selective_class not in ("lowest", "label", "predicted"):
            raise ConfigError(f"selective_class={selective_class!r}: use 'lowest', 'label' or 'predicted'")
        if not high > low:
            raise ConfigError(f"ISNetMaps(low={low}, high={high}): need high > low (the input data range)")
        if isinstance(hidden_layers, str):
            raise ConfigError(
                f"hidden_layers must be a list of module names, not the string {hidden_layers!r}: "
                f"hidden_layers=[{hidden_layers!r}]"
            )
        if selective_delta is None:
            selective_delta = SELECTIVE_DELTA[match]
        if not selective_delta >= 0:
            raise ConfigError(f"ISNetMaps(selective_delta={selective_delta}): δ must be >= 0")
        self.model = model
        self.variant = variant
        self.match = match
        self.selective_class = selective_class
        self.selective_delta = float(selective_delta)
        self.top_probability = TOP_PROBABILITY[match]
        self.hidden_layers = tuple(hidden_layers)
        self._warned = False
        self._explainer: Explainer | None = None
        self._zplus: Composite | None = None
        if variant != "grad_input":
            rules = isnet_authors(epsilon, low, high) if match == "authors" else isnet_composite(epsilon, low, high)
            self._explainer = Explainer(model, rules, leaf_modules=leaf_modules)
            if variant == "dual":
                self._zplus = isnet_zplus(low, high)

    def __call__(
        self,
        x: Tensor,
        labels: Tensor | None = None,
        *,
        create_graph: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(logits, maps)`` for the batch ``x``; ``labels`` are needed for ``selective_class="label"``.

        ``generator`` draws the stochastic variant's classes (default: torch's global generator)."""
        logits, maps, _ = self._run(x, labels, create_graph, generator, ())
        return logits, maps

    def maps_and_hidden(
        self,
        x: Tensor,
        labels: Tensor | None = None,
        *,
        create_graph: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(logits, maps, hidden)``: as a call, plus the relevance at the output of each of ``hidden_layers``,
        ``hidden[name]`` of shape (B, K, C_l, h_l, w_l), from the same seeds (the same drawn classes)."""
        return self._run(x, labels, create_graph, generator, self.hidden_layers)

    def _run(
        self, x: Tensor, labels: Tensor | None, create_graph: bool, generator: torch.Generator | None,
        layers: tuple[str, ...],
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:  # fmt: skip
        if self.variant == "grad_input":
            if layers:
                raise ConfigError("ISNetMaps('grad_input') has no hidden-layer maps (not LRP): use another variant")
            logits, maps = _grad_input_maps(self.model, x, create_graph)
            return logits, maps, {}
        ex = self._explainer
        assert ex is not None
        others = [self._zplus] if self._zplus is not None else []
        with batch_statistics_counts() as counts:
            forward = ex.forward(x, composites=others, create_graph=create_graph, update_stats=True)
        if counts and not self._warned:
            self._warn_if_degenerate(counts, tuple(x.shape))
        pixel: list[Tensor] = []
        hidden: dict[str, list[Tensor]] = {name: [] for name in layers}
        for composite, seed in self._seeds(forward.logits, labels, generator):
            e = forward.explain(seed, composite=composite, layers=layers)
            pixel.append(e.relevance)
            for name in layers:
                hidden[name].append(e.layers[name])
        return forward.logits, torch.stack(pixel, 1), {name: torch.stack(v, 1) for name, v in hidden.items()}

    def _warn_if_degenerate(self, counts: Mapping[nn.Module, int], shape: tuple[int, ...]) -> None:
        """Warn (once per ISNetMaps) when a training-mode BatchNorm normalises over very few values per channel."""
        bn, n = min(counts.items(), key=lambda kv: kv[1])
        if n >= MIN_BATCH_STATISTICS:
            return
        self._warned = True
        name = next((k for k, m in self.model.named_modules() if m is bn), type(bn).__name__)
        how = (
            "through detached batch statistics each such BatchNorm's shift (-mean·γ/σ) nearly cancels its scaled "
            "input, and LRP-ε multiplies the relevance by about |mean|/σ per layer"
            if self.match == "relprop"
            else "the batch statistics are near-degenerate and their gradient is ill-conditioned"
        )
        warnings.warn(
            f"BatchNorm '{name}' normalises over only {n} values per channel in training mode (input {shape}); "
            f"{how}, so the ISNet maps can explode (DenseNet121 at 32x32 in batches of 2: 1e21). Use a larger batch "
            f"or input (at least {MIN_BATCH_STATISTICS}, better 8 or more, values per channel at the deepest "
            "BatchNorm), or the model in eval mode",
            DegenerateBatchStatisticsWarning,
            stacklevel=4,
        )

    def _seeds(
        self, logits: Tensor, labels: Tensor | None, generator: torch.Generator | None
    ) -> list[tuple[Composite | None, Tensor]]:
        """(composite, output relevance) per map; None is the explainer's ISNet composite."""
        b, c = logits.shape
        if self.variant == "original":
            eye = torch.eye(c, dtype=logits.dtype, device=logits.device)
            return [(None, logits * eye[k]) for k in range(c)]
        if self.variant == "dual":
            return [(None, logits), (self._zplus, logits)]
        if self.variant == "stochastic":
            idx = stochastic_classes(logits.detach(), generator, self.top_probability)
            return [(None, logits * F.one_hot(idx, c).to(logits.dtype))]
        # selective
        idx = self._selective_index(logits, labels)
        return [(None, logits * log_odds_gradient(logits, idx, self.selective_delta))]

    def _selective_index(self, logits: Tensor, labels: Tensor | None) -> Tensor:
        if self.selective_class == "lowest":
            return logits.detach().argmin(1)
        if self.selective_class == "predicted":
            return logits.detach().argmax(1)
        if labels is None:
            raise InputError("ISNetMaps(selective_class='label') needs the labels: call isnet_maps(x, labels)")
        labels = labels.reshape(-1).to(device=logits.device, dtype=torch.long)
        if labels.numel() != logits.shape[0]:
            raise InputError(f"got {labels.numel()} labels for a batch of {logits.shape[0]}")
        check_labels(labels, logits.shape[1])
        return labels


def stochastic_classes(
    logits: Tensor, generator: torch.Generator | None = None, top_probability: float = 0.5
) -> Tensor:  # fmt: skip
    """Per sample: the arg-max class with probability ``top_probability`` (1/2; the authors' code: 5/11),
    otherwise a uniformly drawn other class."""
    if not 0.0 <= top_probability <= 1.0:
        raise ConfigError(f"stochastic_classes(top_probability={top_probability}): must lie in [0, 1]")
    b, c = logits.shape
    top = logits.argmax(1)
    if c == 1:
        return top
    u = torch.rand(b, generator=generator, device="cpu").to(logits.device)
    other = torch.randint(0, c - 1, (b,), generator=generator, device="cpu").to(logits.device)
    other = other + (other >= top).long()  # uniform over the classes != top
    return torch.where(u < top_probability, top, other)


def log_odds_gradient(logits: Tensor, idx: Tensor, delta: float = 1e-7) -> Tensor:
    """∂η/∂z for η = log(p_c + δ) − log(1 − p_c + δ), p = softmax(z), c = ``idx`` per sample:
    (1/(p_c + δ) + 1/(1 − p_c + δ)) · p_c · (e_c − p). Differentiable (used inside the ISNet loss)."""
    low_precision = logits.dtype in (torch.float16, torch.bfloat16)
    p = torch.softmax(logits.float() if low_precision else logits, 1).to(logits.dtype)
    onehot = F.one_hot(idx, logits.shape[1]).to(logits.dtype)
    pc = (p * onehot).sum(1, keepdim=True)
    deta_dp = 1.0 / (pc + delta) + 1.0 / (1.0 - pc + delta)
    return deta_dp * pc * (onehot - p)


def _grad_input_maps(model: nn.Module, x: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise InputError(f"{type(model).__name__} must return logits of shape (B, C)")
        p = torch.softmax(logits, 1)
        top = p.gather(1, logits.detach().argmax(1, keepdim=True)).sum()
        (g,) = torch.autograd.grad(top, xg, create_graph=create_graph)
    if not create_graph:
        return logits.detach(), (g * x).detach().unsqueeze(1)
    return logits, (g * xg).unsqueeze(1)


def rrr_penalty(model: nn.Module, x: Tensor, mask: Tensor, *, create_graph: bool = True) -> tuple[Tensor, Tensor]:
    """Right for the Right Reasons: ``(logits, penalty)`` with penalty =
    mean over the batch of Σ ((1 − M) ⊙ ∂ Σ_c log p_c / ∂x)² (M = 1 on the foreground).

    ``mask``: (B, 1, H, W) or (B, H, W) of the input's size, bools or 0/1 values (checked by
    :func:`~relprop.isnet.loss.check_mask`: a uint8 {0, 255} mask is an error)."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"rrr_penalty needs images x of shape (B, C, H, W), got {got}")
    mask = check_mask(mask, batch=x.shape[0], size=x.shape[-2:])
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        logp = F.log_softmax(logits, 1)
        (g,) = torch.autograd.grad(logp.sum(), xg, create_graph=create_graph)
    background = 1.0 - mask.to(g.dtype)
    penalty = ((background * g) ** 2).flatten(1).sum(1).mean()
    return logits, penalty


__all__ = [
    "DegenerateBatchStatisticsWarning", "ISNetMaps", "MATCHES", "VARIANTS", "log_odds_gradient", "maps_per_image",
    "rrr_penalty", "stochastic_classes",
]  # fmt: skip
