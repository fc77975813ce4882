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
            for group in entry.also:
                out[group] = rate
    for i, (entry, rate) in enumerate(zip(layout, rates)):
        if entry.secondary and rate not in (0.0, out[entry.group]):
            log.warning(
                "rate entry %d (%s) is %g but its group %s is set to %g by another entry: using %g",
                i, entry.label, rate, entry.group, out[entry.group], out[entry.group],
            )
    return out


def group_shape(spec: ArchSpec, shape: str) -> dict[str, float]:
    """A target's ``shape``: relative rates in [0, 1], mapped onto groups like a rate list."""
    return group_rates(spec, parse_rates(shape, closed=True))


def uniform_rates(spec: ArchSpec, rate: float) -> dict[str, float]:
    if not 0.0 <= rate < 1.0:
        raise FmpruneError(f"uniform rate must lie in [0, 1), got {rate}")
    return {g: rate for g in spec.prunable_groups()}


def keep_counts(spec: ArchSpec, rates: dict[str, float]) -> dict[str, int]:
    """Channels each rated group keeps; groups with ``width_of`` use their inputs' kept width."""
    counts: dict[str, int] = {}

    def kept_width(group: str) -> int:
        if group not in rates:
            return spec.groups[group].channels
        if group not in counts:
            base = spec.groups[group].width_of
            width = sum(kept_width(g) for g in base) if base else spec.groups[group].channels
            counts[group] = keep_count(width, rates[group])
        return counts[group]

    for group in rates:
        kept_width(group)
    return counts


def rank(scores: np.ndarray) -> np.ndarray:
    """Channel indices by descending score; ties go to the lower index (stable)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def kept_from_scores(spec: ArchSpec, scores: dict[str, np.ndarray], rates: dict[str, float]) -> dict[str, list[int]]:
    """Top :func:`keep_counts` channels of each group by score, as sorted index lists."""
    kept = {}
    for group, keep in keep_counts(spec, rates).items():
        channels = spec.groups[group].channels
        if group not in scores:
            raise FmpruneError(f"no scores for group {group}")
        if len(scores[group]) != channels:
            raise FmpruneError(f"group {group}: {len(scores[group])} scores for {channels} channels")
        kept[group] = sorted(rank(scores[group])[:keep].tolist())
    return kept


def macs_of(arch: str, kept: dict[str, list[int]]) -> int:
    """Conv + linear MACs of ``arch`` pruned to ``kept`` (only the widths matter)."""
    from .counting import pruned_sizes

    return pruned_sizes(arch, {g: len(k) for g, k in kept.items()})["macs"]


NATIVE_FORMS = {"cdp": "sparsity", "rgd": "threshold"}


def native_kept(method: str, spec: ArchSpec, form: str, value: float, scores: dict[str, np.ndarray],
                extra: dict[str, dict[str, np.ndarray]], min_channels: int = 1) -> dict[str, list[int]]:
    """Kept indices for a method's own plan form: CDP's global sparsity, RGD's threshold."""
    if NATIVE_FORMS.get(method) != form:
        owner = {v: k for k, v in NATIVE_FORMS.items()}[form]
        raise FmpruneError(f"plan form {form!r} belongs to method {owner}, not {method}")
    if form == "sparsity":
        from .methods.cdp import select_global

        kept = select_global(scores, value, min_channels=min_channels)
    else:
        from .methods.rgd import decompose

        kept = {g: decompose(sim, extra["l1"][g], value)[0] for g, sim in extra["similarity"].items()}
    return {g: sorted(int(i) for i in k) for g, k in kept.items()}


def reach_macs(arch: str, target: int, kept_at, lo: float, hi: float, more_pruning_when_higher: bool,
               steps: int = 40) -> tuple[dict[str, list[int]], float, int]:
    """Bisection on one knob for the least pruning whose MACs are at or below ``target``.

    ``kept_at(knob)`` gives a plan; MACs must fall as the knob moves toward more pruning (for
    RGD's threshold this holds usually, not always: the result is checked, never assumed).
    """
    prune_more, prune_less = (hi, lo) if more_pruning_when_higher else (lo, hi)
    best = kept_at(prune_more)
    best_macs, best_knob = macs_of(arch, best), prune_more
    if best_macs > target:
        raise FmpruneError(f"target of {target:,} MACs is out of reach: the most pruning gives {best_macs:,}")
    for _ in range(steps):
        mid = (prune_more + prune_less) / 2
        kept = kept_at(mid)
        macs = macs_of(arch, kept)
        if macs <= target:
            best, best_macs, best_knob, prune_more = kept, macs, mid, mid
        else:
            prune_less = mid
    return best, best_knob, best_macs


def shaped_rates(spec: ArchSpec, shape: dict[str, float] | None, scale: float) -> dict[str, float]:
    """Rates of a shared shape multiplied by ``scale`` (a uniform shape when none is given)."""
    base = shape or {g: 1.0 for g in spec.prunable_groups()}
    return {g: min(r * scale, 0.999) for g, r in base.items()}


def plan_applies(method: str, plan_cfg: dict) -> bool:
    """Whether ``method`` runs this operating point: the one place that decides.

    A native plan form (CDP's sparsity, RGD's threshold) applies to its own method only, and a
    plan's ``methods:`` list (e.g. a paper row: one seed's method) restricts it to those methods.
    """
    if "methods" in plan_cfg and method not in plan_cfg["methods"]:
        return False
    return all(form not in plan_cfg or owner == method for owner, form in NATIVE_FORMS.items())
