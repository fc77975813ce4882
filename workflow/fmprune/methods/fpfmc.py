"""FP-FMC: Filter Pruning via Feature Map Clustering (Li, He, Zhang, Tang, IDA 2023).

Specification: ``docs/METHODS.md`` section "FP-FMC" (tap ``act``). The pipeline runs three
Snakemake rules per tap, each backed by one function of this module:

``kselect``  ``embed(maps)`` -> (coords, inlier); ``select_k(coords, inlier)`` -> (K, K per image).
             The rule stores coords/inlier next to K so that ``cluster`` does not redo t-SNE.
``cluster``  ``cluster(coords, inlier, K)`` -> labels [N, C] (−1 = outlier).
``sort``     ``redundancy_index(labels)`` -> RI [C]; ``keep_order(ri)`` /
             ``channel_scores_from_ri(ri)``.

Those rules are the pipeline's cached path (a K file can be inspected and reused); ``score``
runs the same steps in memory, one group at a time, for tests and benchmarks.

Coupled groups (a residual stream written by several convs): each member tap is embedded and
clustered on its own; the members' RI vectors are summed (METHODS.md, "Conventions") and the
sum is ranked with ``keep_order`` or ``channel_scores_from_ri``.

What is computed, and every choice made where the specification leaves room
--------------------------------------------------------------------------------------------
Normalisation (``normalize_maps``)
    Each map is flattened to H·W values and divided by its own maximum. A map whose maximum is
    not positive is set to all zeros: for the ``act`` tap (after ReLU, values >= 0) that is
    exactly the all-zero map, i.e. the specified 0/0 -> 0; for a tap that can be negative
    (no ReLU) a map without any positive value is treated the same way (as inactive) instead
    of being divided by a negative number, which would flip its sign. Non-finite maps raise.

t-SNE (``tsne_exact``)
    The embedding is scikit-learn's ``TSNE(n_components=2, perplexity=1.0, method="exact",
    init="random", random_state=seed)`` with all other parameters at their defaults
    (1000 iterations, early exaggeration 12 for the first 250, learning rate "auto" = 50 for
    these sizes, momentum 0.5 then 0.8, gains with min_gain 0.01, convergence checks every 50
    iterations, n_iter_without_progress 300, min_grad_norm 1e-7), re-implemented so that many
    images run as one vectorised batch instead of one Python-level optimisation per image
    (sklearn's exact gradient loops over points in Python; at C = 16 … 64 points that costs
    70–200 ms per image). The binary search for the Gaussian precisions replicates
    sklearn's Cython routine (100 steps, tolerance 1e-5 on the entropy, distances rounded to
    float32 as sklearn does); the optimiser replicates ``_gradient_descent`` including its
    per-image stopping rules. It runs in float64 (sklearn keeps the embedding in float32),
    so coordinates agree with sklearn closely but not bit for bit; the tests and
    ``benchmarks/naive/fpfmc.py`` compare the two. "exact" rather than Barnes-Hut because the
    exact gradient is the definition and at ≤ 64 points is cheap; "random" rather than "pca"
    initialisation because it is specified by the seed alone (sklearn draws it as
    ``RandomState(seed).standard_normal((C, 2)) * 1e-4``, the same draw for every image).
    Images are processed in chunks whose size depends on C only (``TSNE_CHUNK``), and every
    operation is per image (no BLAS in the gradient), so the result does not depend on
    ``workers``. Pairwise distances are summed from explicit differences, so identical maps
    (e.g. several dead, all-zero channels) are exactly 0 apart and collapse to one point.
    Cost is O(C²) per iteration: fine for CIFAR widths (C ≤ 64: 5–35 ms per image); for
    C in the thousands (ImageNet) it is seconds per image.

Outliers (``iqr_inliers``)
    Per image and coordinate, Q1 and Q3 by ``numpy.percentile`` (linear interpolation);
    a point is an outlier if it lies outside [Q1 − 1.5·IQR, Q3 + 1.5·IQR] in either coordinate
    (points exactly on a fence are inliers).

K range (``k_range``)
    K = 2 … maxK−1 with maxK = C//2 if C ≥ 64 else C, and K ≤ (inliers of the image) − 1
    (silhouette needs at most n−1 clusters; the reference's range can exceed it). An image
    whose range is empty, or for which no K yields a valid silhouette (fewer than 2 distinct
    labels, e.g. all inliers at one point), does not vote; its per-image K is reported as 0.
    If no image votes, the layer's K is 1 (every inlier in one cluster).

KMeans (``kmeans``)
    A small vectorised numpy KMeans instead of sklearn's (whose per-call overhead, ~1 ms,
    dominates on ≤ 64 two-dimensional points and ~30 values of K per image): sklearn's greedy
    k-means++ initialisation (2 + ⌊ln k⌋ local trials, first centre uniform),
    ``KMEANS_N_INIT`` = 10 restarts run as one batch, Lloyd iterations until the labels stop
    changing (at most 300), an empty cluster is re-seeded at the point farthest from its
    centre (as sklearn does), and the restart with the lowest inertia wins (first on ties).
    Random numbers come from ``numpy.random.default_rng((seed, image, k))``, so
    ``cluster`` with the layer's K reproduces exactly the clustering that was scored in
    ``select_k`` for that image and K. Agreement with sklearn's ``KMeans(n_init=10)`` +
    ``silhouette_score`` is measured in the tests and the benchmark.

Silhouette (``silhouette_scores``)
    sklearn's definition (mean over inliers of (b − a)/max(a, b), 0 for members of singleton
    clusters), computed for all K of an image at once from one pairwise-distance matrix:
    the per-cluster distance sums are one batched product D·onehot.

K selection
    Per image argmax over K (ties -> smaller K); layer K = most common per-image K
    (ties -> smaller K). Images run in parallel (joblib, processes) over ``workers``.

Clustering
    KMeans with k_i = min(K, inliers of image i) on the inliers of each image (KMeans cannot
    make more clusters than points); outliers get −1; an image with no inliers is all −1.

Redundancy index (``redundancy_index``)
    For every ordered image pair (a, b), a ≠ b, and every real cluster X of image a
    (label ≥ 0): m = max over the real clusters Y of image b of |X ∩ Y| (filters that are
    outliers in b belong to no Y), Z = union of the Y attaining m, each filter of X ∩ Z gets
    +m. In the same per-pair loop every filter labelled −1 in image a gets −1, i.e. an
    outlier in image a is charged N−1 in total (once per ordered pair (a, ·)), following
    METHODS.md's "RI = sum over all pairs" literally. Only true outliers are charged: the
    reference code charges the first cluster of image a as if it were the outlier group even
    when image a has no outliers; that bug is not reproduced. If image b has no real
    cluster, the pair adds nothing for X.

    b's outliers never form a candidate Y. This departs from the reference, whose candidates
    are b's members of each label occurring in a, so that whenever a has outliers, b's
    outliers are one more "cluster" X can match. Kept on purpose: an outlier is a map that
    belongs to no cluster (the 1.5×IQR rule removes it before KMeans, and the paper clusters
    the inliers only), so b's outliers, scattered over the embedding, are not a group of
    similar maps; letting them match would reward filters of X with redundancy for being
    isolated in b, the opposite of the charge an outlier gets in a, and would make the
    candidate set of b depend on whether a happens to have outliers. Vectorised: with one-hot label matrices the counts
    |X ∩ Y| for all (X, Y) are one matrix product [K_a × C]·[C × N·K]; a filter f of cluster
    X gets |X ∩ Y_b(f)| whenever that count equals the row maximum m, because f ∈ Z exactly
    when its own cluster in b attains m.

Cost (one busy core of the 2-core dev box, random ReLU maps; sklearn figures are the
naive reference ``benchmarks/naive/fpfmc.py``)
    per image, t-SNE + K sweep: C=16: 4 + 3 ms (sklearn 65 + 56 ms); C=32: 10 + 14 ms
    (100 + 177 ms); C=64: 37 + 27 ms (196 + 244 ms). ResNet-56-sized run (19 taps of
    16 ch, 18 of 32, 18 of 64; N = 128; embed + select_k + cluster + RI; workers=2): ~190 s.

Ranking
    Highest RI = most redundant. ``keep_order`` = stable ascending argsort of RI (lowest RI
    kept first, ties -> lower channel index); ``channel_scores_from_ri`` = −RI so that the
    pipeline's generic "higher score kept, ties -> lower index" ranking gives the same order.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import numpy as np

from .. import paths
from .params import integer

__all__ = [
    "READS",
    "score",
    "normalize_maps",
    "tsne_exact",
    "iqr_inliers",
    "embed",
    "k_range",
    "kmeans",
    "silhouette_scores",
    "select_k",
    "cluster",
    "redundancy_index",
    "keep_order",
    "channel_scores_from_ri",
]

READS = "act"
PARAMS = {"images": integer(1), "seed": integer(0)}  # of score and the three rules, with their checks
# The pipeline scores FP-FMC by its own rules (kselect → cluster → sort), whose logs these are.
RULE_LOGS = (paths.FPFMC_KSELECT_LOG, paths.FPFMC_CLUSTER_LOG, paths.FPFMC_SORT_LOG)

# t-SNE parameters (sklearn TSNE defaults, perplexity from the paper).
PERPLEXITY = 1.0
TSNE_MAX_ITER = 1000
TSNE_EXPLORATION_ITER = 250
TSNE_EARLY_EXAGGERATION = 12.0
TSNE_N_ITER_CHECK = 50
TSNE_N_ITER_WITHOUT_PROGRESS = 300
TSNE_MIN_GRAD_NORM = 1e-7
TSNE_MIN_GAIN = 0.01
TSNE_CHUNK = 16  # images per vectorised t-SNE batch at C <= 64 (fewer for larger C so that
TSNE_CHUNK_ELEMS = 16 * 64 * 64  # a batch's [B, C, C] arrays stay small); fixed per C

# KMeans parameters.
KMEANS_N_INIT = 10
KMEANS_MAX_ITER = 300

IQR_FACTOR = 1.5

SILHOUETTE_BLOCK_ELEMS = 1 << 22  # elements of a silhouette block's [block, n, K] arrays (32 MiB)

_MACHINE_EPSILON = np.finfo(np.float64).eps
# sklearn's Cython constants are C floats: use their float32 values.
_PERPLEXITY_TOL = float(np.float32(1e-5))
_EPSILON_DBL = float(np.float32(1e-8))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _to_numpy(a: Any) -> np.ndarray:
    """numpy view of a numpy array or a torch tensor (no torch import needed)."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _n_workers(workers: int | None) -> int:
    if workers is None:
        workers = os.cpu_count() or 1
    return max(1, int(workers))


def _parallel_map(fn, chunks: list, workers: int) -> list:
    """Apply ``fn`` to every chunk, in processes when workers > 1 and there is > 1 chunk."""
    if workers <= 1 or len(chunks) <= 1:
        return [fn(c) for c in chunks]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=min(workers, len(chunks)), backend="loky")(
        delayed(fn)(c) for c in chunks
    )


# --------------------------------------------------------------------------------------------
# embedding
# --------------------------------------------------------------------------------------------
def normalize_maps(maps: Any) -> np.ndarray:
    """[N, C, H, W] maps -> [N, C, H·W] float32, each map divided by its own max.

    A map whose max is <= 0 becomes all zeros (0/0 -> 0 for the all-zero map of an ``act``
    tap; a map with no positive value is treated as inactive rather than sign-flipped).
    """
    x = _to_numpy(maps)
    if x.ndim != 4:
        raise ValueError(f"FP-FMC expects maps of shape [N, C, H, W], got {x.shape}")
    n, c = x.shape[:2]
    x = x.reshape(n, c, -1).astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError("FP-FMC: feature maps contain NaN or Inf")
    mx = x.max(axis=2, keepdims=True)
    pos = mx > 0
    out = np.divide(x, mx, out=np.zeros_like(x), where=pos)
    return out


def _sq_distances_f32(x: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [B, n, n] between the rows of x [B, n, d].

    Summed from explicit differences in float64 (identical maps are exactly 0 apart, which at
    perplexity 1 matters: the dot-product formula can leave ~1e-16 between duplicates, and
    with the precision driven towards 2^100 that cuts every affinity of the duplicates), then
    rounded to float32 as sklearn's exact t-SNE does before its binary search."""
    b, n, _ = x.shape
    x64 = x.astype(np.float64)
    d = np.empty((b, n, n))
    for i in range(n):
        diff = x64 - x64[:, i : i + 1, :]
        d[:, i, :] = np.einsum("bjk,bjk->bj", diff, diff)
    return d.astype(np.float32).astype(np.float64)


def _conditional_p(d2: np.ndarray, perplexity: float) -> np.ndarray:
    """Batched replica of sklearn.manifold._utils._binary_search_perplexity (square input).

    d2: [B, n, n] squared distances. Returns conditional P [B, n, n] (rows sum to 1, zero
    diagonal)."""
    b, n, _ = d2.shape
    d = d2.reshape(b * n, n)
    rows = d.shape[0]
    diag = np.zeros((rows, n), dtype=bool)
    diag[np.arange(rows), np.tile(np.arange(n), b)] = True
    beta = np.ones(rows)
    beta_min = np.full(rows, -np.inf)
    beta_max = np.full(rows, np.inf)
    done = np.zeros(rows, dtype=bool)
    p_out = np.zeros((rows, n))
    desired_entropy = np.log(perplexity)
    for _ in range(100):
        live = ~done
        if not live.any():
            break
        dl = d[live]
        bl = beta[live]
        p = np.exp(-dl * bl[:, None])
        p[diag[live]] = 0.0
        s = p.sum(axis=1)
        s[s == 0.0] = _EPSILON_DBL
        p /= s[:, None]
        entropy = np.log(s) + bl * (dl * p).sum(axis=1)
        diff = entropy - desired_entropy
        p_out[live] = p
        conv = np.abs(diff) <= _PERPLEXITY_TOL
        # beta update for rows that did not converge
        bmin, bmax = beta_min[live], beta_max[live]
        up = diff > 0.0
        new_bmin = np.where(up, bl, bmin)
        new_bmax = np.where(up, bmax, bl)
        new_beta = np.where(
            up,
            np.where(np.isinf(bmax), bl * 2.0, (bl + bmax) / 2.0),
            np.where(np.isinf(bmin), bl / 2.0, (bl + bmin) / 2.0),
        )
        keep = ~conv
        beta[live] = np.where(keep, new_beta, bl)
        beta_min[live] = np.where(keep, new_bmin, bmin)
        beta_max[live] = np.where(keep, new_bmax, bmax)
        done[live] = conv
    return p_out.reshape(b, n, n)


def _tsne_grad(y: np.ndarray, p: np.ndarray, compute_error: bool):
    """KL(P||Q) (sklearn's convention: full off-diagonal sum) and its gradient, batched.

    y [B, n, 2], p [B, n, n] symmetric joint P with zero diagonal (already exaggerated if
    applicable). Coordinate differences are formed per axis (no BLAS, no cancellation), so
    every image's result is independent of the batch it runs in."""
    n = y.shape[1]
    di = np.arange(n)
    dx = y[:, :, None, 0] - y[:, None, :, 0]
    dy = y[:, :, None, 1] - y[:, None, :, 1]
    w = dx * dx
    w += dy * dy
    w += 1.0
    np.reciprocal(w, out=w)  # Student-t kernel, dof = 1
    w[:, di, di] = 0.0
    z = w.sum(axis=(1, 2))
    q = w / z[:, None, None]
    np.maximum(q, _MACHINE_EPSILON, out=q)
    q[:, di, di] = 0.0
    pqd = p - q
    pqd *= w
    grad = np.empty_like(y)
    grad[:, :, 0] = (pqd * dx).sum(axis=2)
    grad[:, :, 1] = (pqd * dy).sum(axis=2)
    grad *= 4.0
    err = None
    if compute_error:
        q[:, di, di] = 1.0
        t = p * np.log(np.maximum(p, _MACHINE_EPSILON) / q)
        t[:, di, di] = 0.0
        err = t.sum(axis=(1, 2))
    return err, grad


def _tsne_batch(x: np.ndarray, seed: int) -> np.ndarray:
    """Exact t-SNE (perplexity 1, sklearn defaults, random init) of every item of x [B, n, d]."""
    b, n, _ = x.shape
    if n < 2:
        return np.zeros((b, n, 2))
    cond = _conditional_p(_sq_distances_f32(x), PERPLEXITY)
    p = cond + cond.transpose(0, 2, 1)
    p /= np.maximum(p.sum(axis=(1, 2)), _MACHINE_EPSILON)[:, None, None]
    offdiag = ~np.eye(n, dtype=bool)
    p = np.maximum(p, _MACHINE_EPSILON) * offdiag

    init = 1e-4 * np.random.RandomState(seed).standard_normal(size=(n, 2)).astype(np.float32)
    y = np.broadcast_to(init.astype(np.float64), (b, n, 2)).copy()
    lr = max(n / TSNE_EARLY_EXAGGERATION / 4.0, 50.0)

    out = np.empty_like(y)
    idx = np.arange(b)  # original index of each live item
    pc = p * TSNE_EARLY_EXAGGERATION  # current P (exaggerated during exploration)
    phase = np.zeros(b, dtype=np.int8)  # 0 exploration, 1 final
    update = np.zeros_like(y)
    gains = np.ones_like(y)
    best_err = np.full(b, np.finfo(float).max)
    best_iter = np.zeros(b, dtype=np.int64)

    for i in range(TSNE_MAX_ITER):
        check = (i + 1) % TSNE_N_ITER_CHECK == 0
        err, grad = _tsne_grad(y, pc, check)
        inc = update * grad < 0.0
        gains = np.where(inc, gains + 0.2, gains * 0.8)
        np.maximum(gains, TSNE_MIN_GAIN, out=gains)
        grad *= gains
        mom = np.where(phase == 0, 0.5, 0.8)[:, None, None]
        update = mom * update - lr * grad
        y += update

        stop = np.zeros(len(idx), dtype=bool)
        if check:
            gnorm = np.sqrt((grad * grad).sum(axis=(1, 2)))
            niwp = np.where(phase == 0, TSNE_EXPLORATION_ITER, TSNE_N_ITER_WITHOUT_PROGRESS)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_iter = np.where(better, i, best_iter)
            stop = (~better & (i - best_iter > niwp)) | (gnorm <= TSNE_MIN_GRAD_NORM)
        if i == TSNE_EXPLORATION_ITER - 1:
            stop |= phase == 0
        if not stop.any():
            continue
        # exploration -> final phase: fresh optimiser state (a new _gradient_descent call)
        to_final = stop & (phase == 0)
        if to_final.any():
            phase[to_final] = 1
            pc[to_final] /= TSNE_EARLY_EXAGGERATION  # as sklearn: P *= 12 ... P /= 12
            update[to_final] = 0.0
            gains[to_final] = 1.0
            best_err[to_final] = np.finfo(float).max
            best_iter[to_final] = i + 1
        fin = stop & ~to_final
        if fin.any():
            out[idx[fin]] = y[fin]
            keep = ~fin
            idx, y, pc, phase = idx[keep], y[keep], pc[keep], phase[keep]
            update, gains = update[keep], gains[keep]
            best_err, best_iter = best_err[keep], best_iter[keep]
            if len(idx) == 0:
                break
    out[idx] = y
    return out


def tsne_exact(x: np.ndarray, *, seed: int = 0, workers: int | None = 1) -> np.ndarray:
    """2-D exact t-SNE (perplexity 1.0) of each image's C vectors: x [N, C, D] -> [N, C, 2].

    Batched re-implementation of sklearn ``TSNE(2, perplexity=1.0, method="exact",
    init="random", random_state=seed)`` (see the module docstring)."""
    x = np.asarray(x)
    n_img = x.shape[0]
    size = max(1, min(TSNE_CHUNK, TSNE_CHUNK_ELEMS // max(1, x.shape[1] ** 2)))
    chunks = [x[s : s + size] for s in range(0, n_img, size)]

    parts = _parallel_map(partial(_tsne_batch, seed=seed), chunks, _n_workers(workers))
    if not parts:
        return np.zeros((0, x.shape[1], 2))
    return np.concatenate(parts, axis=0)


def iqr_inliers(coords: np.ndarray, factor: float = IQR_FACTOR) -> np.ndarray:
    """[N, C, 2] -> [N, C] bool: inside [Q1 − f·IQR, Q3 + f·IQR] in both coordinates."""
    coords = np.asarray(coords)
    q1, q3 = np.percentile(coords, [25.0, 75.0], axis=1, keepdims=True)
    iqr = q3 - q1
    ok = (coords >= q1 - factor * iqr) & (coords <= q3 + factor * iqr)
    return ok.all(axis=2)


def embed(maps: Any, *, seed: int = 0, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shared first stage of kselect and cluster.

    maps: [N, C, H, W] (numpy or torch). Returns ``coords`` [N, C, 2] float64 (per-image 2-D
    t-SNE of the max-normalised maps) and ``inlier`` [N, C] bool (1.5×IQR rule). Deterministic
    given ``seed``; independent of ``workers`` (processes used for the t-SNE batches)."""
    x = normalize_maps(maps)
    coords = tsne_exact(x, seed=seed, workers=workers)
    inlier = iqr_inliers(coords) if coords.size else np.zeros(coords.shape[:2], dtype=bool)
    return coords, inlier


# --------------------------------------------------------------------------------------------
# KMeans and silhouette
# --------------------------------------------------------------------------------------------
def k_range(n_channels: int, n_inliers: int) -> range:
    """Candidate K for one image: 2 … maxK−1, maxK = C//2 if C ≥ 64 else C, K ≤ inliers − 1."""
    max_k = n_channels // 2 if n_channels >= 64 else n_channels
    hi = min(max_k - 1, n_inliers - 1)
    return range(2, hi + 1)


def _sqdist(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """x [n, 2], centers [..., k, 2] -> squared distances [..., n, k] (per-axis differences:
    exact, no BLAS)."""
    dx = x[:, 0, None] - centers[..., None, :, 0]
    dy = x[:, 1, None] - centers[..., None, :, 1]
    dx *= dx
    dy *= dy
    dx += dy
    return dx


def _kmeans_pp(x: np.ndarray, k: int, n_init: int, rng: np.random.Generator) -> np.ndarray:
    """sklearn's greedy k-means++ for ``n_init`` restarts at once -> centres [R, k, d]."""
    n = x.shape[0]
    r = np.arange(n_init)
    trials = 2 + int(np.log(k))
    d_all = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # [n, n]
    first = rng.integers(n, size=n_init)
    chosen = np.empty((n_init, k), dtype=np.int64)
    chosen[:, 0] = first
    closest = d_all[first]  # [R, n]
    pot = closest.sum(axis=1)
    for c in range(1, k):
        rand = rng.random((n_init, trials)) * pot[:, None]
        cum = np.cumsum(closest, axis=1)
        cand = (cum[:, None, :] < rand[:, :, None]).sum(axis=2)  # searchsorted, side="left"
        np.minimum(cand, n - 1, out=cand)
        dc = np.minimum(closest[:, None, :], d_all[cand])  # [R, T, n]
        cpot = dc.sum(axis=2)
        best = cpot.argmin(axis=1)
        pot = cpot[r, best]
        closest = dc[r, best]
        chosen[:, c] = cand[r, best]
    return x[chosen]


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    rng: np.random.Generator,
    n_init: int = KMEANS_N_INIT,
    max_iter: int = KMEANS_MAX_ITER,
) -> tuple[np.ndarray, float]:
    """Lloyd KMeans on 2-D points x [n, 2] (n ≥ k ≥ 1) with n_init k-means++ restarts run as one batch.

    Returns (labels [n] int64 of the lowest-inertia restart, its inertia)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if k <= 1 or n <= 1:
        lab = np.zeros(n, dtype=np.int64)
        return lab, float(((x - x.mean(0)) ** 2).sum()) if n else 0.0
    if k > n:
        raise ValueError(f"kmeans: k={k} > n={n}")
    centers = _kmeans_pp(x, k, n_init, rng)  # [R, k, d]
    labels = None
    for _ in range(max_iter):
        d = _sqdist(x, centers)  # [R, n, k]
        new = d.argmin(axis=2)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        onehot = labels[:, :, None] == np.arange(k)  # [R, n, k]
        counts = onehot.sum(axis=1)  # [R, k]
        oh = onehot.astype(np.float64)
        sums = np.stack([(oh * x[None, :, dim, None]).sum(axis=1) for dim in range(2)], -1)
        empty = counts == 0
        centers = np.where(empty[:, :, None], centers, sums / np.maximum(counts, 1)[:, :, None])
        if empty.any():
            # re-seed each empty cluster at the point farthest from its centre (sklearn)
            dmin = d[np.arange(len(labels))[:, None], np.arange(n)[None, :], labels]
            for ri in np.flatnonzero(empty.any(axis=1)):
                far = np.argsort(-dmin[ri], kind="stable")
                for j, p_idx in zip(np.flatnonzero(empty[ri]), far):
                    centers[ri, j] = x[p_idx]
    d = _sqdist(x, centers)
    labels = d.argmin(axis=2)
    inertia = d.min(axis=2).sum(axis=1)
    best = int(inertia.argmin())
    return labels[best].astype(np.int64), float(inertia[best])


def silhouette_scores(x: np.ndarray, label_sets: np.ndarray) -> np.ndarray:
    """Mean silhouette (sklearn's definition) of each labelling in label_sets [S, n] of x [n, d].

    One distance matrix and one batched product give all per-cluster distance sums. A
    labelling with fewer than 2 or more than n−1 distinct labels gets −inf. Labellings are
    taken in blocks so that the [block, n, K] arrays stay under ``SILHOUETTE_BLOCK_ELEMS``
    (at C = 960 the whole K sweep at once would need ~2 GB per array)."""
    x = np.asarray(x, dtype=np.float64)
    lab = np.asarray(label_sets)
    s_count, n = lab.shape
    dist = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0.0))
    kmax = int(lab.max()) + 1
    block = max(1, SILHOUETTE_BLOCK_ELEMS // (n * kmax))
    return np.concatenate(
        [_silhouette_block(dist, lab[i : i + block], kmax) for i in range(0, s_count, block)]
    )


def _silhouette_block(dist: np.ndarray, lab: np.ndarray, kmax: int) -> np.ndarray:
    n = lab.shape[1]
    onehot = (lab[:, :, None] == np.arange(kmax)).astype(np.float64)  # [S, n, K]
    sums = np.matmul(dist, onehot)  # [S, n, K]
    counts = onehot.sum(axis=1)  # [S, K]
    own_cnt = np.take_along_axis(counts, lab, axis=1)  # [S, n]
    own_sum = np.take_along_axis(sums, lab[:, :, None], axis=2)[:, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = own_sum / (own_cnt - 1)
        mean_other = sums / counts[:, None, :]
    mean_other[onehot.astype(bool)] = np.inf
    mean_other[np.broadcast_to((counts == 0)[:, None, :], mean_other.shape)] = np.inf
    b = mean_other.min(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (b - a) / np.maximum(a, b)
    s = np.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)
    s[own_cnt <= 1] = 0.0
    score = s.mean(axis=1)
    n_labels = (counts > 0).sum(axis=1)
    score[(n_labels < 2) | (n_labels > n - 1)] = -np.inf
    return score


def _image_rng(seed: int, image: int, k: int) -> np.random.Generator:
    return np.random.default_rng((int(seed), int(image), int(k)))


def _select_k_images(args) -> np.ndarray:
    """Per-image K for a chunk: args = (image indices, coords, inlier, seed)."""
    images, coords, inlier, seed = args
    n_ch = coords.shape[1]
    out = np.zeros(len(images), dtype=np.int64)
    for t, i in enumerate(images):
        pts = coords[t][inlier[t]]
        ks = k_range(n_ch, pts.shape[0])
        if len(ks) == 0:
            continue
        labs = np.stack([kmeans(pts, k, rng=_image_rng(seed, i, k))[0] for k in ks])
        sc = silhouette_scores(pts, labs)
        if np.isfinite(sc).any():
            out[t] = ks[int(np.argmax(sc))]
    return out


def select_k(
    coords: np.ndarray, inlier: np.ndarray, *, seed: int = 0, workers: int | None = None
) -> tuple[int, np.ndarray]:
    """Step 0: (layer K, per-image K [N]).

    Per image: KMeans + silhouette for every K of ``k_range``; image K = argmax (ties ->
    smaller K; 0 if the image has no valid K). Layer K = mode over voting images (ties ->
    smaller K; 1 if no image votes). Images are split into ``workers`` chunks run in
    processes; the result does not depend on ``workers``."""
    coords = np.asarray(coords, dtype=np.float64)
    inlier = np.asarray(inlier, dtype=bool)
    n_img = coords.shape[0]
    w = min(_n_workers(workers), max(n_img, 1))
    splits = [s for s in np.array_split(np.arange(n_img), w) if len(s)]
    chunks = [(s, coords[s], inlier[s], seed) for s in splits]
    parts = _parallel_map(_select_k_images, chunks, w)
    per_image = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    votes = per_image[per_image >= 2]
    if votes.size == 0:
        return 1, per_image
    return int(np.argmax(np.bincount(votes))), per_image


def cluster(coords: np.ndarray, inlier: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """Step 1: labels [N, C] int64; KMeans(min(k, inliers of the image)) on each image's
    inliers, −1 at outliers. Same random streams as ``select_k``."""
    coords = np.asarray(coords, dtype=np.float64)
    inlier = np.asarray(inlier, dtype=bool)
    n_img, n_ch = inlier.shape
    labels = np.full((n_img, n_ch), -1, dtype=np.int64)
    for i in range(n_img):
        pts = coords[i][inlier[i]]
        if pts.shape[0] == 0:
            continue
        ki = max(1, min(int(k), pts.shape[0]))
        labels[i, inlier[i]] = kmeans(pts, ki, rng=_image_rng(seed, i, ki))[0]
    return labels


# --------------------------------------------------------------------------------------------
# redundancy index and ranking
# --------------------------------------------------------------------------------------------
def redundancy_index(labels: np.ndarray) -> np.ndarray:
    """Step 2: RI [C] int64 from labels [N, C] (−1 = outlier). See the module docstring.

    RI[f] = Σ_{a≠b} ( [L_a(f) ≥ 0, L_b(f) ≥ 0, n_ab(L_a f, L_b f) = max_Y n_ab(L_a f, Y)]
                      · n_ab(L_a f, L_b f)  −  [L_a(f) = −1] ),
    n_ab(X, Y) = |X ∩ Y|. Outliers of image a are charged −1 per ordered pair (a, b); the
    reference's charge of image a's first cluster when a has no outliers is a bug and not
    reproduced."""
    lab = np.asarray(labels).astype(np.int64)
    if lab.ndim != 2:
        raise ValueError("labels must be [N, C]")
    n_img, n_ch = lab.shape
    ri = np.zeros(n_ch, dtype=np.int64)
    if n_img < 2 or n_ch == 0:
        return ri
    kmax = int(lab.max()) + 1
    if kmax <= 0:
        return ri - (n_img - 1) * (lab == -1).sum(axis=0)
    # one-hot [N, C, K] (outliers have no column), flattened to [C, N·K]
    onehot = (lab[:, :, None] == np.arange(kmax)).astype(np.float32)
    all_b = onehot.transpose(1, 0, 2).reshape(n_ch, n_img * kmax)
    imgs = np.arange(n_img)
    lab_b = np.maximum(lab, 0)  # [N, C], index-safe
    for a in range(n_img):
        la = lab[a]
        real = la >= 0
        counts = (onehot[a].T @ all_b).reshape(kmax, n_img, kmax)  # [X, b, Y] = |X ∩ Y|
        m = counts.max(axis=2)  # [X, b]
        # for filter f (cluster X=la[f]) and image b: count of its own cluster in b
        own = counts[np.maximum(la, 0)[:, None], imgs[None, :], lab_b.T]  # [C, N]
        mf = m[np.maximum(la, 0)[:, None], imgs[None, :]]  # [C, N]
        hit = (own == mf) & (lab.T >= 0) & real[:, None]
        hit[:, a] = False
        ri += np.where(hit, own, 0).sum(axis=1).astype(np.int64)
        ri[~real] -= n_img - 1
    return ri


def keep_order(ri: np.ndarray) -> np.ndarray:
    """Channel indices in keep order: ascending RI, ties -> lower index (stable)."""
    return np.argsort(np.asarray(ri), kind="stable")


def channel_scores_from_ri(ri: np.ndarray) -> np.ndarray:
    """Scores for the generic "higher score kept" ranking: −RI as float64."""
    return -np.asarray(ri, dtype=np.float64)


def score(group, *, images: int = 128, seed: int = 0) -> np.ndarray:
    """The three rules' steps in memory (one worker): −(RI summed over the group's taps); the RI
    goes to ``group.extra`` as the ``sort`` rule saves it."""
    import torch

    ri = 0
    for tap in group.taps:
        coords, inlier = embed(torch.cat(list(group.maps(tap, images))), seed=seed, workers=1)
        k, _ = select_k(coords, inlier, seed=seed, workers=1)
        ri = ri + redundancy_index(cluster(coords, inlier, k, seed=seed))
    group.extra["redundancy_index"] = ri
    return channel_scores_from_ri(ri)
