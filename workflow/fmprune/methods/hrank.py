"""HRank (Lin et al., CVPR 2020): filters whose feature maps have high average rank are kept.

Score of a channel = mean over the sample of ``torch.linalg.matrix_rank`` of each H×W map, with
torch's default tolerance σ_max·max(H, W)·eps of the map's dtype. Unlike HRank v1, which scored
each layer on a fresh augmented sample, the pipeline scores every layer on one fixed sample.
The rank tolerance (~1e-6 relative in float32) is far below float16 rounding, so float16 taps
are refused: at config validation (``check_setting``) and again when scoring.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from .. import FmpruneError
from . import combine
from .params import ParamError
from .streaming import checked_maps, image_mean

READS = "act"
PARAMS: dict = {}  # keyword arguments of score, with their checks (see .params)


def check_setting(setting) -> None:
    if setting.dtype == "float16":
        raise ParamError("features.dtype", f"hrank (listed at {setting.methods_key}) refuses float16 taps: its "
                                           f"rank tolerance is below float16 rounding; use float32")


def statistics(x: torch.Tensor) -> torch.Tensor:
    """Numerical rank of every map of ``x`` [B, C, H, W] (in its own dtype); float64 [B, C]."""
    return torch.linalg.matrix_rank(x).to(torch.float64)


def channel_scores(batches: Iterable[torch.Tensor]) -> np.ndarray:
    return image_mean(statistics(x) for x in checked_maps(batches, dtype=None))


def score(group) -> np.ndarray:
    for tap in group.taps:
        if group.tap_dtype(tap) == np.float16:
            raise FmpruneError(f"hrank refuses float16 taps ({tap}): extract with features.dtype: float32")
    return combine([image_mean(group.statistics(tap)) for tap in group.taps])
