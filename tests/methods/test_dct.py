import numpy as np
import pytest
import torch
from scipy.fft import dct as scipy_dct

from benchmarks.naive import dct as naive
from fmprune.methods import dct

from ..conftest import random_batches

SHAPES = [(1, 1), (2, 2), (3, 3), (5, 5), (8, 8), (7, 7), (4, 6), (1, 5)]
BANDS = ["low:1", "low:2", "low:3", "low:100", "zigzag:0.01", "zigzag:0.3", "zigzag:0.5",
         "zigzag:0.99", "zigzag:1"]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8])
def test_dct_matrix_is_scipy_orthonormal_dct(n):
    np.testing.assert_allclose(
        dct.dct_matrix(n), scipy_dct(np.eye(n), type=2, norm="ortho", axis=0), rtol=0, atol=1e-14
    )


@pytest.mark.parametrize("h,w", SHAPES + [(3, 4), (6, 2)])
def test_zigzag_order_matches_walk(h, w):
    assert [tuple(p) for p in dct.zigzag_order(h, w).tolist()] == naive.zigzag_walk(h, w)


def test_zigzag_order_is_jpeg():
    assert dct.zigzag_order(3, 3).tolist() == [
        [0, 0], [0, 1], [1, 0], [2, 0], [1, 1], [0, 2], [1, 2], [2, 1], [2, 2]
    ]


@pytest.mark.parametrize("h,w", SHAPES)
def test_all_is_energy_per_map(h, w):
    # Parseval: the orthonormal DCT preserves the Frobenius norm. One image per call gives the
    # per-map value; the naive code sums the squares of a real scipy DCT.
    rng = np.random.default_rng(10 * h + w)
    x = rng.standard_normal((3, 4, h, w))
    for img in x:
        batch = [torch.from_numpy(img[None])]
        energy = np.sum(img**2, axis=(1, 2))
        np.testing.assert_allclose(dct.channel_scores(batch), energy, rtol=1e-13, atol=0)
        np.testing.assert_allclose(naive.channel_scores(batch), energy, rtol=1e-12, atol=0)
        np.testing.assert_allclose(
            dct.channel_scores(batch, band="zigzag:1"), energy, rtol=1e-12, atol=0
        )


@pytest.mark.parametrize("h,w", SHAPES)
@pytest.mark.parametrize("band", ["all"] + BANDS)
def test_matches_naive(h, w, band):
    rng = np.random.default_rng(10 * h + w)
    batches = random_batches(rng, [2, 1, 3], 3, h, w)
    got = dct.channel_scores(iter(batches), band=band)
    want = naive.channel_scores(batches, band=band)
    assert got.dtype == np.float64 and got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)


def test_low_band_is_top_left_corner_clipped():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 0, 0] = 3.0  # an impulse: every coefficient has magnitude 3 * D[k, 0] * D[l, 0]
    d0 = dct.dct_matrix(4)[:, 0]
    assert dct.channel_scores([x], band="low:2")[0] == pytest.approx(9 * np.sum(d0[:2] ** 2) ** 2)
    assert dct.channel_scores([x], band="low:9")[0] == pytest.approx(9.0)


@pytest.mark.parametrize(
    "band", ["", "low", "low:", "low:0", "low:-1", "low:2.5", "zigzag:0", "zigzag:1.5",
             "zigzag:x", "high:3", "all:1", "ALL"]
)
def test_invalid_band(band):
    with pytest.raises(ValueError, match="'all', 'low:K'.*'zigzag:P'"):
        dct.channel_scores([torch.zeros(1, 1, 2, 2)], band=band)


def test_rejects_empty_and_mixed_shapes():
    with pytest.raises(ValueError):
        dct.channel_scores([])
    with pytest.raises(ValueError):
        dct.channel_scores([torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4)])


def test_tap():
    assert dct.READS == "act"
