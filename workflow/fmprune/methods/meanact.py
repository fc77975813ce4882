"""Mean activation (Molchanov et al., "Pruning Convolutional Neural Networks for Resource
Efficient Inference", ICLR 2017, one of its baseline criteria; NNI's ActivationMeanRank).
Tap: ``act``.

Score of channel c = mean of the ``act`` tap (after BN and the activation) over images and
positions; low-mean channels are pruned. Follows the paper's definition. NNI's public pruner
hooks the conv module's output and applies its own activation (ReLU by default) there, i.e.
before BN; here the network's own post-BN activation is read, as for every ``act`` criterion.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from . import combine
from .streaming import checked_maps

READS = "act"
PARAMS: dict = {}  # keyword arguments of score, with their checks (see .params)


def channel_scores(batches: Iterable[torch.Tensor]) -> np.ndarray:
    """Mean over images and positions of each channel; float64 [C]."""
    total, n_images = None, 0
    for x in checked_maps(batches):
        means = x.mean(dim=(2, 3)).sum(0)
        total = means if total is None else total + means
        n_images += x.shape[0]
    return (total / n_images).numpy()


def score(group) -> np.ndarray:
    return combine([channel_scores(group.maps(tap)) for tap in group.taps])
