"""Tests of fmprune.methods.rgd (redundancy-graph decomposition)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from benchmarks.naive import rgd as naive
from fmprune.methods import rgd

from ..conftest import random_batches


# --------------------------------------------------------------------------------------------
# similarity
# --------------------------------------------------------------------------------------------
def _assert_same_similarity(fast, slow, n_images, n_bits):
    assert fast.dtype == np.float64 and fast.shape == slow.shape
    # one differing bit in one image moves an entry by 1 / (n_images · n_bits) ≥ 1e-4 here, so
    # 1e-12 leaves room only for the rounding of the naive float average: the totals of
    # differing bits are equal integers
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
    ham_fast = np.rint((1.0 - fast) * n_images * n_bits).astype(np.int64)
    ham_slow = np.rint((1.0 - slow) * n_images * n_bits).astype(np.int64)
    np.testing.assert_array_equal(ham_fast, ham_slow)


@pytest.mark.parametrize(
    "h, w, hash_size, sizes",
    [
        (2, 2, 8, [3, 1, 4]),
        (4, 4, 8, [5, 2]),
        (8, 8, 8, [4, 4, 1]),
        (16, 16, 8, [3, 2]),
        (16, 16, 4, [2, 3]),
        (4, 8, 8, [3]),  # non-square: a 4×8 block
        (7, 5, 3, [2, 2]),  # odd sizes
    ],
)
def test_similarity_matches_naive_loop(h, w, hash_size, sizes):
    rng = np.random.default_rng(1000 + 31 * h + w + hash_size)
    c = 7
    batches = random_batches(rng, sizes, c, h, w)
    fast = rgd.similarity(iter(batches), hash_size=hash_size)
    slow = naive.similarity(batches, hash_size=hash_size)
    n_bits = min(hash_size, h) * min(hash_size, w)
    _assert_same_similarity(fast, slow, sum(sizes), n_bits)
    np.testing.assert_array_equal(np.diag(fast), 1.0)
    np.testing.assert_array_equal(fast, fast.T)
    assert fast.min() >= 0.0 and fast.max() <= 1.0


def test_similarity_is_independent_of_batching_and_chunking(monkeypatch):
    rng = np.random.default_rng(7)
    (whole,) = random_batches(rng, [9], 5, 8, 8)
    one = rgd.similarity([whole])
    split = rgd.similarity(list(whole.split([2, 3, 4])))
    np.testing.assert_array_equal(one, split)
    # tiny chunks: every image transformed and compared on its own
    monkeypatch.setattr(rgd, "_CHUNK_ELEMENTS", 1)
    np.testing.assert_array_equal(rgd.similarity([whole]), one)
    np.testing.assert_allclose(one, naive.similarity([whole]), rtol=0, atol=1e-12)


def test_dct_rows_equal_scipy_unnormalised_dct():
    for n, k in [(2, 2), (5, 3), (8, 8), (16, 8)]:
        d = rgd._dct2_rows(n, k).numpy()
        ref = scipy.fft.dct(np.eye(n), type=2, axis=0)[:k]
        np.testing.assert_allclose(d, ref, rtol=0, atol=1e-12 * n)
    # whole-map transform = dctn's top-left block
    rng = np.random.default_rng(3)
    f = rng.standard_normal((6, 10))
    coef = (rgd._dct2_rows(6, 4) @ torch.from_numpy(f) @ rgd._dct2_rows(10, 5).T).numpy()
    np.testing.assert_allclose(coef, scipy.fft.dctn(f, type=2)[:4, :5], rtol=0, atol=1e-10)


def test_similarity_identical_and_opposite_channels():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    # channel 1 = 3 · channel 0 (same hash), channel 2 = a different map
    y = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    maps = torch.from_numpy(np.concatenate([x, 3 * x, y], axis=1))
    sim = rgd.similarity([maps])
    assert sim[0, 1] == 1.0
    assert sim[0, 2] < 1.0


def test_similarity_rejects_bad_input():
    with pytest.raises(ValueError):
        rgd.similarity([])
    with pytest.raises(ValueError):
        rgd.similarity([torch.zeros(2, 3, 4)])
    with pytest.raises(ValueError):
        rgd.similarity([torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, 4)])
    with pytest.raises(ValueError):
        rgd.similarity([torch.zeros(1, 2, 4, 4)], hash_size=0)


# --------------------------------------------------------------------------------------------
# decompose
# --------------------------------------------------------------------------------------------
def _sim_from_edges(n, edges, hi=0.9, lo=0.1):
    sim = np.full((n, n), lo)
    for i, j in edges:
        sim[i, j] = sim[j, i] = hi
    np.fill_diagonal(sim, 1.0)
    return sim


def test_hand_built_graph():
    # Vertices 0..6: triangle 0-1-2, path 3-4-5, isolated 6.
    # L1 norms:      0:1  1:5  2:5  3:2  4:1  5:4  6:9
    # Round 1: the largest non-empty core is the 2-core = the triangle {0, 1, 2} (a path has
    #   no 2-core). One component; the largest L1 is 5, shared by 1 and 2 → the lower index 1
    #   is kept; 0 and 2 are deleted in round 1.
    # Round 2: left edges 3-4, 4-5 → the 1-core {3, 4, 5}, one component; largest L1 is 5
    #   (norm 4) → kept; 3 and 4 are deleted in round 2. 1 and 6 are isolated.
    # Round 3: no edge left → stop. kept = {1, 5, 6}; 2 rounds, kept filters get round 3.
    sim = _sim_from_edges(7, [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5)])
    l1 = np.array([1, 5, 5, 2, 1, 4, 9], dtype=float)
    kept, rounds = rgd.decompose(sim, l1, threshold=0.5)
    np.testing.assert_array_equal(kept, [1, 5, 6])
    np.testing.assert_array_equal(rounds, [1, 3, 1, 2, 2, 3, 3])
    # above every similarity: no edges, nothing deleted, every filter at round 0 + 1
    kept, rounds = rgd.decompose(sim, l1, threshold=0.95)
    np.testing.assert_array_equal(kept, np.arange(7))
    np.testing.assert_array_equal(rounds, np.ones(7))


def test_two_components_in_one_round():
    # Triangles 0-1-2 and 3-4-5, pendant 6 hanging on 0. L1: 0:9 1:1 2:2 3:1 4:3 5:2 6:5.
    # Round 1: 2-core = both triangles (6 has degree 1 and is peeled), two components:
    #   keep 0 (9) and 4 (3); delete 1, 2, 3, 5.
    # Round 2: edge 0-6 remains → 1-core {0, 6}: keep 0 (9 > 5), delete 6.
    # kept = {0, 4}; rounds 1:1 2:1 3:1 5:1 6:2; kept → 3.
    sim = _sim_from_edges(7, [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5), (0, 6)])
    l1 = np.array([9, 1, 2, 1, 3, 2, 5], dtype=float)
    kept, rounds = rgd.decompose(sim, l1, threshold=0.9)  # ≥: 0.9 is an edge
    np.testing.assert_array_equal(kept, [0, 4])
    np.testing.assert_array_equal(rounds, [3, 1, 1, 1, 3, 1, 2])


def test_not_monotone_in_threshold_nor_maximal():
    # Path a-b-c-d (0-1-2-3) at similarity 0.9, plus a-c at 0.8. L1: a largest.
    # threshold 0.85: the path is one 1-core component → keeps a only, although {a, d} would
    #   be independent: the kept set is not a maximal independent set.
    # threshold 0.75: the 2-core {a, b, c} goes first (keep a), then a and d are unconnected
    #   → keeps {a, d}. A lower threshold kept MORE filters: monotonicity is not guaranteed by
    #   the algorithm, which is why the random tests below do not assert it.
    sim = _sim_from_edges(4, [(0, 1), (1, 2), (2, 3)])
    sim[0, 2] = sim[2, 0] = 0.8
    l1 = np.array([10, 1, 2, 3], dtype=float)
    kept_hi, _ = rgd.decompose(sim, l1, threshold=0.85)
    kept_lo, _ = rgd.decompose(sim, l1, threshold=0.75)
    np.testing.assert_array_equal(kept_hi, [0])
    np.testing.assert_array_equal(kept_lo, [0, 3])


def _reference_decompose(sim, l1, threshold):
    """Independent pure-Python version: sets, min-degree peeling, BFS components."""
    n = len(l1)
    nbr = {i: {j for j in range(n) if j != i and sim[i][j] >= threshold} for i in range(n)}
    alive = set(range(n))
    rounds = [0] * n
    r = 0
    while any(nbr[i] & alive for i in alive):
        r += 1
        # core numbers by repeatedly removing a minimum-degree vertex
        left = set(alive)
        deg = {i: len(nbr[i] & alive) for i in alive}
        core = {}
        k = 0
        while left:
            v = min(left, key=lambda i: (deg[i], i))
            k = max(k, deg[v])
            core[v] = k
            left.remove(v)
            for u in nbr[v] & left:
                deg[u] -= 1
        kmax = max(core.values())
        assert kmax >= 1
        members = {i for i in alive if core[i] == kmax}
        seen = set()
        for s in sorted(members):
            if s in seen:
                continue
            comp, stack = {s}, [s]
            while stack:
                v = stack.pop()
                for u in nbr[v] & members:
                    if u not in comp:
                        comp.add(u)
                        stack.append(u)
            seen |= comp
            keep = max(sorted(comp), key=lambda i: (l1[i], -i))
            for v in comp - {keep}:
                alive.remove(v)
                rounds[v] = r
    for v in alive:
        rounds[v] = r + 1
    return sorted(alive), rounds


def _random_sym(rng, n):
    a = rng.random((n, n))
    sim = (a + a.T) / 2
    np.fill_diagonal(sim, 1.0)
    return sim


def test_random_graphs_properties_and_reference():
    rng = np.random.default_rng(11)
    for trial in range(60):
        n = int(rng.integers(2, 25))
        sim = _random_sym(rng, n)
        # integer-valued norms with repeats exercise the tie rule
        l1 = rng.integers(0, 6, size=n).astype(float)
        for threshold in (0.3, 0.5, 0.7, 0.85, 0.95):
            kept, rounds = rgd.decompose(sim, l1, threshold)
            adj = (sim >= threshold) & ~np.eye(n, dtype=bool)
            assert kept.dtype.kind == "i" and rounds.shape == (n,)
            assert np.all(np.diff(kept) > 0)
            # kept set = the filters of the top round, and it is independent
            last = rounds.max()
            np.testing.assert_array_equal(kept, np.flatnonzero(rounds == last))
            assert not adj[np.ix_(kept, kept)].any()
            assert np.all(rounds[np.setdiff1d(np.arange(n), kept)] < last)
            assert set(np.unique(rounds)) <= set(range(1, last + 1))
            # every deleted filter had an edge to a filter still present when it was deleted
            # (it sat in a k-core with k ≥ 1); present at round r = deleted at r or later
            for v in np.flatnonzero(rounds < last):
                present = rounds >= rounds[v]
                assert adj[v, present].any()
            # each round's keepers survive it: a deleted filter's k-core component kept one
            # filter with L1 ≥ its own, so some filter with L1 ≥ l1[v] outlives round r
            for v in np.flatnonzero(rounds < last):
                assert np.any((rounds > rounds[v]) & (l1 >= l1[v]))
            ref_kept, ref_rounds = _reference_decompose(sim, l1, threshold)
            np.testing.assert_array_equal(kept, ref_kept)
            np.testing.assert_array_equal(rounds, ref_rounds)


def test_decompose_rejects_bad_input():
    sim = _random_sym(np.random.default_rng(0), 4)
    with pytest.raises(ValueError):
        rgd.decompose(sim, np.ones(3), 0.5)
    with pytest.raises(ValueError):
        rgd.decompose(sim[:, :3], np.ones(4), 0.5)
    bad = sim.copy()
    bad[0, 1] += 0.2
    with pytest.raises(ValueError):
        rgd.decompose(bad, np.ones(4), 0.5)


def test_decompose_on_measured_similarity():
    # end to end: duplicated channels are redundant and collapse to one per duplicate group
    rng = np.random.default_rng(2)
    base = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    maps = np.concatenate([base, 2 * base[:, :2], base[:, :1] * 0.5], axis=1)  # C = 6
    sim = rgd.similarity([torch.from_numpy(maps)])
    l1 = np.array([1.0, 1.0, 1.0, 3.0, 0.5, 0.2])
    kept, _ = rgd.decompose(sim, l1, threshold=0.99)
    # groups {0, 3, 5} (copies of channel 0) keep 3, {1, 4} keep 1, {2} stays
    np.testing.assert_array_equal(kept, [1, 2, 3])


# --------------------------------------------------------------------------------------------
# ranking_scores, group_similarity
# --------------------------------------------------------------------------------------------
def test_ranking_scores_order():
    rng = np.random.default_rng(4)
    for _ in range(20):
        n = int(rng.integers(3, 30))
        sim = _random_sym(rng, n)
        l1 = rng.integers(0, 5, size=n).astype(float) * 10.0**rng.integers(-3, 4)
        kept, rounds = rgd.decompose(sim, l1, 0.6)
        scores = rgd.ranking_scores(rounds, l1)
        deleted = np.setdiff1d(np.arange(n), kept)
        if deleted.size:
            assert scores[kept].min() > scores[deleted].max()
        for i in range(n):
            for j in range(n):
                if rounds[i] > rounds[j]:
                    assert scores[i] > scores[j]
                elif rounds[i] == rounds[j]:
                    assert np.sign(scores[i] - scores[j]) == np.sign(l1[i] - l1[j])
        # the pipeline's ranking (descending, ties → lower index) puts the kept set first
        order = sorted(range(n), key=lambda i: (-scores[i], i))
        assert sorted(order[: kept.size]) == kept.tolist()


def test_ranking_scores_hand_example():
    rounds = np.array([1, 3, 1, 2, 2, 3, 3])
    l1 = np.array([1, 5, 5, 2, 1, 4, 9], dtype=float)
    order = np.argsort(-rgd.ranking_scores(rounds, l1), kind="stable")
    np.testing.assert_array_equal(order, [6, 1, 5, 3, 4, 2, 0])


def test_group_similarity():
    a = np.array([[1.0, 0.2], [0.2, 1.0]])
    b = np.array([[1.0, 0.6], [0.6, 1.0]])
    np.testing.assert_allclose(rgd.group_similarity([a, b]), [[1.0, 0.4], [0.4, 1.0]])
    np.testing.assert_array_equal(rgd.group_similarity([a]), a)
    with pytest.raises(ValueError):
        rgd.group_similarity([])
    with pytest.raises(ValueError):
        rgd.group_similarity([a, np.eye(3)])


def test_tap():
    assert rgd.READS == "conv"
