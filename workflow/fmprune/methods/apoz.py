"""APoZ: Average Percentage of Zeros (Hu, Peng, Tai, Tang, "Network Trimming: A Data-Driven
Neuron Pruning Approach towards Efficient Deep Architectures", 2016). Tap: ``act``.

APoZ_c = fraction of exact zeros among the post-ReLU values of channel c over images and
positions; score = 1 − APoZ_c (fewer zeros = kept). Follows the paper's definition; NNI's
public pruner (ActivationAPoZRank) hooks the conv output and applies its own ReLU there, before
BN, while here the network's own post-BN ReLU output is read, as for every ``act`` criterion.

Defined for ReLU taps only: a config naming ``apoz`` for a model whose ``act`` taps are not
ReLU modules is refused at validation (``check_setting``), and a map with a negative value is
refused when scoring.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from .. import FmpruneError
from . import combine
from .params import ParamError
from .streaming import checked_maps

READS = "act"
PARAMS: dict = {}  # keyword arguments of score, with their checks (see .params)
RELUS = (nn.ReLU, nn.ReLU6)  # activations whose zeros are the ones APoZ counts


def check_setting(setting) -> None:
    modules = dict(setting.model.named_modules())
    for taps in setting.spec.taps("act").values():
        for tap in taps:
            if not isinstance(modules.get(tap), RELUS):
                kind = type(modules.get(tap)).__name__
                raise ParamError(setting.methods_key, f"apoz counts the zeros of ReLU outputs, but {setting.arch}'s "
                                                      f"act tap {tap} is a {kind}")


def statistics(x: torch.Tensor) -> torch.Tensor:
    """Per map of ``x`` [B, C, H, W]: its number of exact zeros and of values; float64 [B, C, 2]
    (counts, so that the fraction over images and positions is exact)."""
    if (x < 0).any():
        raise FmpruneError("apoz needs post-ReLU maps, and these hold negative values")
    zeros = (x == 0).sum(dim=(2, 3)).to(torch.float64)
    return torch.stack([zeros, torch.full_like(zeros, x.shape[2] * x.shape[3])], dim=2)


def from_statistics(counts: Iterable[torch.Tensor]) -> np.ndarray:
    """1 − fraction of exact zeros of each channel over images and positions; float64 [C]."""
    zeros, values = None, 0.0
    for s in counts:
        total = torch.as_tensor(s).to(device="cpu", dtype=torch.float64).sum(0)  # [C, 2]
        zeros = total[:, 0] if zeros is None else zeros + total[:, 0]
        values += float(total[0, 1])
    return (1.0 - zeros / values).numpy()


def channel_scores(batches: Iterable[torch.Tensor]) -> np.ndarray:
    return from_statistics(statistics(x) for x in checked_maps(batches, dtype=None))


def score(group) -> np.ndarray:
    return combine([from_statistics(group.statistics(tap)) for tap in group.taps])
