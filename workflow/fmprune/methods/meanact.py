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
from .streaming import checked_maps, image_mean

READS = "act"
PARAMS: dict = {}  # keyword arguments of score, with their checks (see .params)


def statistics(x: torch.Tensor) -> torch.Tensor:
    """Mean over positions of every map of ``x`` [B, C, H, W]; float64 [B, C]."""
    return x.to(torch.float64).mean(dim=(2, 3))


def channel_scores(batches: Iterable[torch.Tensor]) -> np.ndarray:
    """Mean over images and positions of each channel; float64 [C]."""
    return image_mean(statistics(x) for x in checked_maps(batches, dtype=None))


def score(group) -> np.ndarray:
    return combine([image_mean(group.statistics(tap)) for tap in group.taps])
