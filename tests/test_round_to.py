"""Hardware-friendly widths: ``round_to: N`` rounds every pruned width to a multiple of N."""
import json

import numpy as np
import pytest

from fmprune import config as cfglib
from fmprune.compare import _knob
from fmprune.methods import Scored
from fmprune.models import build
from fmprune.pipeline import make_plan, save_scores
from fmprune.plan import (kept_from_scores, macs_of, native_kept, plan_kept, rank, round_kept, rounded_width,
                          shaped_rates)

from .test_compare_plans import compare_config
from .test_plan_forms import ARCH, random_graphs, random_scores, spec  # noqa: F401 (fixture)


@pytest.mark.parametrize("requested,original,multiple,expected", [
    (5, 16, 8, 8),     # below the multiple: up, never to 0
    (1, 64, 8, 8),
    (11, 16, 8, 8),    # nearest
    (13, 16, 8, 16),
    (12, 16, 8, 16),   # a tie keeps more channels
    (24, 64, 8, 24),   # a multiple stays
    (17, 20, 8, 16),   # the original width counts as a candidate: 16 is nearer than 20
    (19, 20, 8, 20),   # 20 (unpruned) is nearer than 16; 24 would exceed the original
    (3, 4, 8, 4),      # a group narrower than the multiple keeps its width
    (7, 64, 1, 7),     # round_to 1 changes nothing
])
def test_rounded_width_by_hand(requested, original, multiple, expected):
    assert rounded_width(requested, original, multiple) == expected


def test_rounded_width_is_the_nearest_candidate_on_every_input():
    """Against the definition: the nearest of {N, 2N, … ≤ original} ∪ {original}, ties to the larger."""
    for multiple in range(1, 13):
        for original in range(1, 70):
            candidates = {k for k in range(multiple, original + 1, multiple)} | {original}
            for requested in range(1, original + 1):
                expected = min(candidates, key=lambda c: (abs(c - requested), -c))
                got = rounded_width(requested, original, multiple)
                assert got == expected, (requested, original, multiple)
                assert 1 <= got <= original and (got % multiple == 0 or got == original)


def test_rate_plan_rounds_to_the_top_scored_channels_and_reports_it(spec):
    scores = random_scores(spec)
    plain, info = plan_kept(spec, "hrank", {"uniform": 0.3}, scores, {})
    assert info == {}
    kept, info = plan_kept(spec, "hrank", {"uniform": 0.3, "round_to": 8}, scores, {})
    for group, indices in kept.items():
        channels = spec.groups[group].channels
        assert len(indices) == rounded_width(len(plain[group]), channels, 8)
        assert len(indices) % 8 == 0 or len(indices) == channels
        assert indices == sorted(rank(scores[group])[:len(indices)].tolist())  # the top-scored ones
    assert info["round_to"] == 8
    assert info["requested_widths"] == {g: len(k) for g, k in plain.items()}
    assert info["requested_macs"] == macs_of(ARCH, plain)
    assert info["reached_macs"] == macs_of(ARCH, kept) != info["requested_macs"]


def test_mac_target_is_honoured_by_the_rounded_model(spec):
    scores = random_scores(spec)
    base = macs_of(ARCH, {})
    for reduction in (0.3, 0.5, 0.7):
        kept, info = plan_kept(spec, "l1", {"target_reduction": reduction, "round_to": 8}, scores, {})
        assert info["reached_macs"] == macs_of(ARCH, kept) <= info["target_macs"] == int(base * (1 - reduction))
        assert all(len(k) % 8 == 0 for k in kept.values())  # ResNet-20's widths 16/32/64 are multiples of 8
        # the least pruning under the target: a hair less pruning, rounded, misses it
        less = round_kept(spec, kept_from_scores(spec, scores, shaped_rates(spec, None, info["knob_value"] - 1e-9)),
                          scores, 8)
        assert info["knob"] == "scale" and macs_of(ARCH, less) > info["target_macs"]


def test_native_forms_round_around_the_methods_own_choice(spec):
    scores = random_scores(spec)
    kept, info = plan_kept(spec, "cdp", {"sparsity": 0.35, "round_to": 8}, scores, {})
    own = native_kept("cdp", spec, "sparsity", 0.35, scores, {})
    assert info["requested_widths"] == {g: len(k) for g, k in own.items()}
    for g, k in kept.items():
        assert len(k) == rounded_width(len(own[g]), spec.groups[g].channels, 8)
        assert k == sorted(rank(scores[g])[:len(k)].tolist())
    sims, norms = random_graphs(spec, 3)
    extra = {"similarity": sims, "l1": norms}
    own = native_kept("rgd", spec, "threshold", 0.8, scores, extra)
    kept, _ = plan_kept(spec, "rgd", {"threshold": 0.8, "round_to": 8}, scores, extra)
    for g, k in kept.items():  # RGD's independent set grows by others or loses its worst-scored
        assert set(k) >= set(own[g]) if len(k) >= len(own[g]) else set(k) <= set(own[g])


def test_round_kept_keeps_widths_already_rounded(spec):
    scores = random_scores(spec)
    kept = kept_from_scores(spec, scores, {g: 0.5 for g in spec.prunable_groups()})
    assert round_kept(spec, kept, scores, 8) == kept  # 8, 16, 32 channels
    assert round_kept(spec, kept, scores, 1) is kept


def test_plan_json_shows_the_rounding_and_compare_passes_it_on(tmp_path):
    cfg = cfglib.validate(compare_config(targets=[0.5], round_to=8, native=False))
    assert cfg["models"]["resnet20"]["plans"]["eq50"]["round_to"] == 8
    spec = build(ARCH).channel_spec()
    save_scores(tmp_path / "s.npz", Scored(random_scores(spec)), {"method": "hrank", "sample_sha256": None})
    make_plan(cfg, "resnet20", "eq50", tmp_path / "s.npz", tmp_path / "plan.json")
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["round_to"] == 8 and set(plan["requested_widths"]) == set(plan["widths"])
    assert all(w % 8 == 0 for w in plan["widths"].values())
    assert plan["reached_macs"] == macs_of(ARCH, plan["kept"]) <= plan["target_macs"]
    assert _knob(plan) == f"scale={plan['knob_value']:.3g}, round_to=8"


@pytest.mark.parametrize("value,message", [
    (0, "config error at models.resnet20.plans.r.round_to: 0 is less than the minimum of 1"),
    (2.5, "config error at models.resnet20.plans.r.round_to: 2.5 is not of type 'integer'"),
    ("8", "config error at models.resnet20.plans.r.round_to: '8' is not of type 'integer'"),
])
def test_round_to_must_be_a_positive_integer(value, message):
    cfg = compare_config(targets=[0.5])
    cfg["models"]["resnet20"]["plans"]["r"] = {"uniform": 0.3, "round_to": value}
    with pytest.raises(cfglib.ConfigError) as err:
        cfglib.validate(cfg)
    assert str(err.value) == message
    cfg["models"]["resnet20"]["plans"].pop("r")
    cfg["models"]["resnet20"]["compare"]["round_to"] = value
    with pytest.raises(cfglib.ConfigError, match=r"^config error at models\.resnet20\.compare\.round_to: "):
        cfglib.validate(cfg)
