"""Naive BN scale: |γ| channel by channel. Reference for ``fmprune.methods.bnscale``."""
import numpy as np


def channel_scores(gammas):
    """Σ over the BNs of a group of |γ_c|, one list of γ values per BN."""
    return np.array([sum(abs(float(g[c])) for g in gammas) for c in range(len(gammas[0]))])
