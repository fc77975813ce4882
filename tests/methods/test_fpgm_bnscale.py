"""FPGM and BN scale (METHODS.md, "Criteria beyond the seeds"): hand-worked cases, loops, coupled
groups (sums over the writers), and BN scale's refusal of a group no BN scales."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.naive import bnscale as naive_bnscale
from benchmarks.naive import fpgm as naive_fpgm
from fmprune.methods import fpgm, output_filters, score_groups
from fmprune.models import build


def test_fpgm_hand_worked():
    conv = nn.Conv2d(1, 3, (1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]).reshape(3, 1, 1, 2))
    # distances 5 between neighbours, 10 between the ends: the middle filter is the median
    np.testing.assert_allclose(fpgm.distance_sums(output_filters(conv)), [15.0, 10.0, 15.0])


def test_fpgm_matches_the_double_loop():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 9, 3)
    np.testing.assert_allclose(fpgm.distance_sums(output_filters(conv)), naive_fpgm.distance_sums(conv.weight.detach().numpy()),
                               rtol=1e-6)


@pytest.mark.parametrize("layer", [nn.Conv2d(4, 6, 3, groups=2), nn.ConvTranspose2d(4, 6, 3, groups=2),
                                   nn.ConvTranspose2d(3, 3, 2, groups=3), nn.Linear(5, 7)])
def test_output_filters_hold_each_output_channels_weights(layer):
    """Row j holds exactly the weights that feed output channel j (found entry by entry: zeroing
    them and the bias silences channel j and no other), whatever axis the layer stores first."""
    linear = isinstance(layer, nn.Linear)
    x = torch.randn(1, *((layer.in_features,) if linear else (layer.in_channels, 4, 4)))
    rows, w = output_filters(layer), layer.weight.detach()
    channels = layer.out_features if linear else layer.out_channels
    assert rows.shape[0] == channels
    for j in range(channels):
        feeding = [idx for idx in np.ndindex(*w.shape) if _feeds(layer, idx, j)]
        assert sorted(rows[j].tolist()) == sorted(w[idx].item() for idx in feeding)
        silenced = copy.deepcopy(layer)
        with torch.no_grad():
            for idx in feeding:
                silenced.weight[idx] = 0
            silenced.bias[j] = 0
            y, full = silenced(x), layer(x)
        axis = -1 if linear else 1
        others = torch.tensor([i for i in range(channels) if i != j])
        assert torch.all(y.select(axis, j) == 0)
        assert torch.equal(y.index_select(axis, others), full.index_select(axis, others))


def _feeds(layer, idx, j) -> bool:
    """Whether weight entry ``idx`` is read for output channel ``j``."""
    if isinstance(layer, nn.ConvTranspose2d):  # [in, out/groups, ...]: input i belongs to group i // (in/groups)
        per_in, per_out = layer.in_channels // layer.groups, layer.out_channels // layer.groups
        return (idx[0] // per_in) * per_out + idx[1] == j
    return idx[0] == j


def test_groups_sum_their_writers():
    torch.manual_seed(0)
    model = build("resnet20")
    spec = model.channel_spec()
    for bn in [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]:
        nn.init.normal_(bn.weight)  # signed, distinct scales
    writers = [model.conv1] + [b.conv2 for b in model.layer1]
    bns = [model.bn1] + [b.bn2 for b in model.layer1]
    fp = score_groups("fpgm", spec, model).scores
    bn = score_groups("bnscale", spec, model).scores
    np.testing.assert_allclose(fp["stage1"], np.sum([naive_fpgm.distance_sums(c.weight.detach().numpy())
                                                     for c in writers], axis=0), rtol=1e-6)
    np.testing.assert_allclose(bn["stage1"], naive_bnscale.channel_scores([b.weight.detach().numpy() for b in bns]))
    np.testing.assert_allclose(bn["layer2.1.conv1"], model.layer2[1].bn1.weight.detach().abs().numpy())


def test_bnscale_sums_densenet_consumers_slices():
    model = build("densenet40")
    spec = model.channel_spec()
    scores = score_groups("bnscale", spec, model).scores
    # γ starts at 1: a group's score counts the BNs that normalise it. The first dense layer's 12
    # channels are read by the 11 later layers of its block and the transition; the last layer's
    # by the transition alone.
    assert scores["dense1.0.conv1"].tolist() == [12.0] * 12
    assert scores["dense1.11.conv1"].tolist() == [1.0] * 12
    with torch.no_grad():  # the second layer's BN: its slice of the concatenation after the stem's 24
        dict(model.named_modules())["dense1.1.bn1"].weight[24:36] = -3.0
    assert score_groups("bnscale", spec, model).scores["dense1.0.conv1"].tolist() == [14.0] * 12


def test_bnscale_refuses_a_group_without_bn():
    from fmprune import FmpruneError
    from fmprune.methods import GroupInputs, bnscale

    model = build("resnet20")
    spec = model.channel_spec()
    model.layer1[0].bn1 = nn.Identity()
    with pytest.raises(FmpruneError, match="layer1.0.conv1 has no BatchNorm"):
        bnscale.score(GroupInputs("layer1.0.conv1", spec, model, None))
