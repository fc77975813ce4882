import math

import numpy as np
import pytest
import torch

from benchmarks.naive import cdp as naive
from fmprune.methods import cdp

# Hand-checked example: C = 4 channels, N = 5 documents (document 4 is dead, channel 3 is dead).
A = np.array(
    [
        [2.0, 0.0, 1.0, 1.0, 0.0],
        [1.0, 1.0, 0.0, 2.0, 0.0],
        [1.0, 3.0, 1.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ]
)
# Document sums: 4, 4, 2, 4, 0 -> tf (beta = 1; the dead document gives tf = 0):
#   c0: .5  0   .5  .25 0    mean a = 4/5 = .8  S = {0, 2, 3}  TF = 1.25 / 3 = 5/12
#   c1: .25 .25 0   .5  0    mean a = .8        S = {0, 1, 3}  TF = 1 / 3
#   c2: .25 .75 .5  .25 0    mean a = 6/5       S = {1}        TF = .75
#   c3: 0   0   0   0   0    mean a = 0         S = all 5      TF = 0
# IDF = ln(5 / (|S| + 1)) = ln(5/4), ln(5/4), ln(5/2), ln(5/6)
#     = .22314355, .22314355, .91629073, -.18232156
# score = 5/12 * .22314355, 1/3 * .22314355, .75 * .91629073, 0 * (-.18) = SCORES below.
TF = np.array([5 / 12, 1 / 3, 0.75, 0.0])
IDF = np.log([5 / 4, 5 / 4, 5 / 2, 5 / 6])
SCORES = np.array([0.09297648, 0.07438118, 0.68721805, 0.0])  # TF * IDF, rounded


def test_tfidf_hand_checked():
    tf_c, idf_c = cdp.tfidf_components(A)
    np.testing.assert_allclose(tf_c, TF, rtol=1e-15, atol=0)
    np.testing.assert_allclose(idf_c, IDF, rtol=1e-15, atol=0)
    np.testing.assert_allclose(cdp.tfidf_scores(A), TF * IDF, rtol=1e-15, atol=0)
    np.testing.assert_allclose(cdp.tfidf_scores(A), SCORES, rtol=0, atol=1e-8)
    np.testing.assert_allclose(naive.tfidf_scores(A), TF * IDF, rtol=1e-15, atol=0)


def test_tfidf_coe_scales_tf_by_beta():
    # beta = 1 + ln(C / coe) = 1 + ln(4 / 2) = 1 + ln 2; IDF is unchanged.
    beta = 1 + math.log(2)
    tf_c, idf_c = cdp.tfidf_components(A, coe=2.0)
    np.testing.assert_allclose(tf_c, beta * TF, rtol=1e-15, atol=0)
    np.testing.assert_allclose(idf_c, IDF, rtol=1e-15, atol=0)
    np.testing.assert_allclose(naive.tfidf_scores(A, coe=2.0), beta * TF * IDF, rtol=1e-15)


def test_tfidf_exact_ties_occur():
    # Row 0's mean is 0.2 exactly but rounds to 0.20000000000000004: 0.2 must still occur
    # (|S| = 2); row 1 is constant: every document occurs (|S| = 3), TF is finite.
    a = np.array([[0.1, 0.3, 0.2], [0.1, 0.1, 0.1]])
    assert np.mean(a[0]) > 0.2
    tf_c, idf_c = cdp.tfidf_components(a)
    np.testing.assert_allclose(idf_c, np.log([3 / 3, 3 / 4]), rtol=1e-15)
    want_tf = [(0.3 / 0.4 + 0.2 / 0.3) / 2, (0.5 + 0.25 + 1 / 3) / 3]
    np.testing.assert_allclose(tf_c, want_tf, rtol=1e-15)


def test_tfidf_matches_naive_random():
    rng = np.random.default_rng(0)
    for c, n in [(1, 1), (3, 7), (16, 40), (64, 10)]:
        a = np.maximum(rng.standard_normal((c, n)), 0)
        for coe in (0.0, 3.0):
            np.testing.assert_allclose(
                cdp.tfidf_scores(a, coe=coe), naive.tfidf_scores(a, coe=coe), rtol=1e-9, atol=1e-15
            )


def _image_batches():
    # Five 2x2 images, two channels; the spatial means of ReLU(F) are written in `expected`.
    imgs = np.zeros((5, 2, 2, 2))
    imgs[:, 0] = np.array([1.0, -2.0, 3.0, 5.0, 1.5])[:, None, None]
    imgs[0, 1] = [[1.0, -1.0], [3.0, -5.0]]  # ReLU mean (1 + 3) / 4 = 1
    imgs[1:, 1] = np.array([4.0, 0.0, 2.0, 1.0])[:, None, None]
    expected = np.array([[1.0, 0.0, 3.0, 5.0, 1.5], [1.0, 4.0, 0.0, 2.0, 1.0]])
    return [torch.from_numpy(imgs[:2]).float(), torch.from_numpy(imgs[2:]).float()], expected


def test_document_activations_image():
    batches, expected = _image_batches()
    got = cdp.document_activations(iter(batches))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-15)


def test_document_activations_class():
    # Labels 2, 0, 2, 0, 7 -> classes 0 (images 1, 3), 2 (images 0, 2), 7 (image 4):
    # channel 0: (0 + 5)/2 = 2.5, (1 + 3)/2 = 2, 1.5; channel 1: (4 + 2)/2 = 3, (1 + 0)/2 = .5, 1.
    batches, _ = _image_batches()
    got = cdp.document_activations(iter(batches), labels=np.array([2, 0, 2, 0, 7]),
                                   documents="class")
    np.testing.assert_allclose(got, [[2.5, 2.0, 1.5], [3.0, 0.5, 1.0]], rtol=1e-15)


@pytest.mark.parametrize("h", [1, 2, 3, 8])
def test_document_activations_match_naive(h):
    rng = np.random.default_rng(h)
    batches = [torch.from_numpy(rng.standard_normal((b, 5, h, h)).astype(np.float32))
               for b in (4, 1, 3)]
    labels = rng.integers(0, 4, size=8)
    for kw in ({}, {"labels": labels, "documents": "class"}):
        np.testing.assert_allclose(cdp.document_activations(batches, **kw),
                                   naive.document_activations(batches, **kw), rtol=1e-12)


def test_document_activations_errors():
    batches, _ = _image_batches()
    with pytest.raises(ValueError):
        cdp.document_activations(batches, documents="class")
    with pytest.raises(ValueError):
        cdp.document_activations(batches, labels=[0, 1, 0, 1], documents="class")
    with pytest.raises(ValueError):
        cdp.document_activations(batches, labels=[0] * 6, documents="class")
    with pytest.raises(ValueError):
        cdp.document_activations(batches, documents="word")
    with pytest.raises(ValueError):
        cdp.document_activations([])


def _total(kept):
    return sum(len(v) for v in kept.values())


def test_select_global_exact_k():
    groups = {"a": np.array([0.9, 0.1, 0.5, 0.3]), "b": np.array([0.8, 0.2, 0.7, 0.6])}
    kept = cdp.select_global(groups, 0.5)
    assert list(kept) == ["a", "b"]
    assert kept["a"].tolist() == [0] and kept["b"].tolist() == [0, 2, 3]
    assert kept["a"].dtype == np.int64
    assert cdp.select_global(groups, 0.0)["a"].tolist() == [0, 1, 2, 3]


def test_select_global_k_in_float():
    # 320 * (1 - 0.8) = 63.99999999999999 -> k = 63, as the pipeline's keep rule.
    scores = np.random.default_rng(1).random(320)
    assert _total(cdp.select_global({"x": scores}, 0.8)) == 63


def test_select_global_never_empties_a_group():
    groups = {"a": np.array([0.1, 0.2, 0.05]), "b": np.array([0.9, 0.8, 0.7])}
    kept = cdp.select_global(groups, 0.5)  # k = 3: all of b; a gets its best back (one more)
    assert kept["a"].tolist() == [1] and kept["b"].tolist() == [0, 1, 2]
    assert cdp.select_global(groups, 0.5, min_channels=2)["a"].tolist() == [0, 1]
    assert cdp.select_global(groups, 0.5, min_channels=0)["a"].tolist() == []
    assert cdp.select_global(groups, 0.5, min_channels=9)["a"].tolist() == [0, 1, 2]


def test_select_global_ties_are_stable():
    groups = {"a": np.array([1.0, 2.0, 1.0]), "b": np.array([1.0, 2.0, 1.0])}
    kept = cdp.select_global(groups, 0.5)  # 2, 2, then the earliest 1 (a's channel 0)
    assert kept["a"].tolist() == [0, 1] and kept["b"].tolist() == [1]
    kept = cdp.select_global({"a": np.full(3, 5.0), "b": np.ones(3)}, 0.5)
    assert kept["a"].tolist() == [0, 1, 2] and kept["b"].tolist() == [0]


def test_select_global_matches_naive_random():
    rng = np.random.default_rng(2)
    for _ in range(30):
        groups = {f"g{i}": np.round(rng.random(rng.integers(1, 20)), 1)
                  for i in range(rng.integers(1, 6))}
        for sparsity in (0.0, 0.3, 0.75, 0.99):
            for floor in (0, 1, 3):
                got = cdp.select_global(groups, sparsity, min_channels=floor)
                want = naive.select_global(groups, sparsity, min_channels=floor)
                assert {k: v.tolist() for k, v in got.items()} == \
                    {k: v.tolist() for k, v in want.items()}
                if floor == 0:
                    assert _total(got) == int(sum(map(len, groups.values())) * (1 - sparsity))


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_select_global_rejects_sparsity(sparsity):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        cdp.select_global({"a": np.ones(3)}, sparsity)


def test_tap():
    assert cdp.READS == "conv"
