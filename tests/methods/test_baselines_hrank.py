"""HRank, L1 and random against their definitions, and the coupled-group rule."""
import numpy as np
import pytest
import torch

from fmprune import FmpruneError
from fmprune.methods import combine, hrank, score_groups
from fmprune.methods import random as random_method
from fmprune.models import build


def test_hrank_on_hand_checkable_maps():
    eye = torch.eye(4)
    rank1 = torch.ones(4, 4)
    zero = torch.zeros(4, 4)
    # image 1: ranks (4, 1, 0); image 2: ranks (2, 1, 0)
    img1 = torch.stack([eye, rank1, zero])
    two = torch.zeros(4, 4)
    two[0, 0] = two[1, 1] = 1.0
    img2 = torch.stack([two, 2 * rank1, zero])
    scores = hrank.channel_scores([img1[None], img2[None]])
    assert scores.tolist() == [3.0, 1.0, 0.0]


def test_hrank_equals_a_per_map_loop_on_random_maps():
    gen = torch.Generator().manual_seed(0)
    low = torch.randn(6, 5, 7, 2, generator=gen) @ torch.randn(6, 5, 2, 7, generator=gen)  # rank ≤ 2
    full = torch.randn(6, 5, 7, 7, generator=gen)
    maps = torch.cat([low, full], 1)
    fast = hrank.channel_scores([maps[:4], maps[4:]])
    slow = np.array([[np.linalg.matrix_rank(maps[n, c].numpy(), tol=None) for c in range(10)] for n in range(6)]).mean(0)
    np.testing.assert_array_equal(fast, slow)
    assert (fast[:5] <= 2).all() and (fast[5:] == 7).all()


def test_random_scores_are_seeded_per_group():
    a = random_method.channel_scores("stage1", 16, seed=3)
    assert np.array_equal(a, random_method.channel_scores("stage1", 16, seed=3))
    assert not np.array_equal(a, random_method.channel_scores("stage1", 16, seed=4))
    assert not np.array_equal(a, random_method.channel_scores("stage2", 16, seed=3))


def test_l1_is_the_filter_weight_norm_and_groups_combine_normalised():
    model = build("resnet20")
    spec = model.channel_spec()
    scores = score_groups("l1", spec, model).scores
    w = model.layer1[0].conv1.weight.detach()
    np.testing.assert_allclose(scores["layer1.0.conv1"], w.abs().sum((1, 2, 3)).numpy(), rtol=1e-6)
    writers = [model.conv1] + [b.conv2 for b in model.layer1]
    norms = [m.weight.detach().abs().sum((1, 2, 3)).double().numpy() for m in writers]
    expected = np.mean([n / n.mean() for n in norms], 0) * np.mean([n.mean() for n in norms])
    np.testing.assert_allclose(scores["stage1"], expected)


def test_combine_single_tap_is_unchanged():
    s = np.array([1.0, 2.0])
    assert combine([s]) is s
    # normalised [0.5, 1.5] and [1, 1], averaged [0.75, 1.25], times the mean scale (2 + 10) / 2
    np.testing.assert_allclose(combine([np.array([1.0, 3.0]), np.array([10.0, 10.0])]), [4.5, 7.5])


def test_hrank_refuses_float16_taps(tmp_path):
    from fmprune.features import FeatureFile, extract, taps_for

    model = build("resnet20").eval()
    taps = taps_for(model.channel_spec(), {"act"})
    x = torch.randn(4, 3, 32, 32)
    extract(model, [(x, torch.zeros(4, dtype=torch.long))], np.arange(4), taps, tmp_path / "f.h5", {}, dtype="float16")
    with FeatureFile(tmp_path / "f.h5") as ff, pytest.raises(FmpruneError, match="float16"):
        score_groups("hrank", model.channel_spec(), model, ff)
