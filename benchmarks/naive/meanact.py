"""Naive mean activation: map by map. Reference for ``fmprune.methods.meanact`` (float64)."""
import numpy as np


def channel_scores(batches):
    """Mean over images of each channel's mean over positions."""
    totals, n = None, 0
    for batch in batches:
        for img in np.asarray(batch, dtype=np.float64):
            if totals is None:
                totals = np.zeros(img.shape[0])
            for c, fmap in enumerate(img):
                totals[c] += float(np.mean(fmap))
            n += 1
    return totals / n
