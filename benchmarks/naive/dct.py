"""Naive DCT pruning: a full scipy DCT of every map and a walked zig-zag, one map at a time.

Reference for tests and benchmarks of ``fmprune.methods.dct`` (same interface, float64).
"""
import numpy as np
from scipy.fft import dctn


def zigzag_walk(h, w):
    """JPEG zig-zag order of an h x w matrix, walked step by step: a list of (row, col)."""
    order = []
    i = j = 0
    up = True
    while len(order) < h * w:
        order.append((i, j))
        if up:
            if j == w - 1:
                i += 1
                up = False
            elif i == 0:
                j += 1
                up = False
            else:
                i -= 1
                j += 1
        else:
            if i == h - 1:
                j += 1
                up = True
            elif j == 0:
                i += 1
                up = True
            else:
                i += 1
                j -= 1
    return order


def map_energy(f, band="all"):
    """Sum of squared orthonormal DCT-II coefficients of one map over ``band``."""
    coeffs = dctn(np.asarray(f, dtype=np.float64), type=2, norm="ortho")
    h, w = coeffs.shape
    if band == "all":
        return float(np.sum(coeffs**2))
    kind, value = band.split(":")
    if kind == "low":
        k = int(value)
        return float(np.sum(coeffs[:k, :k] ** 2))
    n = max(1, int(float(value) * h * w))
    return float(sum(coeffs[i, j] ** 2 for i, j in zigzag_walk(h, w)[:n]))


def channel_scores(batches, *, band="all"):
    """Mean over images of map_energy for each channel; float64 [C]."""
    totals = None
    n = 0
    for batch in batches:
        x = np.asarray(batch, dtype=np.float64)
        if totals is None:
            totals = np.zeros(x.shape[1])
        for img in x:
            for c, f in enumerate(img):
                totals[c] += map_energy(f, band)
            n += 1
    return totals / n
