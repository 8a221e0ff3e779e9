"""Measured studies that write a Markdown report with figures (``relprop study NAME --out DIR``, or each
module's ``run_study`` from Python).

- :mod:`relprop.studies.rlrp` (a package: methods, train, cases, measure, perturb, figures, report, text,
  run): Relative LRP against classical LRP, gradients and presets on a pretrained LeNet-5, a CNN trained here,
  and random VGG16 / VGG19 / ResNet50 / DenseNet121.
- :mod:`relprop.studies.isnet`: plain vs RRR vs ISNet variants on digits with a synthetic background bias.
- :mod:`relprop.studies.cxr`: the same methods on the chest-X-ray-style benchmark, tested on a new hospital.
- :mod:`relprop.studies.common`: what the training studies share (job pool, run training and loading,
  aggregation over seeds, mean ± spread, curves figure, report lines).
"""
