"""L1 (Li et al., ICLR 2017): filters with a large sum of absolute weights are kept.

Needs no feature maps. For a group written by several convs (a residual stream), each conv's
norms are divided by their mean before averaging, like every score-based method's taps.
"""
from __future__ import annotations

import numpy as np
import torch

from . import combine

READS = "weights"
PARAMS: dict = {}  # keyword arguments of score, with their checks (see .params)


def filter_norms(filters: torch.Tensor) -> np.ndarray:
    """L1 norm of each output filter (a row of ``filters``, :func:`fmprune.methods.output_filters`)."""
    return filters.abs().sum(1).double().numpy()


def score(group) -> np.ndarray:
    return combine([filter_norms(f) for f in group.filters()])
