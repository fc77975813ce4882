"""CIFAR DenseNet-40: counts against the papers, rate layout, surgery, taps, every method."""
import pytest
import torch
from torch import nn

from fmprune import FmpruneError
from fmprune.counting import count
from fmprune.models import build
from fmprune.models.densenet import CifarDenseNet
from fmprune.plan import group_rates, keep_counts
from fmprune.surgery import load_pruned, pruned_copy, save_pruned

from .arch_checks import (assert_every_method_runs, assert_pruned_equals_masked, bn_elements, paper_rows,
                          params_without_bn, sizes_for_rates)

ARCH = "densenet40"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build(ARCH).eval()


def test_baseline_counts_match_the_papers(model):
    (row,) = [r for r in paper_rows(ARCH) if r["plan_kind"] == "none"]
    c = count(model, ARCH)
    # Papers: 1.04M params without BN (1.06M with); fmprune's params include BN.
    assert params_without_bn(model) == 1_040_578 and round(1_040_578 / 1e6, 2) == float(row["params_m"])
    assert c["params"] == 1_059_298 and round(c["params"] / 1e6, 2) == 1.06
    # Conv + linear MACs: 282.92M. The papers' 282.00M matches no convention exactly (thop's, with
    # 2 ops per BN element, gives 287.71M); ours is 0.33% above it: tolerance 0.5%, exact value pinned.
    assert c["macs"] == 282_917_328
    assert abs(c["macs"] - float(row["macs_m"]) * 1e6) <= 0.005 * float(row["macs_m"]) * 1e6
    assert c["macs_seeds"] == c["macs"] + 2 * bn_elements(model, 32) == 287_709_648
    # The installed thop (0.1.1) charges 4 ops per affine BN element, the seeds' thop 2: macs_thop
    # (292.50M here) is not the seeds' convention; macs_seeds is.
    assert c["flops"] == 2 * c["macs"] and c["macs_thop"] > c["macs"]


# The seeds size a transition as floor(W·(1 − r)) of its *pruned* input width W (the spec's
# ``width_of``): params with BN, conv + linear MACs, the seeds' thop MACs, transition widths.
SEEDS = {
    "[0.]+[0.2]*12+[0.]+[0.2]*12+[0.]+[0.2]*12": (622_924, 169_583_640, 173_387_544, 132, 240),
    "[0.]+[0.3]*12+[0.1]+[0.3]*12+[0.1]+[0.3]*12": (451_882, 129_828_582, 133_168_230, 108, 183),
    "[0.]+[0.4]*12+[0.1]+[0.4]*12+[0.1]+[0.4]*12": (354_816, 103_208_988, 106_230_812, 97, 162),
}


def test_pruned_sizes_of_the_papers_rate_lists(model):
    rows = [r for r in paper_rows(ARCH) if r["plan_kind"] == "rates"]
    assert len(rows) == 4 and {r["plan"] for r in rows} == set(SEEDS)
    spec = model.channel_spec()
    for plan, (params, macs, macs_seeds, t1, t2) in SEEDS.items():
        ours = sizes_for_rates(model, ARCH, plan)
        assert (ours["params"], ours["macs"], ours["macs_seeds"]) == (params, macs, macs_seeds), plan
        keep = keep_counts(spec, group_rates(spec, plan))
        assert (keep["trans1.conv1"], keep["trans2.conv1"]) == (t1, t2), plan
        assert all(keep[g] == int(12 * (1 - r)) for g, r in group_rates(spec, plan).items() if g.startswith("dense"))
    for row in rows:
        # The papers' sizes are these widths counted by thop (params with BN; MACs with 2 ops per
        # BN element), printed to 0.01M: tolerance 0.005M params, 0.01M MACs (FP-FMC's 173.38M
        # against DCT's 173.39M for the same list: ours 173.3875M).
        ours = sizes_for_rates(model, ARCH, row["plan"])
        assert abs(ours["params"] / 1e6 - float(row["params_m"])) <= 0.005, row
        assert abs(ours["macs_seeds"] / 1e6 - float(row["macs_m"])) <= 0.01, row

def test_rate_layout(model):
    spec = model.channel_spec()
    layout = spec.rate_layout
    assert len(layout) == 39
    assert layout[0].group is None
    assert layout[13].group == "trans1.conv1" and layout[26].group == "trans2.conv1"
    assert [e.group for e in layout[1:13]] == [f"dense1.{i}.conv1" for i in range(12)]
    assert [e.group for e in layout[14:26]] == [f"dense2.{i}.conv1" for i in range(12)]
    assert [e.group for e in layout[27:39]] == [f"dense3.{i}.conv1" for i in range(12)]
    assert set(spec.prunable_groups()) == {e.group for e in layout[1:]}
    assert not spec.groups["conv1"].prunable and spec.groups["conv1"].channels == 24
    with pytest.raises(FmpruneError, match="39 entries"):
        group_rates(spec, "[0.]+[0.2]*36")


def test_concatenation_offsets(model):
    spec = model.channel_spec()
    io = spec.modules["dense1.2.conv1"]
    assert io.inp == ("conv1", "dense1.0.conv1", "dense1.1.conv1") and spec.modules["dense1.2.bn1"].out == io.inp
    assert spec.modules["trans1.conv1"].inp == ("conv1",) + tuple(f"dense1.{i}.conv1" for i in range(12))
    assert spec.modules["dense2.0.bn1"].out == ("trans1.conv1",)
    assert spec.modules["fc"].inp == spec.modules["bn"].out == ("trans2.conv1",) + tuple(
        f"dense3.{i}.conv1" for i in range(12))
    assert spec.groups["trans1.conv1"].channels == 168 and spec.groups["trans2.conv1"].channels == 312


def test_pruned_equals_masked(model):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert_pruned_equals_masked(model, x, plans=2)


def consumer_bn(relu: str) -> str:
    """The BN right before a tapped ReLU: ``dense2.3.relu`` -> ``dense2.3.bn1``, ``relu`` -> ``bn``."""
    return "bn" if relu == "relu" else relu.removesuffix("relu") + "bn1"


def test_taps_are_distinct_relus_whose_slices_hold_their_group(model):
    spec = model.channel_spec()
    modules = dict(model.named_modules())
    calls, outputs, bn_inputs = {}, {}, {}

    def hook(name):
        def fn(_m, inp, out):
            calls[name] = calls.get(name, 0) + 1
            outputs[name] = out
            bn_inputs[name] = inp[0]
        return fn

    names = {t for g in spec.prunable_groups() for kind in ("act", "conv") for t in spec.groups[g].taps[kind]}
    bns = {consumer_bn(n) for g in spec.prunable_groups() for n in spec.groups[g].taps["act"]}
    handles = [modules[n].register_forward_hook(hook(n)) for n in names | bns]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert all(calls[n] == 1 for n in names | bns)
    for g in spec.prunable_groups():
        (act,), (conv,) = spec.groups[g].taps["act"], spec.groups[g].taps["conv"]
        assert isinstance(modules[act], nn.ReLU) and isinstance(modules[conv], nn.Conv2d)
        assert outputs[conv].shape[1] == spec.groups[g].channels
        start, stop = spec.groups[g].tap_slices[act]
        assert stop - start == spec.groups[g].channels
        bn = consumer_bn(act)
        produced = outputs[conv] if g.startswith("dense") else nn.functional.avg_pool2d(outputs[conv], 2)
        assert torch.equal(bn_inputs[bn][:, start:stop], produced), g
        assert torch.equal(outputs[act][:, start:stop], torch.relu(outputs[bn][:, start:stop])), g
    # every ReLU is its own module: 36 dense layers, 2 transitions, the final one
    assert len([m for m in model.modules() if isinstance(m, nn.ReLU)]) == 39


def test_seeds_checkpoint_names(model):
    keys = set(model.state_dict())
    assert {"conv1.weight", "dense1.0.bn1.running_var", "dense3.11.conv1.weight", "trans2.bn1.weight",
            "trans1.conv1.weight", "bn.bias", "fc.weight", "fc.bias"} <= keys
    assert not any(k.endswith(".bias") and "conv" in k for k in keys)


def test_pruned_model_saves_and_loads(model, tmp_path):
    spec = model.channel_spec()
    keep = keep_counts(spec, group_rates(spec, "[0.]+[0.3]*12+[0.1]+[0.3]*12+[0.1]+[0.3]*12"))
    pruned = pruned_copy(model, {g: torch.arange(spec.groups[g].channels - k, spec.groups[g].channels)
                                 for g, k in keep.items()})
    save_pruned(tmp_path / "m.pt", pruned, ARCH, 10)
    loaded = load_pruned(tmp_path / "m.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned.eval()(x))


def test_every_method_runs(tmp_path):
    # DenseNet-16 (4 layers a block; transitions 72 and 120 wide): the same spec code as DenseNet-40,
    # whose 168- and 312-channel transitions make FP-FMC's t-SNE take over a minute on CI's CPUs.
    torch.manual_seed(0)
    small = CifarDenseNet(ARCH, depth=16).eval()
    assert len(small.channel_spec().rate_layout) == 15
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert_every_method_runs(small, x, tmp_path)
