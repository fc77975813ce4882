"""Naive CFDP: the formula of METHODS.md taken literally, one image, channel and block at a time.

Reference for tests and benchmarks of ``fmprune.methods.cfdp`` (same interface, float64).
"""
import numpy as np
from scipy.fft import dctn
from scipy.ndimage import gaussian_filter


def map_score(f, *, block=2, sigma=10.0, alpha=0.03):
    """score(F) of one H x W map."""
    f = np.asarray(f, dtype=np.float64)
    h, w = f.shape
    bh, bw = (h, w) if h < block or w < block else (block, block)
    m = np.zeros((h, w))
    for i in range(0, h - bh + 1, bh):
        for j in range(0, w - bw + 1, bw):
            coeffs = dctn(f[i : i + bh, j : j + bw], type=2, norm="ortho")
            m[i : i + bh, j : j + bw] = gaussian_filter(coeffs, sigma, mode="reflect", truncate=4.0)
    # Ties within 1e-12 * ||F|| of the mean are not above it (fmprune.methods.cfdp.TIE_RTOL).
    sparsity = np.count_nonzero(m > m.mean() + 1e-12 * np.linalg.norm(f)) / (h * w)
    return np.linalg.norm(m) * sparsity + alpha * np.linalg.norm(f)


def channel_scores(batches, *, block=2, sigma=10.0, alpha=0.03):
    """Mean over images of map_score for each channel; float64 [C]."""
    totals = None
    n = 0
    for batch in batches:
        x = np.asarray(batch, dtype=np.float64)
        if totals is None:
            totals = np.zeros(x.shape[1])
        for img in x:
            for c, f in enumerate(img):
                totals[c] += map_score(f, block=block, sigma=sigma, alpha=alpha)
            n += 1
    return totals / n
