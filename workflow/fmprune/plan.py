"""Plans: an operating point's form (rate list, uniform rate, a method's own knob, MAC target)
and how it turns channel scores into kept indices per group."""
from __future__ import annotations

import logging

import numpy as np

from . import FmpruneError
from . import methods as registry
from .models import ArchSpec, is_traced
from .ratelist import parse_rates

log = logging.getLogger(__name__)


def keep_count(channels: int, rate: float) -> int:
    """int(C·(1 − rate)) in float, as the seeds did (320·(1 − 0.8) gives 63), at least 1."""
    return max(1, int(channels * (1.0 - rate)))


def group_rates(spec: ArchSpec, rates: str | list[float]) -> dict[str, float]:
    """Map a seeds'-style rate list through the architecture's layout onto its groups."""
    layout = spec.rate_layout
    if isinstance(rates, str):
        # a few trailing entries are tolerated (see below); anything far longer is a typo or a bomb
        rates = parse_rates(rates, max_entries=2 * len(layout) + 16)
    expected = f"{spec.arch} expects {len(layout)} entries: " + ", ".join(e.label for e in layout[:4])
    expected += ", …" if len(layout) > 4 else ""
    # trailing entries are the seeds' habit with the hand-written layouts; a traced layout takes none
    if len(rates) < len(layout) or (len(rates) > len(layout) and is_traced(spec.arch)):
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
    return group_rates(spec, parse_rates(shape, closed=True, max_entries=2 * len(spec.rate_layout) + 16))


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


def rounded_width(requested: int, original: int, multiple: int) -> int:
    """``requested`` channels rounded to the nearest of the multiples of ``multiple`` up to
    ``original`` and ``original`` itself (the unpruned width runs as fast as the network ever
    did), a tie going to the larger; never 0: below ``multiple`` it rounds up."""
    below = requested - requested % multiple
    if below == requested:
        return requested
    above = min(below + multiple, original)
    return above if below == 0 or above - requested <= requested - below else below


def round_kept(spec: ArchSpec, kept: dict[str, list[int]], scores: dict[str, np.ndarray],
               multiple: int) -> dict[str, list[int]]:
    """Every group's kept set resized to :func:`rounded_width`: the group's channels ranked by
    descending score, its kept ones first, and the first ``width`` of them. A score-ranked set thus
    stays the top-scored channels of the rounded count; a method's own set (RGD's) grows by the
    best-scored others or loses its worst-scored members."""
    if multiple == 1:
        return kept
    out = {}
    for group, indices in kept.items():
        width = rounded_width(len(indices), spec.groups[group].channels, multiple)
        if width == len(indices):
            out[group] = indices
            continue
        if group not in scores:
            raise FmpruneError(f"no scores for group {group}: round_to needs them")
        order = rank(scores[group])
        inside = np.isin(order, indices)
        out[group] = sorted(np.concatenate([order[inside], order[~inside]])[:width].tolist())
    return out


def widths_of(kept: dict[str, list[int]]) -> dict[str, int]:
    return {g: len(k) for g, k in kept.items()}


def macs_of(arch: str, kept: dict[str, list[int]]) -> int:
    """Conv + linear MACs of ``arch`` pruned to ``kept`` (only the widths matter)."""
    from .counting import pruned_sizes

    return pruned_sizes(arch, {g: len(k) for g, k in kept.items()})["macs"]


# A plan definition has exactly one form key (the schema's oneOf): a fixed rate list or uniform
# rate, a method's own knob (CDP's sparsity, RGD's threshold), or a MAC target reached by bisection.
# Method -> the plan key of its own knob, as its module declares (methods.NativeForm).
NATIVE_FORMS = {m: form.key for m in registry.ORDER if (form := registry.native_form(m))}
NATIVE_OWNERS = {form: method for method, form in NATIVE_FORMS.items()}
RATE_FORMS = ("rates", "uniform")
TARGET_FORMS = ("target_macs", "target_reduction")
# Time targets: the same bisection as a MAC target, on a forward pass's measured median time.
TIME_FORMS = ("target_latency_ms", "target_speedup")
FORMS = (*RATE_FORMS, *NATIVE_OWNERS, *TARGET_FORMS, *TIME_FORMS)
# Keys of a time target saying how its forward passes are timed (see fmprune.latency.WidthTimer).
TIMING_KEYS = ("batch", "device", "threads", "tolerance")


def plan_form(plan_cfg: dict) -> str:
    """The form key of a plan definition, one of :data:`FORMS`."""
    forms = [key for key in FORMS if key in plan_cfg]
    if len(forms) != 1:
        raise FmpruneError(f"a plan needs exactly one of {', '.join(FORMS)}; found {', '.join(forms) or 'none'}")
    return forms[0]


def is_target(plan_cfg: dict) -> bool:
    """Whether a plan (e.g. an acc.json's definition) is a MAC target (time targets are not)."""
    return any(key in plan_cfg for key in TARGET_FORMS)


def native_methods(methods: list[str]) -> list[str]:
    """Those of ``methods`` with a plan form of their own."""
    return [m for m in methods if m in NATIVE_FORMS]


def target_knob(method: str, plan_cfg: dict) -> str:
    """What the bisection of a MAC or time target moves for ``method``: its own knob (CDP's sparsity,
    RGD's threshold) when the plan gives no ``shape``, else ``"scale"``, one factor over the
    shape (uniform by default) that gives every method the same widths."""
    return NATIVE_FORMS[method] if method in NATIVE_FORMS and "shape" not in plan_cfg else "scale"


def fixed_rates(spec: ArchSpec, plan_cfg: dict) -> dict[str, float] | None:
    """Group rates of a plan whose widths follow from its definition alone (a rate list or a
    uniform rate); None for the forms whose widths depend on the scores."""
    form = plan_form(plan_cfg)
    if form == "rates":
        return group_rates(spec, plan_cfg["rates"])
    if form == "uniform":
        return uniform_rates(spec, plan_cfg["uniform"])
    return None


def scale_shape(spec: ArchSpec, shape: str | None) -> dict[str, float] | None:
    """A target plan's ``shape`` as group rates (None: uniform); some rate must be above 0."""
    if shape is None:
        return None
    rates = group_shape(spec, shape)
    if max(rates.values()) <= 0:
        raise FmpruneError("all rates are 0, nothing to scale")
    return rates


def mac_target(plan_cfg: dict, baseline_macs: int) -> int:
    """The MACs a target plan aims at: its ``target_macs``, or what ``target_reduction`` leaves."""
    if "target_macs" in plan_cfg:
        return plan_cfg["target_macs"]
    return int(baseline_macs * (1 - plan_cfg["target_reduction"]))


def target_reduction(plan_cfg: dict, baseline_macs: int) -> float:
    """The fraction of the baseline's MACs a target plan removes."""
    if "target_reduction" in plan_cfg:
        return plan_cfg["target_reduction"]
    return 1 - plan_cfg["target_macs"] / baseline_macs


def checked_mac_target(arch: str, plan_cfg: dict) -> int:
    """:func:`mac_target` for ``arch``, which must lie below the baseline's MACs: the bisection's
    least pruning still removes a channel from every group, so a target the baseline already
    meets would prune for nothing."""
    baseline = macs_of(arch, {})
    target = mac_target(plan_cfg, baseline)
    if target >= baseline:
        given = (f"{target:,}" if "target_macs" in plan_cfg
                 else f"{plan_cfg['target_reduction']:g} leaves {target:,} MACs, which")
        raise FmpruneError(f"{given} is not below the baseline's {baseline:,} MACs ({arch})")
    return target


def check_definition(spec: ArchSpec, plan_cfg: dict) -> None:
    """Raise ``FmpruneError("<key>: <problem>")`` unless a plan definition holds for ``spec``'s
    architecture: its rate list or shape maps onto the layout, a shape goes with a target and
    has a rate above 0, timing keys go with a time target, and an absolute MAC target lies below
    the baseline's MACs (counting them is the costly part: every job validates its config)."""
    form = plan_form(plan_cfg)
    if "shape" in plan_cfg and form not in (*TARGET_FORMS, *TIME_FORMS):
        raise FmpruneError(f"shape: a shape needs one of {', '.join((*TARGET_FORMS, *TIME_FORMS))}")
    timing = [key for key in TIMING_KEYS if key in plan_cfg]
    if timing and form not in TIME_FORMS:
        raise FmpruneError(f"{timing[0]}: {timing[0]} goes with {' or '.join(TIME_FORMS)}")
    checks = [("rates", lambda: group_rates(spec, plan_cfg["rates"])),
              ("shape", lambda: scale_shape(spec, plan_cfg["shape"]))]
    if form == "target_macs":  # a target_reduction is checked by the plan step, which counts MACs anyway
        checks.append((form, lambda: checked_mac_target(spec.arch, plan_cfg)))
    for key, check in checks:
        if key in plan_cfg:
            try:
                check()
            except FmpruneError as exc:
                raise FmpruneError(f"{key}: {exc}") from None


def plan_kept(spec: ArchSpec, method: str, plan_cfg: dict, scores: dict[str, np.ndarray],
              extra: dict[str, dict[str, np.ndarray]], timer=None) -> tuple[dict[str, list[int]], dict]:
    """Kept indices per group of ``method``'s scores under a plan definition, and what the plan
    found: for a target, what its bisection reached (target and reached MACs or time, the knob and
    its value); with ``round_to``, the widths and MACs before rounding and the MACs after it.

    Rounding (:func:`round_kept`) happens inside a target's bisection, so the target holds for
    the rounded model. ``timer`` (widths -> timing, a :class:`fmprune.latency.WidthTimer`) times a
    time target's candidates; its bisection moves the knob a MAC target would.
    """
    form = plan_form(plan_cfg)
    multiple = plan_cfg.get("round_to", 1)
    min_channels = plan_cfg.get("min_channels", 1)
    if form in RATE_FORMS:
        requested, info = kept_from_scores(spec, scores, fixed_rates(spec, plan_cfg)), {}
        kept = round_kept(spec, requested, scores, multiple)
    elif form in NATIVE_OWNERS:
        requested, info = native_kept(method, spec, form, plan_cfg[form], scores, extra, min_channels), {}
        kept = round_kept(spec, requested, scores, multiple)
    else:
        knob = target_knob(method, plan_cfg)
        if knob == "scale":
            shape = scale_shape(spec, plan_cfg.get("shape"))

            def requested_at(value):
                return kept_from_scores(spec, scores, shaped_rates(spec, shape, value))

            lo, hi, higher_prunes_more = 0.0, 0.999 / (max(shape.values()) if shape else 1.0), True
        else:

            def requested_at(value):
                return native_kept(method, spec, knob, value, scores, extra, min_channels)

            native = registry.native_form(method)
            lo, hi, higher_prunes_more = native.low, native.high, native.higher_prunes_more

        def kept_at(value):
            return round_kept(spec, requested_at(value), scores, multiple)

        if form in TARGET_FORMS:
            target = checked_mac_target(spec.arch, plan_cfg)
            kept, value, macs = reach_macs(spec.arch, target, kept_at, lo, hi, higher_prunes_more)
            info = {"target_macs": target, "reached_macs": macs}
        else:
            kept, value, info = reach_time(plan_cfg, timer, kept_at, lo, hi, higher_prunes_more)
        info |= {"knob": knob, "knob_value": value}
        requested = requested_at(value)
    if multiple > 1:
        info |= {"round_to": multiple, "requested_widths": widths_of(requested),
                 "requested_macs": macs_of(spec.arch, requested), "reached_macs": macs_of(spec.arch, kept)}
    return kept, info


def native_kept(method: str, spec: ArchSpec, form: str, value: float, scores: dict[str, np.ndarray],
                extra: dict[str, dict[str, np.ndarray]], min_channels: int = 1) -> dict[str, list[int]]:
    """Kept indices for a method's own plan form (its module's ``native_kept``): CDP's global
    sparsity, RGD's threshold."""
    if NATIVE_FORMS.get(method) != form:
        raise FmpruneError(f"plan form {form!r} belongs to method {NATIVE_OWNERS[form]}, not {method}")
    kept = registry.get(method).native_kept(scores, extra, value, min_channels)
    return {g: sorted(int(i) for i in k) for g, k in kept.items()}


def reach_macs(arch: str, target: int, kept_at, lo: float, hi: float, more_pruning_when_higher: bool,
               steps: int = 40) -> tuple[dict[str, list[int]], float, int]:
    """Bisection on one knob for the least pruning whose MACs are at or below ``target``.

    ``kept_at(knob)`` gives a plan; MACs must fall as the knob moves toward more pruning (for
    RGD's threshold this holds usually, not always: the result is checked, never assumed).
    """
    return bisect_knob(lambda kept: macs_of(arch, kept), target, kept_at, lo, hi, more_pruning_when_higher,
                       steps, unit=lambda macs: f"{macs:,} MACs")


DEFAULT_TOLERANCE = 0.05  # a time target's default tolerance, a fraction of the target
TIME_STEPS = 12  # most bisection steps of a time target (each new width set is timed)


def reach_time(plan_cfg: dict, timer, kept_at, lo: float, hi: float,
               more_pruning_when_higher: bool) -> tuple[dict[str, list[int]], float, dict]:
    """Bisection for the least pruning whose median forward time is at or below a time target
    give or take its ``tolerance``: measured times are noisy, so a time within the tolerance of
    the target counts as reached (and ends the search). ``target_speedup`` S aims at the
    baseline's time (measured the same way) divided by S."""
    if timer is None:
        raise FmpruneError(f"a {' or '.join(TIME_FORMS)} plan needs a timer to measure its candidates")
    info = {}
    if "target_speedup" in plan_cfg:
        baseline_ms = timer({})["median_ms"]
        target = baseline_ms / plan_cfg["target_speedup"]
        info = {"target_speedup": plan_cfg["target_speedup"], "baseline_latency_ms": baseline_ms}
    else:
        target = plan_cfg["target_latency_ms"]
    tolerance = plan_cfg.get("tolerance", DEFAULT_TOLERANCE)
    kept, value, _ = bisect_knob(lambda k: timer(widths_of(k))["median_ms"], target, kept_at, lo, hi,
                                 more_pruning_when_higher, TIME_STEPS, tolerance, unit=lambda ms: f"{ms:.4g} ms")
    timing = timer(widths_of(kept))  # from the cache
    info = {"target_latency_ms": target, "tolerance": tolerance, "reached_latency_ms": timing["median_ms"],
            "latency_iqr_ms": timing["iqr_ms"], **info, "timing": timer.setting}
    if "baseline_latency_ms" in info:
        info["reached_speedup"] = info["baseline_latency_ms"] / timing["median_ms"]
    return kept, value, info


def bisect_knob(cost, target: float, kept_at, lo: float, hi: float, more_pruning_when_higher: bool,
                steps: int, tolerance: float = 0.0, unit=str) -> tuple[dict[str, list[int]], float, float]:
    """Bisection on one knob for the least pruning whose ``cost(kept)`` is at most
    ``target·(1 + tolerance)``; with a tolerance, a cost within ``target·(1 ± tolerance)`` stops
    the search early. Returns the kept sets, the knob's value and their cost."""
    prune_more, prune_less = (hi, lo) if more_pruning_when_higher else (lo, hi)
    best = kept_at(prune_more)
    best_cost, best_knob = cost(best), prune_more
    if best_cost > target * (1 + tolerance):
        raise FmpruneError(f"target of {unit(target)} is out of reach: the most pruning gives {unit(best_cost)}")
    for _ in range(steps):
        if tolerance and best_cost >= target * (1 - tolerance):
            break
        mid = (prune_more + prune_less) / 2
        kept = kept_at(mid)
        value = cost(kept)
        if value <= target * (1 + tolerance):
            best, best_cost, best_knob, prune_more = kept, value, mid, mid
        else:
            prune_less = mid
    return best, best_knob, best_cost


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
    return NATIVE_OWNERS.get(plan_form(plan_cfg), method) == method
