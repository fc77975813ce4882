"""HRank (Lin et al., CVPR 2020): filters whose feature maps have high average rank are kept.

Score of a channel = mean over the sample of ``torch.linalg.matrix_rank`` of each H×W map, with
torch's default tolerance σ_max·max(H, W)·eps of the map's dtype. Unlike HRank v1, which scored
each layer on a fresh augmented sample, the pipeline scores every layer on one fixed sample.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from .. import FmpruneError

TAP = "act"
PARAMS: dict = {}  # keyword arguments of channel_scores, with their checks (see .params)
NEEDS_FLOAT32 = True  # the rank tolerance (~1e-6 relative) is far below float16 rounding


def channel_scores(batches: Iterable[torch.Tensor]) -> np.ndarray:
    total, n = None, 0
    for x in batches:
        ranks = torch.linalg.matrix_rank(x).to(torch.float64).sum(0)  # [C]
        total = ranks if total is None else total + ranks
        n += x.shape[0]
    if not n:
        raise FmpruneError("hrank: no feature maps to score")
    return (total / n).numpy()
