"""Plan forms beyond rate lists: CDP's sparsity, RGD's threshold, MAC targets by bisection."""
import numpy as np
import pytest

import yaml

from fmprune import FmpruneError
from fmprune import config as cfglib
from fmprune.methods import rgd
from fmprune.methods.cdp import select_global
from fmprune.models import build
from fmprune.plan import (FORMS, fixed_rates, kept_from_scores, macs_of, native_kept, plan_applies, plan_form,
                          plan_kept, reach_macs, shaped_rates, target_knob, uniform_rates)

from .test_config import REPO

ARCH = "resnet20"


@pytest.fixture
def spec():
    return build(ARCH).channel_spec()


def random_scores(spec, seed=0):
    rng = np.random.default_rng(seed)
    return {g: rng.random(spec.groups[g].channels) for g in spec.prunable_groups()}


def random_graphs(spec, seed):
    """Symmetric random similarity matrices (unit diagonal) and L1 norms for every group."""
    rng = np.random.default_rng(seed)
    sims, norms = {}, {}
    for g in spec.prunable_groups():
        c = spec.groups[g].channels
        a = rng.random((c, c))
        sims[g] = (a + a.T) / 2
        np.fill_diagonal(sims[g], 1.0)
        norms[g] = rng.random(c)
    return sims, norms


def test_native_forms_apply_to_their_own_method_only():
    assert plan_applies("cdp", {"sparsity": 0.3}) and not plan_applies("hrank", {"sparsity": 0.3})
    assert plan_applies("rgd", {"threshold": 0.7}) and not plan_applies("cdp", {"threshold": 0.7})
    assert plan_applies("hrank", {"rates": "[0.1]*12"})


def test_cdp_sparsity_plan_is_the_global_selection(spec):
    scores = random_scores(spec)
    kept = native_kept("cdp", spec, "sparsity", 0.4, scores, {})
    expected = select_global(scores, 0.4)
    assert kept == {g: sorted(int(i) for i in v) for g, v in expected.items()}
    with pytest.raises(FmpruneError, match="belongs to method cdp"):
        native_kept("hrank", spec, "sparsity", 0.4, scores, {})


def test_rgd_threshold_plan_keeps_an_independent_set(spec):
    sims, norms = random_graphs(spec, 1)
    kept = native_kept("rgd", spec, "threshold", 0.8, random_scores(spec), {"similarity": sims, "l1": norms})
    for g, k in kept.items():
        block = sims[g][np.ix_(k, k)]
        np.fill_diagonal(block, 0)
        assert (block < 0.8).all()


def test_mac_target_by_bisection_lands_just_below_the_target(spec):
    scores = random_scores(spec)
    full = {g: list(range(spec.groups[g].channels)) for g in spec.prunable_groups()}
    base = macs_of(ARCH, full)
    target = int(base * 0.5)
    kept, scale, macs = reach_macs(ARCH, target, lambda s: kept_from_scores(spec, scores, shaped_rates(spec, None, s)),
                                   0.0, 0.999, True)
    assert macs <= target and macs >= 0.95 * target
    assert kept == kept_from_scores(spec, scores, uniform_rates(spec, scale))
    with pytest.raises(FmpruneError, match="out of reach"):
        reach_macs(ARCH, 10, lambda s: kept_from_scores(spec, scores, shaped_rates(spec, None, s)), 0.0, 0.999, True)


def test_rgd_similarity_threshold_bisection(spec):
    sims, norms = random_graphs(spec, 2)
    full = {g: list(range(spec.groups[g].channels)) for g in spec.prunable_groups()}
    target = int(macs_of(ARCH, full) * 0.7)
    kept, threshold, macs = reach_macs(
        ARCH, target, lambda t: native_kept("rgd", spec, "threshold", t, {}, {"similarity": sims, "l1": norms}),
        0.0, 1.0, False)
    assert macs <= target and 0.0 <= threshold <= 1.0
    assert rgd.decompose(sims["stage1"], norms["stage1"], threshold)[0].tolist() == kept["stage1"]


def test_a_plan_definition_has_one_form_and_plan_answers_what_it_implies(spec):
    definitions = [{"rates": "[0.1]*12"}, {"uniform": 0.3}, {"sparsity": 0.3}, {"threshold": 0.7},
                   {"target_macs": 10**7}, {"target_reduction": 0.5, "shape": "[1.]*12"},
                   {"target_latency_ms": 2.0}, {"target_speedup": 2.0, "batch": 64}]
    assert [plan_form(d) for d in definitions] == list(FORMS)
    with pytest.raises(FmpruneError, match="exactly one of"):
        plan_form({"uniform": 0.3, "sparsity": 0.3})
    assert fixed_rates(spec, {"uniform": 0.5}) == uniform_rates(spec, 0.5)
    assert all(fixed_rates(spec, d) is None for d in definitions[2:])
    assert target_knob("cdp", {"target_macs": 10**7}) == "sparsity"
    assert target_knob("rgd", {"target_reduction": 0.5}) == "threshold"
    assert target_knob("cdp", definitions[5]) == target_knob("hrank", {"target_macs": 10**7}) == "scale"


@pytest.mark.parametrize("definition,message", [
    ({"target_macs": 40_551_040}, "target_macs: 40,551,040 is not below the baseline's 40,551,040 MACs (resnet20)"),
    ({"target_macs": 10**9}, "target_macs: 1,000,000,000 is not below the baseline's 40,551,040 MACs (resnet20)"),
    ({"target_reduction": 1e-17},
     "target_reduction: 1e-17 leaves 40,551,040 MACs, which is not below the baseline's 40,551,040 MACs (resnet20)"),
])
def test_a_mac_target_the_baseline_already_meets_is_refused(spec, definition, message):
    """The bisection's least pruning still removes a channel per group: such a target is an error.

    An absolute target is refused when the config is validated; a relative one (in (0, 1) by the
    schema) only fails to be below the baseline by rounding, which the plan step reports, so that
    validation in every job does not count the baseline's MACs for it."""
    assert macs_of(ARCH, {}) == 40_551_040
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["models"]["resnet20"]["plans"]["big"] = definition
    if "target_macs" in definition:
        with pytest.raises(cfglib.ConfigError) as err:
            cfglib.validate(cfg)
        assert str(err.value) == f"config error at models.resnet20.plans.big.{message}"
    with pytest.raises(FmpruneError) as err:
        plan_kept(spec, "hrank", definition, random_scores(spec), {})
    assert str(err.value).endswith(message.split(": ", 1)[1])
    cfg["models"]["resnet20"]["plans"]["big"] = {"target_macs": 40_551_039}  # just below: a valid target
    cfglib.validate(cfg)
