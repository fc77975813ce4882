"""Random baseline: uniform scores from a generator seeded by the config and the group name.

Seeding per group makes one group's ranking independent of which other groups are scored.
"""
from __future__ import annotations

import zlib

import numpy as np

from .params import integer

TAP = None
PARAMS = {"seed": integer(0)}  # keyword arguments of channel_scores, with their checks


def channel_scores(group: str, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
    return rng.random(channels)
