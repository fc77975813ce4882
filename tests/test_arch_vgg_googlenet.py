"""CIFAR VGG-16-BN and GoogLeNet: counts against the papers, layouts, surgery, every method.

Cost conventions met below (see METHODS.md, "Counting cost"):
- ``macs``        conv + linear multiply-accumulates (our ``count``);
- ``macs_thop``   thop 0.1.x as installed (BatchNorm charged 4 per output element, conv bias 0);
- ``seed_thop``   thop 0.0.x as the HRank-family seeds ran it: conv + linear MACs, plus 1 per
                  conv output element for the conv bias and 2 per BatchNorm output element.
                  It reproduces every VGG row of paper_results.csv to the printed digit.
Params: ``params`` counts BatchNorm's gamma and beta; the papers' baselines (14.98M, 6.15M)
are the count without them (``params_without_bn``).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fmprune import FmpruneError
from fmprune.counting import _forward_one, conv_linear_macs, count
from fmprune.models import build, input_size
from fmprune.models.googlenet import googlenet
from fmprune.models.vgg import vgg16_bn
from fmprune.plan import group_rates

from .arch_checks import (assert_every_method_runs, assert_pruned_equals_masked, paper_rows, params_without_bn,
                          sizes_for_rates)

def seed_thop_macs(model: nn.Module, size: int = 32) -> int:
    """Conv + linear MACs, + 1 per biased conv output element, + 2 per BatchNorm output element."""
    return conv_linear_macs(model, size, seeds_convention=True)


def pruned_for(arch: str, rates: str) -> nn.Module:
    """The pruned model itself (sizes_for_rates only returns its counts)."""
    from fmprune.plan import keep_counts
    from fmprune.surgery import pruned_copy

    model = build(arch)
    spec = model.channel_spec()
    kept = {g: torch.arange(k) for g, k in keep_counts(spec, group_rates(spec, rates)).items()}
    return pruned_copy(model, kept)


def paper_row(arch: str, plan: str | None) -> dict:
    rows = [r for r in paper_rows(arch) if (r["plan"] == plan if plan else r["method"] == "baseline")]
    assert rows, f"no paper_results.csv row for {arch} {plan}"
    return rows[0]


def half_unit(printed: str) -> float:
    """Half a unit of the printed figure's last digit: '131.17' -> 0.005, '2.5' -> 0.05."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return 0.5 * 10.0**-decimals + 1e-9


@pytest.mark.parametrize("arch", ["vgg16_bn", "googlenet"])
def test_every_tap_is_a_distinct_module_called_once(arch):
    from fmprune.features import taps_for

    model = {"vgg16_bn": vgg16_bn, "googlenet": googlenet}[arch](width=0.125)
    taps = taps_for(model.channel_spec(), {"act", "conv"})
    modules = dict(model.named_modules())
    calls = {t: 0 for t in taps}
    handles = [modules[t].register_forward_hook(lambda *_, t=t: calls.__setitem__(t, calls[t] + 1)) for t in taps]
    _forward_one(model, 32)
    for h in handles:
        h.remove()
    assert set(calls.values()) == {1}
    assert len({id(modules[t]) for t in taps}) == len(taps)


# ---------------------------------------------------------------------------------------- VGG


def test_vgg_baseline_counts_match_the_papers():
    model = build("vgg16_bn")
    c = count(model, "vgg16_bn")
    row = paper_row("vgg16_bn", None)
    # Conv bias present, as in the seeds' CIFAR VGG: 14.98M is the count without BN (14,978,250
    # without conv bias would print the same, but the seeds' pruned MACs below need the bias).
    assert c["params"] == 14_991_946
    assert params_without_bn(model) == 14_982_474
    assert abs(params_without_bn(model) / 1e6 - float(row["params_m"])) <= half_unit(row["params_m"])
    # 313.73M: conv + linear MACs are 313.46M (CDP's "313.5M"); +1 per conv-bias output gives
    # 313.74M. We assert the conv + linear count within 0.1 %.
    assert c["macs"] == 313_463_808
    assert abs(c["macs"] - float(row["macs_m"]) * 1e6) <= 0.001 * float(row["macs_m"]) * 1e6
    assert c["macs_thop"] > c["macs"] and c["flops"] == 2 * c["macs"]
    assert input_size("vgg16_bn") == 32


# plan -> our (params, params without BN, conv+linear MACs, seed-thop MACs)
VGG_ROWS = {
    "[0.21]*7+[0.75]*5": (2_766_541, 2_761_397, 130_566_528, 131_173_888),  # CFDP 2.76M / 131.17M
    "[0.45]*7+[0.78]*5": (1_901_836, 1_897_408, 66_521_088, 66_950_272),  # FP-FMC 1.90M / 66.95M
    "[0.50]*7+[0.95]*5": (872_965, 869_515, 49_484_520, 49_864_528),  # DCT 0.87M / 49.86M
    "[0.3]*7+[0.75]*5": (2_505_793, 2_500_859, 104_242_752, 104_781_568),  # FP-FMC 2.5M / 104.78M
}


@pytest.mark.parametrize("plan", list(VGG_ROWS))
def test_vgg_seed_configurations_reproduce_the_papers(plan):
    """Params (without BN) and seed-thop MACs equal the paper's to its printed digit."""
    row = paper_row("vgg16_bn", plan)
    params, nobn, macs, seed = VGG_ROWS[plan]
    model = pruned_for("vgg16_bn", plan)
    c = sizes_for_rates(build("vgg16_bn"), "vgg16_bn", plan)
    assert (c["params"], params_without_bn(model), c["macs"], seed_thop_macs(model)) == (params, nobn, macs, seed)
    assert abs(nobn / 1e6 - float(row["params_m"])) <= half_unit(row["params_m"])
    assert abs(seed / 1e6 - float(row["macs_m"])) <= half_unit(row["macs_m"])
    # Our conv + linear count and the installed thop's bracket the paper's figure.
    assert c["macs"] < float(row["macs_m"]) * 1e6 < c["macs_thop"]


def test_vgg_every_paper_rates_row_is_covered():
    plans = {r["plan"] for r in paper_rows("vgg16_bn") if r["plan_kind"] == "rates"}
    assert plans <= set(VGG_ROWS), plans - set(VGG_ROWS)


def test_vgg_layout_and_groups():
    spec = build("vgg16_bn").channel_spec()
    assert len(spec.rate_layout) == 12
    convs = [g for g in spec.groups]
    assert len(convs) == 13 and spec.prunable_groups() == convs[:12]
    assert not spec.groups["features.conv16"].prunable  # conv 13 feeds the classifier
    # The act tap is each conv's own ReLU (convs 2, 4, 7, 10 are followed by a max-pool).
    assert spec.groups["features.conv1"].taps == {"act": ("features.relu1",), "conv": ("features.conv1",)}
    assert spec.groups["features.conv12"].taps["act"] == ("features.relu12",)
    rates = group_rates(spec, "[0.21]*7+[0.75]*5")
    assert rates["features.conv0"] == 0.21 and rates["features.conv14"] == 0.75
    assert rates["features.conv8"] == 0.21 and rates["features.conv10"] == 0.75  # entries 7, 8 = convs 7, 8
    with pytest.raises(FmpruneError, match="expects 12 entries"):
        group_rates(spec, "[0.2]*11")


def test_vgg_state_dict_uses_the_seeds_names():
    keys = set(build("vgg16_bn").state_dict())
    assert {"features.conv0.weight", "features.conv0.bias", "features.norm0.running_var", "features.conv16.bias",
            "classifier.linear1.weight", "classifier.norm1.running_mean", "classifier.linear2.bias"} <= keys
    assert not any("pool" in k or "relu" in k for k in keys)


def test_vgg_pruned_equals_masked():
    gen = torch.Generator().manual_seed(0)
    assert_pruned_equals_masked(build("vgg16_bn"), torch.randn(3, 3, 32, 32, generator=gen))


def test_vgg_every_method_runs(tmp_path):
    torch.manual_seed(0)
    assert_every_method_runs(vgg16_bn(width=0.125), torch.randn(4, 3, 32, 32), tmp_path)


# ---------------------------------------------------------------------------------- GoogLeNet


def test_googlenet_baseline_counts_match_the_papers():
    model = build("googlenet")
    c = count(model, "googlenet")
    row = paper_row("googlenet", None)
    assert c["params"] == 6_166_250
    assert params_without_bn(model) == 6_150_442  # the papers' 6.15M is the count without BN
    assert abs(params_without_bn(model) / 1e6 - float(row["params_m"])) <= half_unit(row["params_m"])
    assert c["macs"] == 1_521_756_160  # papers: 1.52G (conv + linear)
    assert abs(c["macs"] / 1e9 - float(row["macs_m"]) / 1e3) <= 0.005
    assert input_size("googlenet") == 32


# Two networks, each with the paper rows that name it (entry 0 is unused, so lists differing only
# there give one network): our (params, params without BN, conv+linear MACs).
GOOGLENET_NETS = {
    ("[0.3]+[0.6]*2+[0.7]*5+[0.8]*2", "[0.]+[0.6]*2+[0.7]*5+[0.8]*2"): (2_857_760, 2_846_636, 643_804_480),
    ("[0.4]+[0.85]*2+[0.9]*5+[0.9]*2", "[0.]+[0.85]*2+[0.9]*5+[0.9]*2"): (2_099_266, 2_089_394, 390_804_480),
}


@pytest.mark.parametrize("plans", list(GOOGLENET_NETS), ids=["0.65B", "0.39B"])
def test_googlenet_seed_configurations_match_the_papers(plans):
    """The papers print these to two significant digits of G (0.65B, 0.40B, 0.39B) and mix
    conventions, so each figure must match one of ours within ±5M MACs, and its params
    must match ours with or without BN to the printed digit:
      CFDP / FP-FMC 2.86M, 650M: params with BN (2.858M); seed-thop 649.2M (thop 651.1M;
        conv + linear 643.8M is 1 % lower).
      DCT 2.10M, 400M: params with BN (2.099M); seed-thop 395.4M, thop 397.0M.
      FP-FMC 2.09M, 390M: params without BN (2.089M); conv + linear 390.8M.
    """
    params, nobn, macs = GOOGLENET_NETS[plans]
    model = pruned_for("googlenet", plans[0])
    c = count(model, "googlenet")
    assert (c["params"], params_without_bn(model), c["macs"]) == (params, nobn, macs)
    ours = {"macs": c["macs"], "macs_thop": c["macs_thop"], "seed_thop": seed_thop_macs(model)}
    for plan in plans:
        for row in [r for r in paper_rows("googlenet") if r["plan"] == plan]:
            paper_params, paper_macs = float(row["params_m"]), float(row["macs_m"]) * 1e6
            assert min(abs(params / 1e6 - paper_params), abs(nobn / 1e6 - paper_params)) <= half_unit(row["params_m"])
            assert min(abs(v - paper_macs) for v in ours.values()) <= 5e6, (row["seed"], ours)


def test_googlenet_every_paper_rates_row_is_covered():
    plans = {r["plan"] for r in paper_rows("googlenet") if r["plan_kind"] == "rates"}
    covered = {p for net in GOOGLENET_NETS for p in net}
    assert plans <= covered, plans - covered


def test_googlenet_layout_and_groups():
    spec = build("googlenet").channel_spec()
    assert len(spec.rate_layout) == 10 and spec.rate_layout[0].group is None
    rates = group_rates(spec, "[0.3]+[0.6]*2+[0.7]*5+[0.8]*2")
    a3 = "inception_a3"
    # Each entry sets the 3×3 output and both 3×3 convs of the 5×5 branch.
    assert {g: rates.get(g) for g in (f"{a3}.branch3x3.3", f"{a3}.branch5x5.3", f"{a3}.branch5x5.6")} == {
        f"{a3}.branch3x3.3": 0.6, f"{a3}.branch5x5.3": 0.6, f"{a3}.branch5x5.6": 0.6,
    }, "plan.group_rates must set every group of a RateEntry (its `also` groups too)"
    # b5 feeds the classifier: only its 5×5 branch's middle conv.
    assert [g for g in rates if g.startswith("inception_b5")] == ["inception_b5.branch5x5.3"]
    assert len(rates) == 8 * 3 + 1 == len(spec.prunable_groups())
    assert not spec.groups["pre_layers.0"].prunable
    for unpruned in ("branch1x1.0", "branch3x3.0", "branch5x5.0", "branch_pool.1"):
        assert not spec.groups[f"{a3}.{unpruned}"].prunable
    # The next inception's four input convs and the linear read [1×1, 3×3, 5×5, pool].
    cat = (f"{a3}.branch1x1.0", f"{a3}.branch3x3.3", f"{a3}.branch5x5.6", f"{a3}.branch_pool.1")
    for consumer in ("branch1x1.0", "branch3x3.0", "branch5x5.0", "branch_pool.1"):
        assert spec.modules[f"inception_b3.{consumer}"].inp == cat
    assert spec.modules["linear"].inp[1] == "inception_b5.branch3x3.3"
    assert spec.groups[f"{a3}.branch5x5.3"].taps == {"act": (f"{a3}.branch5x5.5",), "conv": (f"{a3}.branch5x5.3",)}
    with pytest.raises(FmpruneError, match="expects 10 entries"):
        group_rates(spec, "[0.6]*9")  # FP-FMC's README gives 9; entry 0 is the unused stem


def test_googlenet_state_dict_uses_the_seeds_names():
    keys = set(build("googlenet").state_dict())
    assert {"pre_layers.0.weight", "pre_layers.1.running_mean", "inception_a3.branch1x1.0.bias",
            "inception_a3.branch3x3.4.weight", "inception_b5.branch5x5.7.running_var",
            "inception_b5.branch_pool.1.weight", "inception_b5.branch_pool.2.bias", "linear.weight"} <= keys
    # stem conv + BN, 9 × 7 conv + BN pairs, linear
    assert len([k for k in keys if k.endswith(".weight")]) == 2 + 9 * 7 * 2 + 1


def test_googlenet_pruned_equals_masked():
    gen = torch.Generator().manual_seed(1)  # a quarter-width copy: the same spec, 16× cheaper
    assert_pruned_equals_masked(googlenet(width=0.25), torch.randn(2, 3, 32, 32, generator=gen))


def test_googlenet_every_method_runs(tmp_path):
    torch.manual_seed(0)
    assert_every_method_runs(googlenet(width=0.125), torch.randn(4, 3, 32, 32), tmp_path)
