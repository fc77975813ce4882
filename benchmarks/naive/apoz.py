"""Naive APoZ: zeros counted map by map. Reference for ``fmprune.methods.apoz`` (float64)."""
import numpy as np


def channel_scores(batches):
    """1 − (zeros of channel c) / (its values over images and positions)."""
    zeros, values = None, 0
    for batch in batches:
        for img in np.asarray(batch):
            if zeros is None:
                zeros = np.zeros(img.shape[0])
            for c, fmap in enumerate(img):
                zeros[c] += sum(1 for v in fmap.ravel() if v == 0)
            values += img.shape[1] * img.shape[2]
    return 1.0 - zeros / values
