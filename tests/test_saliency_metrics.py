"""Saliency metrics against hand-worked cases and against pysodmetrics (the field's implementation)."""
import numpy as np
import pytest
from scipy import ndimage

from fmprune import FmpruneError
from fmprune.saliency import SaliencyMetrics, normalize_prediction, s_measure, weighted_f_measure


def _results(pairs):
    metrics = SaliencyMetrics()
    for pred, mask in pairs:
        metrics.update(pred, mask)
    return metrics.results()


def test_a_perfect_prediction():
    mask = np.zeros((6, 5), bool)
    mask[1:4, 2:5] = True
    r = _results([(mask.astype(float), mask)])
    assert r["maxf"] == 1.0 and r["mae"] == 0.0 and r["sm"] == pytest.approx(1.0)
    assert r["em_max"] == pytest.approx(30 / 29)  # the definition divides by (pixels − 1)
    assert r["wfm"] == pytest.approx(1.0)


def test_two_by_two_by_hand():
    # Levels 255, 127, 0, 0 with one foreground pixel: thresholds 0 | 1–127 | 128–255 keep 4 | 2 | 1
    # pixels, so precision 1/4 | 1/2 | 1 at recall 1, and the best F is 1.
    pred, mask = np.array([[1.0, 0.5], [0.0, 0.0]]), np.array([[True, False], [False, False]])
    r = _results([(pred, mask)])
    assert r["maxf"] == 1.0 and r["mae"] == 0.125
    # Precision and recall are averaged over images before F. A second image whose only bright
    # pixel misses the object (precision 1/4, recall 1 at threshold 0; 0 and 0 above) gives the
    # averages (P, R) = (1/4, 1) | (1/4, 1/2) | (1/2, 1/2), so F = 0.302 | 0.283 | 0.5.
    missed = _results([(pred, mask), (np.array([[0.0, 1.0], [0.0, 0.0]]), mask)])
    f = [1.3 * p * r / (0.3 * p + r) for p, r in ((1 / 4, 1), (1 / 4, 1 / 2), (1 / 2, 1 / 2))]
    assert f[2] == pytest.approx(0.5) and missed["maxf"] == pytest.approx(max(f))


def test_edge_cases_of_the_definitions():
    empty = np.zeros((4, 4), bool)
    pred = np.full((4, 4), 0.25)
    assert s_measure(pred, empty) == 0.75  # all background: 1 − mean
    assert s_measure(pred, ~empty) == 0.25  # all foreground: mean
    assert weighted_f_measure(pred, empty) == 0.0
    inverted = _results([(1.0 - (np.arange(16).reshape(4, 4) < 8), np.arange(16).reshape(4, 4) < 8)])
    assert inverted["mae"] == 1.0
    assert normalize_prediction(np.array([2.0, 4.0, 6.0])).tolist() == [0.0, 0.5, 1.0]


def test_bad_pairs_are_one_line_errors():
    with pytest.raises(FmpruneError, match="does not match its mask"):
        SaliencyMetrics().update(np.zeros((4, 4)), np.zeros((4, 5), bool))
    with pytest.raises(FmpruneError, match=r"must lie in \[0, 1\]"):
        SaliencyMetrics().update(np.full((4, 4), 2.0), np.zeros((4, 4), bool))
    with pytest.raises(FmpruneError, match="no images"):
        SaliencyMetrics().results()


def _cases():
    """Six blob masks (one empty) with blurred, noisy predictions, as 8-bit images."""
    rng = np.random.default_rng(7)
    for i in range(6):
        h, w = rng.integers(24, 48), rng.integers(24, 48)
        yy, xx = np.mgrid[:h, :w]
        gt = np.zeros((h, w), bool)
        if i != 4:
            for _ in range(rng.integers(1, 3)):
                cy, cx, r = rng.integers(4, h - 4), rng.integers(4, w - 4), rng.integers(3, 10)
                gt |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        soft = ndimage.gaussian_filter(gt.astype(float), 2) + 0.3 * rng.random((h, w))
        pred = (255 * (soft - soft.min()) / (soft.max() - soft.min())).astype(np.uint8)
        yield pred, (gt * 255).astype(np.uint8)


def test_matches_pysodmetrics():
    """pysodmetrics 1.6.2 on the same images (its Fmeasure, MAE, Smeasure, Emeasure and
    WeightedFmeasure; max F from its averaged precision and recall curves). It pins numpy below
    fmprune's, so the figures were computed once in a separate environment and are kept here."""
    r = _results((normalize_prediction(pred / 255), gt > 128) for pred, gt in _cases())
    expected = {"maxf": 0.7924849895399816, "mae": 0.21794236129923036, "sm": 0.7445237248061115,
                "em": 0.6451186010156957, "em_max": 0.903075334731897, "wfm": 0.4019991831964751}
    for key, value in expected.items():
        assert r[key] == pytest.approx(value, rel=1e-12), key
