"""APoZ and mean activation (METHODS.md, "Criteria beyond the seeds"): hand-worked cases, the
straightforward map-by-map loops, coupled groups, and APoZ's ReLU-only refusal."""
import numpy as np
import pytest
import torch

from benchmarks.naive import apoz as naive_apoz
from benchmarks.naive import meanact as naive_meanact
from fmprune import FmpruneError
from fmprune.methods import apoz, combine, meanact, score_groups

from ..conftest import random_batches


def test_hand_worked_maps():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 0.0]], [[3.0, 3.0], [3.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    assert apoz.channel_scores([x]).tolist() == [0.5, 1.0, 0.0]
    assert meanact.channel_scores([x]).tolist() == [0.75, 3.0, 0.0]
    # over images: channel 0 has 2 + 4 zeros of 8 values
    zero = torch.zeros(1, 3, 2, 2)
    assert apoz.channel_scores([x, zero]).tolist() == [0.25, 0.5, 0.0]
    assert meanact.channel_scores([x, zero]).tolist() == [0.375, 1.5, 0.0]


@pytest.mark.parametrize("c,h,w", [(4, 3, 3), (2, 1, 1), (5, 4, 2)])
def test_match_the_straightforward_loops(c, h, w):
    rng = np.random.default_rng(c + h + w)
    batches = random_batches(rng, [2, 3], c, h, w, relu=True)
    np.testing.assert_array_equal(apoz.channel_scores(iter(batches)), naive_apoz.channel_scores(batches))
    np.testing.assert_allclose(meanact.channel_scores(iter(batches)), naive_meanact.channel_scores(batches), rtol=1e-12)


def test_apoz_refuses_maps_with_negative_values():
    with pytest.raises(FmpruneError, match="post-ReLU"):
        apoz.channel_scores([torch.tensor([[[[-1.0]]]])])


@pytest.mark.parametrize("method,naive", [("apoz", naive_apoz), ("meanact", naive_meanact)])
def test_a_coupled_group_combines_its_taps(resnet20_extraction, method, naive):
    e = resnet20_extraction
    with e.open() as ff:
        scores = score_groups(method, e.spec, e.model, ff).scores
        expected = combine([naive.channel_scores(ff.batches(t)) for t in e.spec.groups["stage2"].taps["act"]])
    np.testing.assert_allclose(scores["stage2"], expected, rtol=1e-12)
