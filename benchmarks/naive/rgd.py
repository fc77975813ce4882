"""Straightforward RGD similarity, the way the reference code does it (one map at a time).

Per image and channel: scipy.fft.dctn (type 2, unnormalised) of the map, top-left k×k block,
hash bits as a Python list; then a Python double loop over channel pairs counting differing
bits. Slow by design: the ground truth for tests of ``fmprune.methods.rgd.similarity`` and
the baseline of the benchmark. Maps are transformed in float64 (as the vectorised version).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import scipy.fft


def phash_bits(fmap: np.ndarray, hash_size: int = 8) -> list[int]:
    """Perceptual hash of one H×W map: list of min(hash_size, H)·min(hash_size, W) bits."""
    coef = scipy.fft.dctn(np.asarray(fmap, dtype=np.float64), type=2)
    kh = min(hash_size, coef.shape[0])
    kw = min(hash_size, coef.shape[1])
    block = coef[:kh, :kw]
    mean = block.mean()
    return [1 if v >= mean else 0 for v in block.ravel().tolist()]


def similarity(batches: Iterable, *, hash_size: int = 8) -> np.ndarray:
    """[C, C] mean over images of 1 − Hamming(hash_i, hash_j) / n_bits (Python loops)."""
    total = None
    n_images = 0
    for batch in batches:
        arr = np.asarray(batch.detach().cpu().numpy() if hasattr(batch, "detach") else batch)
        for image in arr:
            hashes = [phash_bits(fmap, hash_size) for fmap in image]
            c = len(hashes)
            n_bits = len(hashes[0])
            if total is None:
                total = [[0.0] * c for _ in range(c)]
            for i in range(c):
                total[i][i] += 1.0
                for j in range(i + 1, c):
                    diff = 0
                    for a, b in zip(hashes[i], hashes[j]):
                        if a != b:
                            diff += 1
                    s = 1.0 - diff / n_bits
                    total[i][j] += s
                    total[j][i] += s
            n_images += 1
    if total is None:
        raise ValueError("similarity() needs at least one image")
    return np.array(total, dtype=np.float64) / n_images
