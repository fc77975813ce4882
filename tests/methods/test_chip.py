"""CHIP (METHODS.md, "Criteria beyond the seeds"): hand-worked cases, the straightforward
per-channel SVDs, and a coupled group."""
import numpy as np
import pytest
import torch

from benchmarks.naive import chip as naive
from fmprune.methods import chip, combine, score_groups

from ..conftest import random_batches


def maps(rows) -> torch.Tensor:
    """One image whose channel c is the 1 × P map ``rows[c]``."""
    return torch.tensor(rows, dtype=torch.float64)[None, :, None, :]


def test_hand_worked_independence():
    # orthogonal rows: nuclear norm 2, each row removed leaves 1
    assert chip.channel_scores([maps([[1.0, 0.0], [0.0, 1.0]])]).tolist() == pytest.approx([1.0, 1.0])
    # equal rows: rank 1 with singular value √2; removing either leaves 1. A dead row adds nothing.
    ci = chip.channel_scores([maps([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])])
    np.testing.assert_allclose(ci, [np.sqrt(2) - 1, np.sqrt(2) - 1, 0.0], atol=1e-15)
    # mean over images
    two = chip.channel_scores([maps([[1.0, 0.0], [0.0, 1.0]]), maps([[1.0, 0.0], [1.0, 0.0]])])
    np.testing.assert_allclose(two, [(1 + np.sqrt(2) - 1) / 2] * 2)


@pytest.mark.parametrize("c,h,w", [(5, 4, 4), (6, 2, 2), (8, 1, 3), (3, 7, 5), (1, 3, 3)])
def test_matches_the_per_channel_svds(c, h, w):
    rng = np.random.default_rng(c * 100 + h * 10 + w)
    batches = random_batches(rng, [3, 1, 2], c, h, w, relu=True)
    batches[0][1, 0] = 0.0  # a dead map
    np.testing.assert_allclose(chip.channel_scores(iter(batches)), naive.channel_scores(batches), rtol=1e-10, atol=1e-12)


def test_independence_is_non_negative_and_zero_for_dead_channels():
    rng = np.random.default_rng(3)
    x = random_batches(rng, [4], 6, 5, 5, relu=True)[0]
    x[:, 2] = 0.0
    ci = chip.channel_scores([x])
    assert ci[2] == 0.0 and (ci >= 0).all()


def test_chunks_give_the_same_scores(monkeypatch):
    rng = np.random.default_rng(4)
    batches = random_batches(rng, [5], 4, 6, 6)
    whole = chip.channel_scores(batches)
    monkeypatch.setattr(chip, "_CHUNK_ELEMENTS", 1)  # one image per decomposition
    np.testing.assert_allclose(chip.channel_scores(batches), whole, rtol=1e-12)


def test_a_coupled_group_combines_its_taps(resnet20_extraction):
    e = resnet20_extraction
    with e.open() as ff:
        scores = score_groups("chip", e.spec, e.model, ff).scores
        taps = e.spec.groups["stage1"].taps["act"]
        expected = combine([naive.channel_scores(ff.batches(t)) for t in taps])
    np.testing.assert_allclose(scores["stage1"], expected, rtol=1e-8)
