"""U²-Net-P: the authors' module names and size, its channel groups and rate layout, surgery."""
import logging

import pytest
import torch

from fmprune.counting import count
from fmprune.models import build, input_size
from fmprune.plan import group_rates

from .arch_checks import assert_every_method_runs, assert_pruned_equals_masked


@pytest.fixture(scope="module")
def model():
    return build("u2netp")


def test_size_and_release_names(model, tmp_path):
    assert sum(p.numel() for p in model.parameters()) == 1_131_181
    assert input_size("u2netp") == 320
    # A state_dict saved under the authors' names loads strictly into a fresh model.
    torch.save(model.state_dict(), tmp_path / "u2netp.pth")
    state = torch.load(tmp_path / "u2netp.pth", weights_only=True)
    assert {"stage1.rebnconvin.conv_s1.weight", "stage6.rebnconv4.bn_s1.running_var", "stage1d.rebnconv1d.conv_s1.bias",
            "side6.weight", "outconv.bias"} <= set(state)
    build("u2netp").load_state_dict(state, strict=True)
    # Conv + linear MACs at 320×320 (the upsampling and pooling count nothing).
    assert count(model, "u2netp")["macs"] == 19_756_089_600


def test_seven_outputs_at_the_input_size(model):
    with torch.no_grad():
        outputs = model.eval()(torch.randn(1, 3, 48, 40))
    assert len(outputs) == 7 and all(o.shape == (1, 1, 48, 40) for o in outputs)
    assert all(((o >= 0) & (o <= 1)).all() for o in outputs)


def test_groups_follow_the_blocks(model):
    spec = model.channel_spec()
    # A block's output is rebnconv1d + rebnconvin: one group, written by both convs.
    assert spec.producers("stage3") == ["stage3.rebnconvin.conv_s1", "stage3.rebnconvin.bn_s1",
                                        "stage3.rebnconv1d.conv_s1", "stage3.rebnconv1d.bn_s1"]
    # Decoder convs read concatenations: the deeper (upsampled) map first, then the skip.
    assert spec.modules["stage2d.rebnconvin.conv_s1"].inp == ("stage3d", "stage2")
    assert spec.modules["stage1.rebnconv5d.conv_s1"].inp == ("stage1.rebnconv6d", "stage1.rebnconv5")
    assert spec.modules["stage1.rebnconv6d.conv_s1"].inp == ("stage1.rebnconv7", "stage1.rebnconv6")
    assert spec.modules["outconv"].inp == tuple(f"side{i}" for i in range(1, 7))
    # The outputs and the two deepest convs of every block are kept whole.
    assert not any(spec.groups[g].prunable for g in ("side1", "outconv", "stage1.rebnconv6", "stage1.rebnconv7",
                                                      "stage5.rebnconv3", "stage5.rebnconv4"))
    assert spec.groups["stage1.rebnconv5"].prunable and spec.groups["stage1.rebnconv6d"].prunable


def test_rate_layout_is_the_dct_references(model, caplog):
    spec = model.channel_spec()
    assert len(spec.rate_layout) == 39
    rates = [0.01 * i for i in range(39)]
    with caplog.at_level(logging.WARNING):
        by_group = group_rates(spec, "[0.4]*40")  # the reference's default: the 40th entry is unused
    assert "ignoring the trailing" in caplog.text and set(by_group.values()) == {0.4}
    by_group = group_rates(spec, rates)
    assert by_group["stage1.rebnconv1"] == by_group["stage1.rebnconv2d"] == 0.0   # entry 0
    assert by_group["stage1.rebnconv5"] == by_group["stage1.rebnconv6d"] == 0.04  # entry 4
    assert by_group["stage2.rebnconv1"] == 0.05 and by_group["stage6.rebnconv2"] == 0.17
    assert by_group["stage1d.rebnconv1"] == 0.18 and by_group["stage5d.rebnconv2"] == 0.33
    assert by_group["stage1"] == by_group["stage2d"] == by_group["stage1d"] == 0.34
    assert by_group["stage5"] == by_group["stage6"] == 0.38
    assert set(by_group) == set(spec.prunable_groups())  # the layout reaches every prunable group


def test_pruned_equals_masked_on_every_output(model):
    assert_pruned_equals_masked(model, torch.randn(2, 3, 40, 40))


@pytest.mark.slow
def test_every_method_runs(model, tmp_path):
    assert_every_method_runs(model, torch.randn(12, 3, 32, 32), tmp_path)
