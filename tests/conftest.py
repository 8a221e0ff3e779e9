"""Test-wide settings: the suite runs on 2 cores with 2 pytest-xdist workers, so each worker uses one thread."""

import torch

torch.set_num_threads(1)
