"""The equal-cost comparison's operating points: generated plans, equal widths, BN re-estimation."""
import copy
import json
import re

import numpy as np
import pytest
import torch
import yaml

from fmprune import FmpruneError
from fmprune import config as cfglib
from fmprune.data import TensorSplit, load
from fmprune.methods import Scored
from fmprune.models import build
from fmprune.pipeline import _after_bn_reestimation, make_plan, save_scores
from fmprune.plan import group_shape, macs_of
from fmprune.ratelist import parse_rates

from .test_config import REPO


def compare_config(**compare):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["models"]["resnet20"]["compare"] = compare
    return cfg


def test_compare_block_generates_equal_width_and_native_plans():
    cfg = cfglib.validate(compare_config(targets=[0.3, 0.55]))
    plans = cfg["models"]["resnet20"]["plans"]
    # ResNet-20's layout has 12 entries; three fine-tuning seeds by default
    assert plans["eq30"] == {"target_reduction": 0.3, "shape": "[1.]*12", "seeds": [0, 1, 2]}
    assert plans["eq55"]["target_reduction"] == 0.55
    assert plans["native30"] == {"target_reduction": 0.3, "methods": ["cdp", "rgd"], "seeds": [0, 1, 2]}
    assert "rates30" in plans  # the config's own plans stay
    assert cfglib.validate(cfg) == cfg  # re-validating a resolved config (what every job does) changes nothing


def test_compare_block_options_and_errors():
    cfg = cfglib.validate(compare_config(targets=[0.5], native=False, shape="[0.]+[1.]*11", seeds=[4], recipe="digits-baseline"))
    plans = cfg["models"]["resnet20"]["plans"]
    assert "native50" not in plans and plans["eq50"]["shape"] == "[0.]+[1.]*11"
    assert cfglib.plan_seeds(cfg, "resnet20", "eq50") == [4] and cfglib.plan_seeds(cfg, "resnet20", "rates30") == [0]
    assert cfglib.finetune_recipe(cfg, "resnet20", "eq50") == "digits-baseline"
    with pytest.raises(cfglib.ConfigError, match=r"^config error at models\.resnet20\.compare\.shape: rate list has 3"):
        cfglib.validate(compare_config(shape="[1.]*3"))
    with pytest.raises(cfglib.ConfigError, match=r"models\.resnet20\.compare\.recipe: no recipe named 'nope'"):
        cfglib.validate(compare_config(recipe="nope"))
    taken = compare_config(targets=[0.3])
    taken["models"]["resnet20"]["plans"]["eq30"] = {"uniform": 0.3}
    with pytest.raises(cfglib.ConfigError, match=r"plans\.eq30: the name is taken"):
        cfglib.validate(taken)
    with pytest.raises(cfglib.ConfigError, match=r"compare\.targets\.0"):
        cfglib.validate(compare_config(targets=[1.2]))


def test_a_model_needs_plans_or_a_compare_block():
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["models"]["resnet20"]["plans"] = {}
    with pytest.raises(cfglib.ConfigError, match=r"models\.resnet20\.plans: the model has no plans"):
        cfglib.validate(cfg)
    cfg["models"]["resnet20"].update(compare={}, default_plan="eq50")
    assert set(cfglib.validate(cfg)["models"]["resnet20"]["plans"]) == {f"{s}{p}" for s in ("eq", "native") for p in (30, 50, 70)}


def test_a_shape_admits_relative_rate_one_but_a_rate_list_does_not():
    assert parse_rates("[0.]+[1.]*2", closed=True) == [0.0, 1.0, 1.0]
    with pytest.raises(FmpruneError, match=r"rates must lie in \[0, 1\), found 1.0"):
        parse_rates("[1.]*2")
    with pytest.raises(FmpruneError, match=r"rates must lie in \[0, 1\], found 1.5"):
        parse_rates("[1.5]", closed=True)
    shape = group_shape(build("resnet20").channel_spec(), "[0.]+[0.5]+[1.]*10")
    assert shape["stage1"] == 0.5 and shape["layer1.0.conv1"] == 1.0


def test_every_method_reaches_the_same_widths_at_an_equal_cost_plan(tmp_path):
    """Widths (hence MACs) depend only on the bisected scale, never on the scores."""
    cfg = cfglib.validate(compare_config(targets=[0.5], shape="[0.]+[0.5]*2+[1.]*9"))
    spec = build("resnet20").channel_spec()
    plans = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        scores = Scored({g: rng.random(spec.groups[g].channels) for g in spec.prunable_groups()})
        save_scores(tmp_path / f"s{seed}.npz", scores, {"method": "hrank", "sample_sha256": None})
        make_plan(cfg, "resnet20", "eq50", tmp_path / f"s{seed}.npz", tmp_path / f"p{seed}.json")
        plans.append(json.loads((tmp_path / f"p{seed}.json").read_text()))
    assert plans[0]["widths"] == plans[1]["widths"] == plans[2]["widths"]
    assert plans[0]["kept"] != plans[1]["kept"]
    full = {g: list(range(spec.groups[g].channels)) for g in spec.prunable_groups()}
    base = macs_of("resnet20", full)
    assert plans[0]["reached_macs"] <= plans[0]["target_macs"] == int(base * 0.5)
    assert plans[0]["reached_macs"] == macs_of("resnet20", plans[0]["kept"]) >= 0.97 * base * 0.5
    # the shape holds: the stream groups are pruned at half the block convs' rate
    assert plans[0]["widths"]["stage2"] > plans[0]["widths"]["layer2.0.conv1"]


def test_bn_reestimation_equals_statistics_over_the_sampled_images():
    """Running statistics after re-estimation are the batch-averaged statistics of the same images."""
    torch.manual_seed(0)
    net = build("resnet20", 10).eval()
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (48,))
    data = load("digits", {"kind": "digits", "resolution": 32, "test_fraction": 0.2, "split_seed": 0,
                           "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    data.train = TensorSplit(images, labels)
    data.test = TensorSplit(images[:16], labels[:16])
    ev = {"bn_images": 32, "bn_seed": 0, "batch_size": 32}  # one batch: exact batch statistics
    before = copy.deepcopy(net.state_dict())
    result = _after_bn_reestimation(ev, net, data, torch.device("cpu"))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the model itself is untouched
    assert result["bn_images"] == 32 and 0 <= result["top1_bn"] <= 100
    # by hand: the stem BN's statistics over those 32 images
    order = np.random.default_rng(0).choice(48, 32, replace=False)
    x = next(data.train.batches(order, 32, data.norm))[0]
    conv = net.conv1(x)
    recalibrated = copy.deepcopy(net)
    from torch.optim.swa_utils import update_bn

    update_bn(data.train.batches(order, 32, data.norm), recalibrated)
    torch.testing.assert_close(recalibrated.bn1.running_mean, conv.mean((0, 2, 3)))
    torch.testing.assert_close(recalibrated.bn1.running_var, conv.var((0, 2, 3), unbiased=True))


def test_test_flagged_only_keeps_the_flagged_test_images(tmp_path):
    from fmprune import data as datalib

    flags = np.array([True, False, True, False])
    split = TensorSplit(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4), flags)
    original = datalib._digits
    datalib._digits = lambda cfg: (split, split, 10)
    try:
        d = load("x", {"kind": "digits", "test_flagged_only": True, "normalize": {"mean": [0] * 3, "std": [1] * 3}})
        assert d.test.labels.tolist() == [0, 2] and d.test.flags.all() and len(d.train) == 4
        datalib._digits = lambda cfg: (split, TensorSplit(split.images, split.labels), 10)
        with pytest.raises(FmpruneError, match=r"datasets\.x\.test_flagged_only needs"):
            load("x", {"kind": "digits", "test_flagged_only": True, "normalize": {"mean": [0] * 3, "std": [1] * 3}})
    finally:
        datalib._digits = original


@pytest.mark.parametrize("name,finetunes", [("compare-quick", 48), ("compare-cifar10", 144)])
def test_compare_configs_dry_run(tmp_path, name, finetunes):
    """14 methods × 3 targets at equal widths + CDP/RGD × 3 native targets, times the seeds."""
    from .test_paper import absolute, dry_run

    cfg = absolute(yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text()))
    result = dry_run(tmp_path, cfg)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert re.search(rf"^finetune\s+{finetunes}$", out, re.M) and re.search(r"^compare\s+1$", out, re.M), out[-2000:]
    assert "results/resnet56/random/eq70/seed0/acc.json" in out and "results/resnet56/rgd/native30/plan.json" in out
    assert "results/resnet56/hrank/native30" not in out
