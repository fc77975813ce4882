"""Tests of fmprune.methods.fpfmc (FP-FMC, METHODS.md section "FP-FMC")."""

import numpy as np
import pytest
from scipy.spatial.distance import squareform
from sklearn.manifold import _t_sne as sk_tsne
from sklearn.metrics import adjusted_rand_score, pairwise_distances, silhouette_score
from threadpoolctl import threadpool_limits

from benchmarks.naive import fpfmc as naive
from fmprune.methods import fpfmc as F


# ------------------------------------------------------------------------------ step 2: RI
def test_redundancy_index_by_hand():
    labels = np.array(
        [
            [0, 0, 0, 1, 1, 1],  # image 0: {0,1,2} {3,4,5}
            [0, 0, 1, 1, 2, 2],  # image 1: {0,1} {2,3} {4,5}
            [0, 0, 0, 1, 1, -1],  # image 2: {0,1,2} {3,4}, filter 5 outlier
        ]
    )
    # Contributions per ordered pair (a,b) -> filters f0..f5:
    # (0,1) X{012}: |∩{01}|=2 max -> f0,f1 +2.  X{345}: |∩{45}|=2 max -> f4,f5 +2
    # (0,2) X{012}: |∩{012}|=3 -> f0,f1,f2 +3.  X{345}: |∩{34}|=2 -> f3,f4 +2 (f5 is no Y)
    # (1,0) X{01}: 2 -> f0,f1 +2.  X{23}: ties 1,1 -> Z=all -> f2,f3 +1.  X{45}: 2 -> f4,f5 +2
    # (1,2) X{01}: 2 -> f0,f1 +2.  X{23}: ties 1,1 -> f2,f3 +1.  X{45}: |∩{34}|=1 -> f4 +1
    # (2,0) X{012}: 3 -> f0,f1,f2 +3.  X{34}: 2 -> f3,f4 +2.  outlier f5 -1
    # (2,1) X{012}: |∩{01}|=2 -> f0,f1 +2.  X{34}: ties {23},{45} -> Z={2,3,4,5} -> f3,f4 +1.
    #       outlier f5 -1
    # f0 = 2+3+2+2+3+2 = 14, f1 = 14, f2 = 0+3+1+1+3+0 = 8, f3 = 0+2+1+1+2+1 = 7,
    # f4 = 2+2+2+1+2+1 = 10, f5 = 2+0+2+0-1-1 = 2
    expected = np.array([14, 14, 8, 7, 10, 2])
    ri = F.redundancy_index(labels)
    assert ri.dtype == np.int64
    np.testing.assert_array_equal(ri, expected)
    np.testing.assert_array_equal(naive.redundancy_index(labels), expected)
    np.testing.assert_array_equal(F.keep_order(ri), [5, 3, 2, 4, 0, 1])


def test_redundancy_index_matches_naive_random():
    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(2, 7))
        c = int(rng.integers(1, 20))
        k = int(rng.integers(1, 6))
        lab = rng.integers(0, k, size=(n, c))
        lab[rng.random((n, c)) < rng.uniform(0, 0.4)] = -1
        if trial % 5 == 0:
            lab[0] = -1  # an image with no real cluster
        if trial % 7 == 0:
            lab[-1] = np.maximum(lab[-1], 0)  # an image without outliers
        np.testing.assert_array_equal(F.redundancy_index(lab), naive.redundancy_index(lab))


def test_outliers_charged_per_pair_and_no_reference_bug():
    # one cluster everywhere, no outliers: every pair gives every filter +C, nothing negative
    n, c = 4, 5
    np.testing.assert_array_equal(
        F.redundancy_index(np.zeros((n, c), int)), np.full(c, n * (n - 1) * c)
    )
    # a filter that is an outlier in one image of four is charged -1 for each of 3 pairs
    lab = np.zeros((n, c), int)
    lab[2, 4] = -1
    ri = F.redundancy_index(lab)
    # f4: pairs (a,b) with a,b != 2 (6 pairs) give +m with m = 5 (X∩Y of a 5- and 4-filter
    # cluster = 4 when either side is image 2, else 5); from a = 2: -1 three times;
    # to b = 2: f4 is in no Y -> 0.
    assert ri[4] == 6 * 5 - 3
    np.testing.assert_array_equal(ri, naive.redundancy_index(lab))


def test_scores_rank_like_keep_order():
    ri = np.array([5, 3, 5, -2, 3, 0])
    order = F.keep_order(ri)
    np.testing.assert_array_equal(order, [3, 5, 1, 4, 0, 2])
    scores = F.channel_scores_from_ri(ri)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(np.argsort(-scores, kind="stable"), order)


# ------------------------------------------------------------------------------ embedding
def test_normalize_maps():
    torch = pytest.importorskip("torch")
    maps = np.zeros((1, 3, 2, 2), np.float32)
    maps[0, 1] = [[1, 4], [2, 0]]
    maps[0, 2] = [[-1, -3], [-2, -5]]  # non-positive max -> zeros
    out = F.normalize_maps(torch.from_numpy(maps))
    np.testing.assert_array_equal(out[0, 0], 0)
    np.testing.assert_allclose(out[0, 1], [0.25, 1, 0.5, 0])
    np.testing.assert_array_equal(out[0, 2], 0)
    with pytest.raises(ValueError):
        F.normalize_maps(np.full((1, 1, 2, 2), np.nan, np.float32))


def _random_maps(n, c, s=8, seed=0):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.normal(size=(n, c, s, s)), 0).astype(np.float32)


def test_tsne_replicates_sklearn_exact():
    """Same P, same KL and gradient, same optimiser steps as sklearn's exact t-SNE.

    (Whole runs are compared only statistically: the perplexity-1 optimisation is chaotic,
    differences of 1e-16 grow ~2x per iteration, so even sklearn's float32 and float64 runs
    end in different layouts.)"""
    x = F.normalize_maps(_random_maps(1, 12))
    d = pairwise_distances(x[0], squared=True)
    p_sk = squareform(sk_tsne._joint_probabilities(d, 1.0, 0))
    cond = F._conditional_p(F._sq_distances_f32(x), 1.0)[0]
    p = cond + cond.T
    p = np.maximum(p / p.sum(), F._MACHINE_EPSILON) * (1 - np.eye(12))
    np.testing.assert_allclose(p, p_sk, rtol=1e-9, atol=1e-15)

    y = np.random.default_rng(1).normal(size=(12, 2))
    e_sk, g_sk = sk_tsne._kl_divergence(y.ravel(), squareform(p_sk), 1, 12, 2)
    e, g = F._tsne_grad(y[None], p_sk[None], True)
    np.testing.assert_allclose(e[0], e_sk, rtol=1e-10)
    np.testing.assert_allclose(g[0].ravel(), g_sk, rtol=1e-9, atol=1e-14)

    init = (1e-4 * np.random.RandomState(0).standard_normal((12, 2)).astype(np.float32)).astype(
        np.float64
    )
    iters = 8
    y_sk, _, _ = sk_tsne._gradient_descent(
        sk_tsne._kl_divergence, init.ravel(), 0, iters, n_iter_check=50,
        n_iter_without_progress=250, momentum=0.5, learning_rate=50.0,
        args=[squareform(p_sk) * 12.0, 1, 12, 2],
    )
    old = F.TSNE_MAX_ITER
    try:
        F.TSNE_MAX_ITER = iters
        y_f = F._tsne_batch(x, 0)[0]
    finally:
        F.TSNE_MAX_ITER = old
    np.testing.assert_allclose(y_f.ravel(), y_sk, rtol=1e-8, atol=1e-10)


def test_embed_shapes_determinism_workers():
    maps = _random_maps(20, 8, seed=3)  # 20 images -> two t-SNE chunks
    c1, i1 = F.embed(maps, seed=5, workers=1)
    c2, i2 = F.embed(maps, seed=5, workers=2)
    assert c1.shape == (20, 8, 2) and i1.shape == (20, 8) and i1.dtype == bool
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(i1, i2)
    c3, _ = F.embed(maps, seed=6, workers=1)
    assert not np.array_equal(c1, c3)
    np.testing.assert_array_equal(i1, F.iqr_inliers(c1))


def test_iqr_inliers():
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(3, 30, 2))
    coords[0, 4] = [50.0, 0.0]
    coords[1, 7] = [0.0, -50.0]
    inl = F.iqr_inliers(coords)
    assert not inl[0, 4] and not inl[1, 7]
    assert inl.sum() >= 80


# ------------------------------------------------------------------------------ steps 0 and 1
def test_k_range():
    assert list(F.k_range(5, 5)) == [2, 3, 4]
    assert list(F.k_range(5, 3)) == [2]
    assert list(F.k_range(16, 2)) == []
    assert list(F.k_range(32, 32)) == list(range(2, 32))
    assert list(F.k_range(64, 64)) == list(range(2, 32))
    assert list(F.k_range(128, 100)) == list(range(2, 64))


def test_select_k_recovers_planted_clusters():
    # 4 well-separated sparse prototypes; each image sees its own noisy copy of them
    # (noise 0.3) and every channel is its prototype scaled by a power of two, so after the
    # max-normalisation the 8 channels of a group coincide. (With perplexity 1.0 each point
    # is attracted essentially to its nearest neighbour only, so groups of distinct
    # near-duplicates break up into nearest-neighbour components - sklearn's TSNE does the
    # same - and the planted K is not what the method is expected to find there.)
    rng = np.random.default_rng(0)
    n, c, hw, p = 8, 32, 64, 4
    protos = np.abs(rng.normal(size=(p, hw))) * (rng.random((p, hw)) < 0.3)
    noisy = np.maximum(protos[None] + 0.3 * rng.normal(size=(n, p, hw)), 0)
    scale = 2.0 ** rng.integers(-3, 4, size=(n, c, 1))
    maps = (noisy[:, np.arange(c) % p] * scale).astype(np.float32).reshape(n, c, 8, 8)
    coords, inl = F.embed(maps, seed=0, workers=1)
    k, per_image = F.select_k(coords, inl, seed=0, workers=1)
    assert k == 4
    assert per_image.shape == (n,) and np.all(per_image == 4)
    labels = F.cluster(coords, inl, k, seed=0)
    truth = np.arange(c) % p
    for i in range(n):
        m = inl[i]
        assert adjusted_rand_score(truth[m], labels[i][m]) == 1.0


def test_cluster_outliers_and_label_range():
    rng = np.random.default_rng(2)
    coords = rng.normal(size=(4, 24, 2))
    coords[:, 0] = [40.0, 40.0]
    coords[2, 5] = [-30.0, 1.0]
    inl = F.iqr_inliers(coords)
    for k in (2, 5):
        lab = F.cluster(coords, inl, k, seed=0)
        assert lab.shape == (4, 24) and lab.dtype == np.int64
        np.testing.assert_array_equal(lab == -1, ~inl)
        assert lab[inl].min() >= 0 and lab[inl].max() < k
        for i in range(4):
            assert len(np.unique(lab[i][inl[i]])) == k
    # k larger than the inliers of an image is capped
    lab = F.cluster(coords[:, :3], np.ones((4, 3), bool), 7, seed=0)
    assert lab.max() <= 2


def test_small_c_k_bounded_and_deterministic():
    maps = _random_maps(6, 5, s=4, seed=1)
    coords, inl = F.embed(maps, seed=0, workers=1)
    k1, per1 = F.select_k(coords, inl, seed=0, workers=1)
    k2, per2 = F.select_k(coords, inl, seed=0, workers=2)
    assert k1 == k2
    np.testing.assert_array_equal(per1, per2)
    n_in = inl.sum(axis=1)
    voted = per1 > 0
    assert np.all(per1[voted] <= n_in[voted] - 1) and np.all(per1 <= 4)
    assert np.all(per1[n_in <= 2] == 0)
    # coords with 3 inliers in every image: only K = 2 is allowed
    inl3 = np.zeros_like(inl)
    inl3[:, :3] = True
    k3, per3 = F.select_k(coords, inl3, seed=0, workers=1)
    assert k3 == 2 and np.all((per3 == 2) | (per3 == 0))
    # no image can vote -> K = 1
    k4, per4 = F.select_k(coords[:, :2], np.ones((6, 2), bool), seed=0, workers=1)
    assert k4 == 1 and np.all(per4 == 0)
    np.testing.assert_array_equal(
        F.cluster(coords, inl, k1, seed=0), F.cluster(coords, inl, k1, seed=0)
    )


def test_silhouette_matches_sklearn():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, 2))
    sets = [rng.integers(0, k, size=20) for k in (2, 3, 5, 8)]
    sets.append(np.r_[np.zeros(19, int), 3])  # a singleton cluster, label gap
    sets.append(np.zeros(20, int))  # one cluster: invalid
    got = F.silhouette_scores(x, np.stack(sets))
    for s, g in zip(sets[:-1], got[:-1]):
        assert g == pytest.approx(silhouette_score(x, s), abs=1e-12)
    assert got[-1] == -np.inf


def test_silhouette_blocks_give_the_unblocked_scores(monkeypatch):
    """Wide layers score their K sweep in blocks of labellings; any block size, same scores."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 2))
    sets = np.stack([rng.integers(0, k, size=30) for k in range(2, 15)])
    whole = F.silhouette_scores(x, sets)
    monkeypatch.setattr(F, "SILHOUETTE_BLOCK_ELEMS", 30 * 14 * 4)  # 4 labellings per block
    np.testing.assert_array_equal(F.silhouette_scores(x, sets), whole)
    monkeypatch.setattr(F, "SILHOUETTE_BLOCK_ELEMS", 1)  # one labelling per block
    np.testing.assert_array_equal(F.silhouette_scores(x, sets), whole)


def test_kmeans_and_select_k_agree_with_sklearn():
    """Same embedding, our KMeans+silhouette vs sklearn KMeans(n_init=10)+silhouette_score."""
    rng = np.random.default_rng(7)
    n, c = 6, 14
    centers = rng.normal(scale=6.0, size=(4, 2))
    coords = centers[rng.integers(0, 4, size=(n, c))] + rng.normal(size=(n, c, 2))
    inl = F.iqr_inliers(coords)
    k, per = F.select_k(coords, inl, seed=0, workers=1)
    with threadpool_limits(1):  # sklearn's OpenMP threads crawl on a busy 2-core machine
        k_n, per_n = naive.select_k(coords, inl, seed=0)
        lab_n = naive.cluster(coords, inl, k, seed=0)
    assert k == k_n
    assert np.mean(per == per_n) >= 5 / 6
    lab = F.cluster(coords, inl, k, seed=0)
    aris = [adjusted_rand_score(lab[i][inl[i]], lab_n[i][inl[i]]) for i in range(n)]
    assert np.mean(aris) > 0.95
