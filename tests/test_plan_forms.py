"""Plan forms beyond rate lists: CDP's sparsity, RGD's threshold, MAC targets by bisection."""
import numpy as np
import pytest

from fmprune import FmpruneError
from fmprune.methods import rgd
from fmprune.methods.cdp import select_global
from fmprune.models import build
from fmprune.plan import (kept_from_scores, macs_of, native_kept, plan_applies, reach_macs, shaped_rates,
                          uniform_rates)

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
