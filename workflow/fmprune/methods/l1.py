"""L1 (Li et al., ICLR 2017): filters with a large sum of absolute weights are kept.

Needs no feature maps. For a group written by several convs (a residual stream), each conv's
norms are divided by their mean before averaging, like every score-based method's taps.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from . import combine

READS = "weights"
PARAMS: dict = {}  # keyword arguments of score, with their checks (see .params)


def filter_norms(conv: nn.Conv2d) -> np.ndarray:
    """L1 norm of each output filter of ``conv``."""
    return conv.weight.detach().abs().flatten(1).sum(1).double().numpy()


def score(group) -> np.ndarray:
    return combine([filter_norms(conv) for conv in group.writers()])
