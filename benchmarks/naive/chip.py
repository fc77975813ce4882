"""Naive CHIP: per image and channel, two nuclear norms by numpy's full SVD, as the reference's
``calculate_ci.py`` does (one row zeroed at a time).

Reference for tests and benchmarks of ``fmprune.methods.chip`` (same interface, float64).
"""
import numpy as np


def channel_scores(batches):
    """Mean over images of ‖A‖_* − ‖A with row c zeroed‖_*, A the image's C × (H·W) maps."""
    totals, n = None, 0
    for batch in batches:
        for img in np.asarray(batch, dtype=np.float64):
            a = img.reshape(img.shape[0], -1)
            if totals is None:
                totals = np.zeros(a.shape[0])
            full = np.linalg.norm(a, "nuc")
            for c in range(a.shape[0]):
                reduced = a.copy()
                reduced[c] = 0.0
                totals[c] += full - np.linalg.norm(reduced, "nuc")
            n += 1
    return totals / n
