"""Time targets (target_latency_ms, target_speedup) on a synthetic timing model, the timing cache,
and the robust timer itself. Nothing here depends on the machine's speed."""
import json

import pytest
import torch
from torch import nn

from fmprune import FmpruneError
from fmprune import config as cfglib
from fmprune import latency
from fmprune.counting import pruned_sizes
from fmprune.latency import WidthTimer, pinned_threads, summarize, time_forward
from fmprune.methods import Scored
from fmprune.models import build
from fmprune.pipeline import make_plan, save_scores
from fmprune.plan import macs_of, plan_kept

from .test_compare_plans import compare_config
from .test_plan_forms import ARCH, random_scores, spec  # noqa: F401 (fixture)

A_MS, B_MS_PER_MAC = 0.5, 1e-7  # synthetic time = a + b·MACs: ResNet-20's 40.6M MACs take 4.56 ms


def synthetic(timer, widths):
    return {"median_ms": A_MS + B_MS_PER_MAC * pruned_sizes(timer.arch, widths)["macs"], "iqr_ms": 0.0}


@pytest.fixture
def timer(tmp_path):
    return WidthTimer(ARCH, 32, batch=64, threads=2, cache=tmp_path / "latency", measure=synthetic)


def test_latency_target_is_reached_within_its_tolerance(spec, timer):
    target, tolerance = 3.0, 0.02
    kept, info = plan_kept(spec, "l1", {"target_latency_ms": target, "tolerance": tolerance}, random_scores(spec), {},
                           timer)
    reached = A_MS + B_MS_PER_MAC * macs_of(ARCH, kept)
    assert info["reached_latency_ms"] == pytest.approx(reached)
    assert target * (1 - tolerance) <= reached <= target * (1 + tolerance)
    assert info["target_latency_ms"] == target and info["knob"] == "scale" and info["tolerance"] == tolerance
    assert info["timing"]["batch"] == 64 and info["timing"]["threads"] == 2 and info["timing"]["arch"] == ARCH


def test_speedup_target_divides_the_baselines_time(spec, timer):
    kept, info = plan_kept(spec, "l1", {"target_speedup": 2.0, "round_to": 8}, random_scores(spec), {}, timer)
    baseline = A_MS + B_MS_PER_MAC * macs_of(ARCH, {})
    assert info["baseline_latency_ms"] == pytest.approx(baseline)
    assert info["target_latency_ms"] == pytest.approx(baseline / 2)
    assert 2.0 / 1.05 <= info["reached_speedup"]  # within the default tolerance, 5 %
    assert info["reached_speedup"] == pytest.approx(baseline / (A_MS + B_MS_PER_MAC * macs_of(ARCH, kept)))
    assert all(len(k) % 8 == 0 for k in kept.values()) and info["round_to"] == 8  # timed after rounding


def test_a_width_set_is_timed_once(spec, timer, tmp_path):
    definition = {"target_speedup": 1.5}
    first, _ = plan_kept(spec, "l1", definition, random_scores(spec), {}, timer)
    assert timer.measured > 0
    again = WidthTimer(ARCH, 32, batch=64, threads=2, cache=tmp_path / "latency", measure=synthetic)
    second, _ = plan_kept(spec, "l1", definition, random_scores(spec), {}, again)
    assert second == first and again.measured == 0  # every width set came from the cache
    other = WidthTimer(ARCH, 32, batch=1, threads=2, cache=tmp_path / "latency", measure=synthetic)
    other({})
    assert other.measured == 1  # another batch size is another measurement


def test_an_unreachable_time_target_is_one_line(spec, timer):
    with pytest.raises(FmpruneError, match=r"^target of 0.1 ms is out of reach: the most pruning gives 0\.5"):
        plan_kept(spec, "l1", {"target_latency_ms": 0.1}, random_scores(spec), {}, timer)


def test_a_plan_job_times_on_its_own_device_once(tmp_path, monkeypatch):
    """make_plan with real timing (a loose target any machine meets): plan.json states the timing
    setting, and a second job finds every width set in the cache."""
    monkeypatch.setenv("FMPRUNE_CACHE", str(tmp_path / "cache"))
    cfg = compare_config(targets=[0.5])
    cfg["models"]["resnet20"]["plans"]["fast"] = {"target_speedup": 1.01, "tolerance": 0.5, "threads": 1, "round_to": 8}
    cfg = cfglib.validate(cfg)
    spec = build(ARCH).channel_spec()
    save_scores(tmp_path / "s.npz", Scored(random_scores(spec)), {"method": "l1", "sample_sha256": None})
    make_plan(cfg, "resnet20", "fast", tmp_path / "s.npz", tmp_path / "plan.json")
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["timing"]["threads"] == 1 and plan["timing"]["batch"] == 1 and plan["timing"]["device"].startswith("cpu")
    assert plan["reached_latency_ms"] <= plan["target_latency_ms"] * 1.5 and plan["round_to"] == 8
    cached = sorted((tmp_path / "cache" / "latency").iterdir())
    assert cached
    monkeypatch.setattr(latency, "time_forward", lambda *args, **kwargs: pytest.fail("measured again"))
    make_plan(cfg, "resnet20", "fast", tmp_path / "s.npz", tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text())["kept"] == plan["kept"]
    assert sorted((tmp_path / "cache" / "latency").iterdir()) == cached


def test_the_timer_pins_and_states_its_threads():
    before = torch.get_num_threads()
    timing = time_forward(nn.Conv2d(3, 4, 3), batch=2, size=8, threads=1, repeats=3, warmup=1)
    assert timing["threads"] == 1 and timing["repeats"] == 3 and timing["batch"] == 2
    assert 0 <= timing["min_ms"] <= timing["median_ms"] and timing["iqr_ms"] >= 0
    assert torch.get_num_threads() == before
    with pinned_threads(None):
        assert torch.get_num_threads() == before


def test_summary_is_median_and_interquartile_range():
    assert summarize([0.004, 0.001, 0.002, 0.003, 0.100]) == {
        "median_ms": 3.0, "iqr_ms": pytest.approx(2.0), "min_ms": 1.0, "repeats": 5}


@pytest.mark.parametrize("plan,message", [
    ({"uniform": 0.3, "batch": 64}, "plans.p.batch: batch goes with target_latency_ms or target_speedup"),
    ({"target_speedup": 0.5}, "plans.p.target_speedup: 0.5 is less than or equal to the minimum of 1"),
    ({"target_latency_ms": 5, "threads": 0}, "plans.p.threads: 0 is less than the minimum of 1"),
    ({"target_latency_ms": 5, "device": "tpu"}, "plans.p.device: 'tpu' is not one of ['cpu', 'cuda']"),
    ({"rates": "[0.1]*12", "shape": "[1.]*12"}, "plans.p.shape: a shape needs one of target_macs, target_reduction, "
                                                 "target_latency_ms, target_speedup"),
])
def test_time_target_config_errors_are_one_line(plan, message):
    cfg = compare_config(targets=[0.5])
    cfg["models"]["resnet20"]["plans"]["p"] = plan
    with pytest.raises(cfglib.ConfigError) as err:
        cfglib.validate(cfg)
    assert str(err.value) == f"config error at models.resnet20.{message}"
