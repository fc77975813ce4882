"""Naive FP-FMC, written the straightforward way the reference (and METHODS.md) describes it.

Used by tests/methods/test_fpfmc.py to check ``fmprune.methods.fpfmc`` and by the benchmark
that times the two. Everything is per image and per K, with scikit-learn objects:

* embedding: per image, each map flattened and divided by its own max (max <= 0 -> zeros,
  as in the fast module), then ``sklearn.manifold.TSNE(n_components=2, perplexity=1.0,
  method="exact", init="random", random_state=seed)`` (other parameters default). "exact"
  because that is the t-SNE objective itself (no Barnes-Hut approximation) and, at ≤ 64
  points, not slower; "random" init because it depends on the seed only. The fast module
  re-implements exactly this configuration, batched.
* outliers: 1.5×IQR in either coordinate (numpy.percentile, fences inclusive).
* K selection: for every K in 2 … maxK−1 (maxK = C//2 if C ≥ 64 else C; K ≤ inliers − 1),
  ``KMeans(n_clusters=K, n_init=10, random_state=seed)`` and ``silhouette_score``; image K =
  argmax (first on ties), layer K = mode (smaller on ties); images with no valid K abstain.
* clustering: ``KMeans(min(K, inliers))`` per image, outliers −1.
* redundancy index: Python sets for every ordered image pair, −1 per pair for each outlier of
  image a (only true outliers).
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score


def normalize(maps) -> np.ndarray:
    x = np.asarray(maps, dtype=np.float32)
    n, c = x.shape[:2]
    x = x.reshape(n, c, -1)
    out = np.zeros_like(x)
    for i in range(n):
        for j in range(c):
            mx = x[i, j].max()
            if mx > 0:
                out[i, j] = x[i, j] / mx
    return out


def embed_image(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One image: [C, H·W] normalised vectors -> (coords [C, 2], inlier [C])."""
    c = vectors.shape[0]
    if c < 2:
        return np.zeros((c, 2)), np.ones(c, dtype=bool)
    y = TSNE(
        n_components=2, perplexity=1.0, method="exact", init="random", random_state=seed
    ).fit_transform(vectors)
    q1, q3 = np.percentile(y, [25, 75], axis=0)
    iqr = q3 - q1
    inl = np.all((y >= q1 - 1.5 * iqr) & (y <= q3 + 1.5 * iqr), axis=1)
    return y.astype(np.float64), inl


def embed(maps, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = normalize(maps)
    res = [embed_image(x[i], seed) for i in range(x.shape[0])]
    return np.stack([r[0] for r in res]), np.stack([r[1] for r in res])


def k_candidates(c: int, n_inliers: int) -> list[int]:
    max_k = c // 2 if c >= 64 else c
    return [k for k in range(2, max_k) if k <= n_inliers - 1]


def image_k(points: np.ndarray, c: int, seed: int = 0) -> tuple[int, dict]:
    """Per-image K by silhouette (0 if no valid K) and the scores by K."""
    scores = {}
    for k in k_candidates(c, len(points)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            lab = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(points)
        if not 2 <= len(set(lab.tolist())) <= len(points) - 1:
            continue
        scores[k] = silhouette_score(points, lab)
    if not scores:
        return 0, scores
    best = max(scores.values())
    return min(k for k, s in scores.items() if s == best), scores


def select_k(coords, inlier, seed: int = 0) -> tuple[int, np.ndarray]:
    n, c = inlier.shape
    per = np.array([image_k(coords[i][inlier[i]], c, seed)[0] for i in range(n)], dtype=np.int64)
    votes = Counter(int(k) for k in per if k >= 2)
    if not votes:
        return 1, per
    top = max(votes.values())
    return min(k for k, v in votes.items() if v == top), per


def cluster(coords, inlier, k: int, seed: int = 0) -> np.ndarray:
    n, c = inlier.shape
    labels = np.full((n, c), -1, dtype=np.int64)
    for i in range(n):
        pts = coords[i][inlier[i]]
        if len(pts) == 0:
            continue
        ki = max(1, min(k, len(pts)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels[i, inlier[i]] = KMeans(n_clusters=ki, n_init=10, random_state=seed).fit_predict(pts)
    return labels


def redundancy_index(labels) -> np.ndarray:
    labels = np.asarray(labels)
    n, c = labels.shape
    groups = []
    for a in range(n):
        g = {}
        for f in range(c):
            g.setdefault(int(labels[a, f]), set()).add(f)
        groups.append(g)
    ri = [0] * c
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            for xl, x in groups[a].items():
                if xl == -1:
                    for f in x:
                        ri[f] -= 1
                    continue
                inter = {yl: len(x & y) for yl, y in groups[b].items() if yl != -1}
                if not inter:
                    continue
                m = max(inter.values())
                z = set()
                for yl, cnt in inter.items():
                    if cnt == m:
                        z |= groups[b][yl]
                for f in x & z:
                    ri[f] += m
    return np.array(ri, dtype=np.int64)


def run(maps, rate: float, seed: int = 0) -> np.ndarray:
    """Whole method for one tap: kept channel indices."""
    coords, inl = embed(maps, seed)
    k, _ = select_k(coords, inl, seed)
    ri = redundancy_index(cluster(coords, inl, k, seed))
    c = ri.shape[0]
    keep = max(1, int(c * (1 - rate)))
    return np.argsort(ri, kind="stable")[:keep]
