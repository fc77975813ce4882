"""Plans: from a rate list (or a uniform rate) and channel scores to kept indices per group."""
from __future__ import annotations

import logging

import numpy as np

from . import FmpruneError
from .models import ArchSpec
from .ratelist import parse_rates

log = logging.getLogger(__name__)


def keep_count(channels: int, rate: float) -> int:
    """int(C·(1 − rate)) in float, as the seeds did (320·(1 − 0.8) gives 63), at least 1."""
    return max(1, int(channels * (1.0 - rate)))


def group_rates(spec: ArchSpec, rates: str | list[float]) -> dict[str, float]:
    """Map a seeds'-style rate list through the architecture's layout onto its groups."""
    if isinstance(rates, str):
        rates = parse_rates(rates)
    layout = spec.rate_layout
    expected = f"{spec.arch} expects {len(layout)} entries: " + ", ".join(e.label for e in layout[:4])
    expected += ", …" if len(layout) > 4 else ""
    if len(rates) < len(layout):
        raise FmpruneError(f"rate list has {len(rates)} entries; {expected}")
    if len(rates) > len(layout):
        log.warning(
            "rate list has %d entries, %s expects %d: ignoring the trailing %s",
            len(rates), spec.arch, len(layout), rates[len(layout):],
        )
    out: dict[str, float] = {}
    for entry, rate in zip(layout, rates):
        if entry.group is not None and not entry.secondary:
            out[entry.group] = rate
    for i, (entry, rate) in enumerate(zip(layout, rates)):
        if entry.secondary and rate not in (0.0, out[entry.group]):
            log.warning(
                "rate entry %d (%s) is %g but its group %s is set to %g by another entry: using %g",
                i, entry.label, rate, entry.group, out[entry.group], out[entry.group],
            )
    return out


def uniform_rates(spec: ArchSpec, rate: float) -> dict[str, float]:
    if not 0.0 <= rate < 1.0:
        raise FmpruneError(f"uniform rate must lie in [0, 1), got {rate}")
    return {g: rate for g in spec.prunable_groups()}


def rank(scores: np.ndarray) -> np.ndarray:
    """Channel indices by descending score; ties go to the lower index (stable)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def kept_from_scores(spec: ArchSpec, scores: dict[str, np.ndarray], rates: dict[str, float]) -> dict[str, list[int]]:
    """Top ``keep_count`` channels of each group by score, as sorted index lists."""
    kept = {}
    for group, rate in rates.items():
        channels = spec.groups[group].channels
        if group not in scores:
            raise FmpruneError(f"no scores for group {group}")
        if len(scores[group]) != channels:
            raise FmpruneError(f"group {group}: {len(scores[group])} scores for {channels} channels")
        kept[group] = sorted(rank(scores[group])[: keep_count(channels, rate)].tolist())
    return kept
