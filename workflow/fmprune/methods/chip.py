"""CHIP: channel independence (Sui et al., "CHIP: CHannel Independence-based Pruning for Compact
Neural Networks", NeurIPS 2021). Tap: ``act``.

Per image, A = the layer's maps as a C × (H·W) matrix; the channel independence of channel c is
CI_c = ‖A‖_* − ‖A with row c zeroed‖_* (nuclear norms, sum of singular values); score = mean
over images. Removing a row never raises a singular value (interlacing), so CI_c ≥ 0, and a
channel whose map is all zero has CI_c = 0 exactly.

Follows the paper's definition and its reference code (Eclipsess/CHIP_NeurIPS2021,
``calculate_ci.py``, which zeroes one row at a time and calls ``torch.norm(p="nuc")`` per image
and channel on the activation maps it saved). Differs from that code in two respects:

- Sample: the pipeline's one fixed sample for every layer, not the reference's ``repeat``
  batches of freshly drawn training images.
- Cost: the reference runs C full SVDs of a C × (H·W) matrix per image and layer. The nuclear
  norm depends on A only through A·Aᵀ, and so does that of A with row c zeroed (the same Gram
  matrix with row and column c zeroed). When H·W > C, the QR factorisation Aᵀ = Q·R gives
  A·Aᵀ = Rᵀ·R, so A may be replaced by the C × C factor B = Rᵀ (row c of B zeroed ⇔ row c of
  A zeroed): the C leave-one-out SVDs are of C × C instead of C × (H·W) matrices, all of a chunk
  of images in one stacked ``numpy.linalg.svd`` (torch's batched QR and ``svdvals`` are 5-15×
  slower on CPU at these sizes). This is exact (no squaring of singular values, as an eigendecomposition
  of A·Aᵀ would do); everything runs in float64. The cost left is C SVDs of C × min(C, H·W) per
  image: ResNet-56's 64-channel 8 × 8 taps dominate (~3 s per tap for 128 images on a core).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from . import combine
from .streaming import checked_maps, image_mean

READS = "act"
PARAMS: dict = {}  # keyword arguments of score, with their checks (see .params)

# Images whose C × C × r leave-one-out stack is decomposed at once: at most this many elements.
_CHUNK_ELEMENTS = 1 << 22


def compact_rows(a: np.ndarray) -> np.ndarray:
    """[B, C, r] with the same row Gram matrix as ``a`` [B, C, P]: ``a`` itself when P <= C, else
    Rᵀ of the QR factorisation of aᵀ (r = min(C, P))."""
    if a.shape[2] <= a.shape[1]:
        return a
    return np.swapaxes(np.linalg.qr(np.swapaxes(a, 1, 2), mode="r"), 1, 2)


def independence(a: np.ndarray) -> np.ndarray:
    """CI [B, C] of each image's matrix in ``a`` [B, C, P] (float64)."""
    b = compact_rows(a)
    c = b.shape[1]
    keep = 1.0 - np.eye(c)  # row c of copy c zeroed
    # numpy's stacked QR and SVD: on CPU at these sizes 5-15× faster than torch's batched ones
    full = np.linalg.svd(b, compute_uv=False).sum(-1)  # [B]
    reduced = np.linalg.svd(b[:, None] * keep[None, :, :, None], compute_uv=False).sum(-1)  # [B, C]
    return full[:, None] - reduced


def independence_torch(a: torch.Tensor) -> torch.Tensor:
    """:func:`independence` with torch's batched QR and SVD, for maps on an accelerator (where
    they are fast, and the maps need not be copied to the host)."""
    c = a.shape[1]
    b = a if a.shape[2] <= c else torch.linalg.qr(a.transpose(1, 2), mode="r")[1].transpose(1, 2)
    keep = 1.0 - torch.eye(c, dtype=a.dtype, device=a.device)
    full = torch.linalg.svdvals(b).sum(-1)
    reduced = torch.linalg.svdvals(b[:, None] * keep[None, :, :, None]).sum(-1)
    return full[:, None] - reduced


def statistics(x: torch.Tensor) -> torch.Tensor:
    """CI [B, C] of every image of ``x`` [B, C, H, W], float64, a chunk of images at a time: by
    numpy on the CPU, by torch on ``x``'s device when that is an accelerator."""
    b, c, h, w = x.shape
    step = max(1, _CHUNK_ELEMENTS // (c * c * min(c, h * w)))
    maps = x.detach().to(torch.float64).reshape(b, c, h * w)
    if maps.device.type != "cpu":
        return torch.cat([independence_torch(chunk) for chunk in maps.split(step)])
    maps = maps.numpy()
    return torch.from_numpy(np.concatenate([independence(maps[s : s + step]) for s in range(0, b, step)]))


def channel_scores(batches: Iterable[torch.Tensor]) -> np.ndarray:
    """Mean over images of CI_c; float64 [C]."""
    return image_mean(statistics(x) for x in checked_maps(batches))


def score(group) -> np.ndarray:
    return combine([image_mean(group.statistics(tap)) for tap in group.taps])
