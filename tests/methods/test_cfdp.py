import numpy as np
import pytest
import torch
from scipy.fft import dctn
from scipy.ndimage import gaussian_filter

from benchmarks.naive import cfdp as naive
from fmprune.methods import cfdp

from ..conftest import random_batches


@pytest.mark.parametrize("h,w", [(1, 1), (2, 2), (3, 3), (5, 5), (8, 8), (7, 7), (6, 4), (1, 5)])
@pytest.mark.parametrize("block", [2, 3])
@pytest.mark.parametrize("relu", [False, True])
def test_matches_naive(h, w, block, relu):
    rng = np.random.default_rng(100 * h + w + block)
    batches = random_batches(rng, [3, 1, 2], 4, h, w, relu)
    got = cfdp.channel_scores(iter(batches), block=block)
    want = naive.channel_scores(batches, block=block)
    assert got.dtype == np.float64 and got.shape == (4,)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)


def test_matches_naive_other_parameters():
    rng = np.random.default_rng(1)
    batches = random_batches(rng, [2, 2], 3, 9, 9)
    got = cfdp.channel_scores(batches, block=4, sigma=0.7, alpha=0.5)
    want = naive.channel_scores(batches, block=4, sigma=0.7, alpha=0.5)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)


def test_batching_does_not_matter():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((6, 3, 8, 8)).astype(np.float32))
    whole = cfdp.channel_scores([x])
    split = cfdp.channel_scores(b for b in torch.split(x, [1, 4, 1]))
    np.testing.assert_allclose(split, whole, rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (3, 3), (2, 5)])
def test_operator_reproduces_scipy(shape):
    rng = np.random.default_rng(3)
    op = cfdp.block_operator(*shape, 10.0)
    for _ in range(5):
        x = rng.standard_normal(shape)
        want = gaussian_filter(dctn(x, norm="ortho"), 10.0, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(op @ x.ravel(), want.ravel(), rtol=0, atol=1e-14)


def _ripple():
    """Largest |K - K0| entry, K0 mapping a 2x2 block to half its top-left pixel everywhere."""
    target = np.zeros((4, 4))
    target[:, 0] = 0.5
    return np.max(np.abs(cfdp.block_operator(2, 2, 10.0) - target))


def test_operator_r2_sigma10_is_half_top_left_pixel_up_to_ripple():
    # A 2x2 orthonormal DCT's four coefficients sum to 2 * x[0, 0]; a Gaussian with sigma = 10
    # on a 2x2 block nearly averages them, except for the 4-sigma truncation of the kernel.
    eps = _ripple()
    assert 1e-7 < eps < 1e-5


def test_frequency_term_is_a_statistic_of_even_pixels():
    # With K = K0 + E (K0 as in _ripple, |E| <= eps entrywise), each entry of block b of M is
    # S_b / 2 + d with |d| <= delta_b = eps * sum|block b| (S = F[::2, ::2] over full blocks),
    # and mean(M) moves by at most max_b delta_b. So if every |S_b / 2 - mean0| exceeds
    # delta_b + max delta (checked below), the sparsity count is exactly the ripple-free one,
    # and ||M|| differs from ||kron(S / 2, ones(2, 2))|| by at most sqrt(4 * sum_b delta_b^2).
    eps = _ripple()
    rng = np.random.default_rng(4)
    for h, w in [(4, 4), (8, 8), (7, 7), (6, 10)]:
        x = rng.standard_normal((5, 3, h, w))
        hh, ww = h // 2 * 2, w // 2 * 2
        approx = np.zeros((5, 3))
        bound = np.zeros((5, 3))
        for n in range(5):
            for c in range(3):
                f = x[n, c]
                s = f[0:hh:2, 0:ww:2]
                blocks = f[:hh, :ww].reshape(hh // 2, 2, ww // 2, 2)
                delta = eps * np.abs(blocks).sum(axis=(1, 3))
                mean0 = 4 * (s / 2).sum() / (h * w)
                assert np.all(np.abs(s / 2 - mean0) > delta + delta.max())
                if h * w > hh * ww:
                    assert abs(mean0) > delta.max()
                count = 4 * np.count_nonzero(s / 2 > mean0) + (h * w - hh * ww) * (mean0 < 0)
                sparsity = count / (h * w)
                approx[n, c] = np.linalg.norm(s) * sparsity
                bound[n, c] = sparsity * np.sqrt(4 * np.sum(delta**2))
        got = cfdp.channel_scores([torch.from_numpy(x)], alpha=0.0)
        assert np.all(np.abs(got - approx.mean(axis=0)) <= bound.mean(axis=0) + 1e-12)
        assert np.all(bound.mean(axis=0) < 1e-4 * approx.mean(axis=0))


def test_h2_sparsity_is_decided_by_the_ripple():
    # Without the ripple a 2x2 map's M would be constant, count(M > mean) = 0 and the frequency
    # term 0; with scipy's truncated kernel the count is 1-3 of 4, reproduced exactly.
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((4, 6, 2, 2)))
    got = cfdp.channel_scores([x], alpha=0.0)
    assert np.all(got > 0)
    np.testing.assert_allclose(got, naive.channel_scores([x], alpha=0.0), rtol=1e-9, atol=0)


def test_exact_ties_with_a_zero_mean_are_not_counted():
    # Only pixel (0, 1) of a 3x3 map is nonzero: M's block is x * K[:, 1] = x * (d, -d, d, -d)
    # with d = (G00 - G03) / 2 > 0, its mean is exactly 0, and the five padding zeros tie with it.
    # Count = 2 (not 7, whatever the rounding of the mean), so score = x * ||K[:, 1]|| * 2 / 9.
    # (d ~ 4e-6 is a difference of numbers ~0.25, so only ~1e-11 of it is significant.)
    col = cfdp.block_operator(2, 2, 10.0)[:, 1]
    assert np.all(col[[0, 2]] > 0) and np.all(col[[1, 3]] < 0)
    x = np.zeros((4, 1, 3, 3))
    x[:, 0, 0, 1] = [0.1, 0.3, 1.7, 2.9]
    want = np.mean(x[:, 0, 0, 1]) * np.linalg.norm(col) * 2 / 9
    got = cfdp.channel_scores([torch.from_numpy(x)], alpha=0.0)
    np.testing.assert_allclose(got, [want], rtol=1e-9)
    np.testing.assert_allclose(naive.channel_scores([x], alpha=0.0), [want], rtol=1e-9)


@pytest.mark.parametrize("h", [4, 5, 7])
def test_zero_mean_relu_maps_match_naive(h):
    # ReLU maps whose even-even pixels are all 0: mean(M) is exactly 0 and ties are everywhere.
    rng = np.random.default_rng(h)
    x = np.maximum(rng.standard_normal((6, 5, h, h)), 0)
    x[:, :, ::2, ::2] = 0
    x[:, 0] = 0
    batches = [torch.from_numpy(x[:2]), torch.from_numpy(x[2:])]
    got = cfdp.channel_scores(batches)
    np.testing.assert_allclose(got, naive.channel_scores(batches), rtol=1e-9, atol=0)
    assert got[0] == 0.0


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        cfdp.channel_scores([])
    with pytest.raises(ValueError):
        cfdp.channel_scores([torch.zeros(1, 2, 4, 4)], block=0)
    with pytest.raises(ValueError):
        cfdp.channel_scores([torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 5, 5)])


def test_tap():
    assert cfdp.READS == "act"
