"""FPGM: filter pruning via geometric median (He, Liu, Wang, Hu, Yang, "Filter Pruning via
Geometric Median for Deep Convolutional Neural Networks Acceleration", CVPR 2019). Weights only.

Score of filter i of a conv = Σ_j ‖W_i − W_j‖₂ over the filters j of the same conv (flattened;
a linear or transposed conv writing the group: its output channels' weights);
filters near the geometric median (low sum) are the most replaceable and pruned first. A group
written by several convs (a residual stream) sums its writers' scores (METHODS.md).

Follows the paper's criterion and its public code (he-y/filter-pruning-geometric-median,
``get_filter_similar``: the column sums of the Euclidean distance matrix of the flattened
filters). Differs from that code: it mixes in norm-based pruning (``rate_norm``; 1 on CIFAR,
i.e. none) and prunes softly during training, re-selecting every epoch; here one ranking of the
trained model's filters is used, like every criterion of the pipeline.
"""
from __future__ import annotations

import numpy as np
import torch

READS = "weights"
PARAMS: dict = {}  # keyword arguments of score, with their checks (see .params)


def distance_sums(filters: torch.Tensor) -> np.ndarray:
    """Σ_j ‖W_i − W_j‖₂ for every output filter i (a row of ``filters``,
    :func:`fmprune.methods.output_filters`); float64 [C_out]."""
    w = filters.to(torch.float64)
    return torch.cdist(w, w).sum(1).numpy()


def score(group) -> np.ndarray:
    return np.sum([distance_sums(f) for f in group.filters()], axis=0)
