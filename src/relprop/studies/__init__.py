"""Measured studies that write a Markdown report with figures (``relprop study NAME --out DIR``).

- :mod:`relprop.studies.rlrp`: Relative LRP against classical LRP, gradients and presets on a pretrained
  LeNet-5, a CNN trained here, and random VGG16 / VGG19 / ResNet50 / DenseNet121.
"""
