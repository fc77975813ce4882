"""Random baseline: uniform scores from a generator seeded by the config and the group name.

Seeding per group makes one group's ranking independent of which other groups are scored.
"""
from __future__ import annotations

import zlib

import numpy as np

from .params import integer

READS = "weights"  # nothing, in fact: the scores depend on the group's name and width only
PARAMS = {"seed": integer(0)}  # keyword arguments of score, with their checks


def channel_scores(group: str, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
    return rng.random(channels)


def score(group, *, seed: int = 0) -> np.ndarray:
    return channel_scores(group.name, group.channels, seed)
