"""Method registry and the one entry point the pipeline calls: :func:`score_groups`.

A feature-map method is a module with ``TAP`` ("act" or "conv") and
``channel_scores(batches, **params) -> [C]`` (higher = kept). A group written by several
convs has one tap per writer: each tap's scores are divided by their mean over channels and
the results averaged (METHODS.md's coupled-group rule).
"""
from __future__ import annotations

import numpy as np
from torch import nn

from .. import FmpruneError
from ..models import ArchSpec
from . import hrank, l1
from . import random as random_method

METHODS = {"hrank": hrank, "l1": l1, "random": random_method}


def get(method: str):
    if method not in METHODS:
        raise FmpruneError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    return METHODS[method]


def tap_kind(method: str) -> str | None:
    """The feature-map tap a method reads, or None when it needs no feature maps."""
    return get(method).TAP


def combine(per_tap: list[np.ndarray]) -> np.ndarray:
    """Mean of the taps' scores after dividing each by its mean over channels."""
    if len(per_tap) == 1:
        return per_tap[0]
    normalised = []
    for s in per_tap:
        mean = float(np.mean(s))
        normalised.append(s / mean if mean != 0 else s)
    return np.mean(normalised, axis=0)


def score_groups(method: str, spec: ArchSpec, model: nn.Module, features=None,
                 params: dict | None = None, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Scores of every prunable group for ``method`` (higher = more important)."""
    module, params = get(method), dict(params or {})
    groups = spec.prunable_groups()
    if method == "random":
        return {g: module.channel_scores(g, spec.groups[g].channels, **params) for g in groups}
    if method == "l1":
        convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        return {g: combine([l1.filter_norms(convs[p]) for p in spec.producers(g) if p in convs]) for g in groups}
    if features is None:
        raise FmpruneError(f"method {method} needs a feature file")
    scores = {}
    for g in groups:
        per_tap = []
        for tap in spec.groups[g].taps[module.TAP]:
            if getattr(module, "NEEDS_FLOAT32", False) and features.dtype(tap) == np.float16:
                raise FmpruneError(f"{method} refuses float16 taps ({tap}): extract with features.dtype: float32")
            channels = spec.groups[g].tap_slices.get(tap)
            per_tap.append(module.channel_scores(features.batches(tap, batch_size, channels=channels), **params))
        scores[g] = combine(per_tap)
    return scores
