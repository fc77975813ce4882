"""Method registry and the one entry point the pipeline calls: :func:`score_groups`.

A feature-map method is a module with ``TAP`` ("act" or "conv", None when it reads weights
only) and ``PARAMS`` (the keywords it accepts from ``method_params``, each with a check run at
config validation, see :mod:`.params`). Most methods expose ``channel_scores(batches, **params)
-> [C]`` (higher = kept); CDP, RGD and FP-FMC have a few more steps, run here or by their own
rules. A group written by several convs has one tap per writer (METHODS.md's coupled-group rule):

- score-based methods divide each tap's scores by their mean absolute value over channels
  (the mean, for non-negative scores) and average them (see :func:`combine`);
- RGD averages the taps' similarity matrices and sums the writers' filter L1 norms;
- FP-FMC sums the taps' redundancy indices (each tap clustered on its own).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

from .. import FmpruneError
from ..models import ArchSpec
from . import cdp, cfdp, dct, fpfmc, hrank, l1, rgd
from . import random as random_method
from .params import ParamError

METHODS = {"hrank": hrank, "cfdp": cfdp, "dct": dct, "cdp": cdp, "rgd": rgd, "fpfmc": fpfmc, "l1": l1,
           "random": random_method}

RGD_DEFAULTS = {"hash_size": 8, "images": 128, "threshold": 0.7}
FPFMC_DEFAULTS = {"images": 128, "seed": 0}


@dataclass
class Scored:
    """Per-group channel scores, plus what a method's native plan form needs (RGD's graph)."""

    scores: dict[str, np.ndarray]
    extra: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def get(method: str):
    if method not in METHODS:
        raise FmpruneError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    return METHODS[method]


def tap_kind(method: str) -> str | None:
    """The feature-map tap a method reads, or None when it needs no feature maps."""
    return get(method).TAP


def check_params(method: str, params: dict) -> None:
    """Refuse unknown keywords and values a method's scorer would reject (its module's ``PARAMS``)."""
    accepted = get(method).PARAMS
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        allowed = ", ".join(sorted(accepted)) or "none"
        raise ParamError(f"method_params.{method}", f"unknown parameter {unknown[0]!r} (accepted: {allowed})")
    for key, value in params.items():
        try:
            accepted[key](value)
        except (ValueError, TypeError) as exc:
            raise ParamError(f"method_params.{method}.{key}", str(exc)) from None


def combine(per_tap: list[np.ndarray]) -> np.ndarray:
    """Mean of the taps' scores after dividing each by its mean absolute value over channels.

    The result is multiplied back by the taps' mean scale: a positive constant, so the ranking
    inside the group is exactly METHODS.md's, while the group stays on the same scale as
    single-tap groups (CDP's global selection compares scores across groups).
    """
    if len(per_tap) == 1:
        return per_tap[0]
    scales = [float(np.mean(np.abs(s))) for s in per_tap]
    normalised = [s / scale if scale > 0 else s for s, scale in zip(per_tap, scales)]
    return np.mean(normalised, axis=0) * (np.mean(scales) if max(scales) > 0 else 1.0)


def group_l1(spec: ArchSpec, model: nn.Module, group: str) -> list[np.ndarray]:
    """Filter L1 norms of every conv writing ``group``."""
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    return [l1.filter_norms(convs[p]) for p in spec.producers(group) if p in convs]


def score_groups(method: str, spec: ArchSpec, model: nn.Module, features=None,
                 params: dict | None = None, batch_size: int = 64) -> Scored:
    """Scores of every prunable group for ``method`` (higher = more important).

    FP-FMC is not scored here: its K selection, clustering and sorting are separate rules
    (see :mod:`fmprune.pipeline`).
    """
    module, params = get(method), dict(params or {})
    check_params(method, params)
    groups = spec.prunable_groups()
    if method == "random":
        return Scored({g: module.channel_scores(g, spec.groups[g].channels, **params) for g in groups})
    if method == "l1":
        return Scored({g: combine(group_l1(spec, model, g)) for g in groups})
    if method == "fpfmc":
        raise FmpruneError("fpfmc is scored by its kselect → cluster → sort rules")
    if features is None:
        raise FmpruneError(f"method {method} needs a feature file")

    def tap_batches(group: str, tap: str, images: int | None = None):
        if getattr(module, "NEEDS_FLOAT32", False) and features.dtype(tap) == np.float16:
            raise FmpruneError(f"{method} refuses float16 taps ({tap}): extract with features.dtype: float32")
        channels = spec.groups[group].tap_slices.get(tap)
        return features.batches(tap, batch_size, images=images, channels=channels)

    taps = {g: spec.groups[g].taps[module.TAP] for g in groups}
    if method == "rgd":
        p = {**RGD_DEFAULTS, **params}
        similarity = {
            g: rgd.group_similarity([rgd.similarity(tap_batches(g, t, p["images"]), hash_size=p["hash_size"])
                                     for t in taps[g]])
            for g in groups
        }
        norms = {g: np.sum(group_l1(spec, model, g), axis=0) for g in groups}
        scores = {g: rgd.ranking_scores(rgd.decompose(similarity[g], norms[g], p["threshold"])[1], norms[g])
                  for g in groups}
        return Scored(scores, {"similarity": similarity, "l1": norms})
    if method == "cdp":
        coe, documents = params.get("coe", 0.0), params.get("documents", "image")
        labels = features.labels if documents == "class" else None
        return Scored({
            g: combine([cdp.tfidf_scores(cdp.document_activations(tap_batches(g, t), labels=labels,
                                                                  documents=documents), coe=coe)
                        for t in taps[g]])
            for g in groups
        })
    return Scored({g: combine([module.channel_scores(tap_batches(g, t), **params) for t in taps[g]]) for g in groups})
