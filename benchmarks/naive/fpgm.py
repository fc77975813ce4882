"""Naive FPGM: a double loop over the filters of a conv. Reference for ``fmprune.methods.fpgm``."""
import numpy as np


def distance_sums(weight):
    """Σ_j ‖W_i − W_j‖₂ for every filter i of ``weight`` [C_out, ...]; float64 [C_out]."""
    w = np.asarray(weight, dtype=np.float64).reshape(len(weight), -1)
    return np.array([sum(np.linalg.norm(w[i] - w[j]) for j in range(len(w))) for i in range(len(w))])
