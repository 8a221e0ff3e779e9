"""The settings of the R-LRP study: sizes, counts and perturbation sizes (full run and ``--quick``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .train import TrainSettings


@dataclass(frozen=True)
class Config:
    """Every size and count of one study run; :meth:`quick_config` is the tiny ``--quick`` variant."""

    quick: bool = False
    threads: int = 2
    seed: int = 0
    # MNIST models (28²)
    mnist_per_class: int = 10
    mnist_pf_steps: int = 16
    mnist_sanity_n: int = 20
    mnist_draws: int = 8
    mnist_timing_reps: int = 15
    train: TrainSettings = field(default_factory=TrainSettings)
    # ImageNet architectures: the expensive measures at small_size, NaN/Inf and time at full_size
    big_models: tuple[str, ...] = ("vgg16", "vgg19", "resnet50", "densenet121")
    nan_models: tuple[str, ...] = ("vgg16", "vgg19", "resnet50", "densenet121")
    small_size: int = 64
    small_n: int = 6
    small_patch: int = 4
    small_pf_steps: int = 16
    small_sanity_n: int = 3
    small_draws: int = 3
    small_nudge_n: int = 4
    full_size: int = 224
    full_n: int = 3
    bf16_n: int = 2
    # perturbation sizes
    noise: float = 1e-3  # input noise, relative to each image's standard deviation
    weight_noise: float = 1e-3  # weights and biases scaled by (1 + u), u ~ U(-weight_noise, weight_noise)
    nudge_delta: float = 1e-6  # nudged pre-activations land at +delta · std(layer output)
    nudge_limit: float = 1e-2  # only channels whose smallest |z| is below limit · std(layer output)
    pf_batch: int = 64

    @staticmethod
    def quick_config(threads: int = 2) -> Config:
        return Config(
            quick=True,
            threads=threads,
            mnist_per_class=1,
            mnist_pf_steps=4,
            mnist_sanity_n=2,
            mnist_draws=2,
            mnist_timing_reps=2,
            train=TrainSettings(train_per_class=60, epochs=1, batch_size=50),
            small_size=32,
            small_n=1,
            small_patch=8,
            small_pf_steps=4,
            small_sanity_n=1,
            small_draws=1,
            full_size=32,
            full_n=1,
            bf16_n=1,
            big_models=("resnet18", "densenet_tiny"),
            nan_models=("resnet18", "densenet_tiny"),
        )


__all__ = ["Config"]
