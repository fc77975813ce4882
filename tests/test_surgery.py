"""Physical pruning equals masking, and the seeds' ResNet-56 configuration has the right size."""
import copy

import pytest
import torch

from fmprune.counting import count
from fmprune.models import build
from fmprune.plan import group_rates, keep_count
from fmprune.surgery import load_pruned, mask_, pruned_copy, save_pruned

from .arch_checks import assert_pruned_equals_masked, random_plan, randomize_bn


@pytest.mark.parametrize("arch", ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"])
def test_pruned_equals_masked_on_random_plans(arch):
    assert_pruned_equals_masked(build(arch), torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    kept = random_plan(build(arch).channel_spec(), seed=5)
    assert pruned_copy(build(arch), kept).conv1.out_channels == len(kept["stage1"])


def test_stream_channels_stay_aligned_across_the_option_a_shortcut():
    """Keeping disjoint-looking index sets in stage 1 and 2 must still add matching channels."""
    model = randomize_bn(build("resnet20"))
    kept = {"stage1": torch.tensor([1, 5, 9, 12]), "stage2": torch.tensor([0, 8, 9, 13, 20, 31])}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(pruned_copy(model, kept)(x), mask_(copy.deepcopy(model), kept)(x), atol=1e-4)
    src = pruned_copy(model, kept).layer2[0].shortcut.src.tolist()
    # stage-2 channel k reads stage-1 channel k - 8: 0 -> none, 8 -> 0 (removed), 9 -> 1 (kept, position 0),
    # 13 -> 5 (position 1), 20 -> 12 (position 3), 31 -> none
    assert src == [-1, -1, 0, 1, 3, -1]


def test_seed_configuration_resnet56_sizes():
    model = build("resnet56")
    spec = model.channel_spec()
    rates = group_rates(spec, "[0.]+[0.18]*29")
    pruned = pruned_copy(model, {g: torch.arange(keep_count(spec.groups[g].channels, r)) for g, r in rates.items()})
    c = count(pruned, "resnet56")
    assert c["params"] == 659_719  # papers: 0.66M
    assert c["macs"] == 89_017_984  # papers' 90.35M is thop's count with the stem kept at 16
    assert 89e6 <= c["macs"] <= 90e6


def test_saved_model_loads_without_the_run_directory(tmp_path):
    model = randomize_bn(build("resnet20"), seed=1)
    kept = random_plan(model.channel_spec(), seed=2)
    pruned = pruned_copy(model, kept)
    save_pruned(tmp_path / "m.pt", pruned, "resnet20", 10, normalize={"mean": [0, 0, 0], "std": [1, 1, 1]})
    again = load_pruned(tmp_path / "m.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(pruned(x), again(x))
    assert again.meta["normalize"]["std"] == [1, 1, 1]
