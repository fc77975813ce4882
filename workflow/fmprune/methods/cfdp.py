"""CFDP: Common Frequency Domain Pruning.

Paper: Khaki & Luo, "CFDP: Common Frequency Domain Pruning", CVPR Workshops 2023. Tap: ``act``.

For each feature map F (H x W) with block size r, Gaussian sigma and balance alpha:

1. split F into non-overlapping r x r blocks; rows/columns that do not fill a block stay 0 in M;
2. per block: orthonormal 2-D DCT-II, then ``scipy.ndimage.gaussian_filter(coeffs, sigma,
   mode='reflect', truncate=4.0)`` over the block's coefficients, written into M at the block's
   place; if H < r (or W < r) the whole map is one block;
3. sparsity = count(M > mean(M)) / (H * W)   (the paper's H^2 for square maps), where an entry
   within ``TIE_RTOL * ||F||_F`` of the mean counts as a tie, i.e. not above it;
4. score(F) = ||M||_F * sparsity + alpha * ||F||_F; channel score = mean over images.

Both steps of 2 are linear, so they are one fixed r^2 x r^2 matrix (``block_operator``), built
once by filtering the r^2 unit impulses with scipy's own ``gaussian_filter`` and applied to all
blocks of a batch as a matrix product. This reproduces the reference's kernel exactly, including
its truncation at 4 sigma. With the reference defaults (r = 2, sigma = 10) that truncation makes
the filtered block constant only up to a ripple of ~1e-5 (relative): the block becomes, up to
that ripple, the mean of its four DCT coefficients = half its top-left pixel. So for H >= 4 the
frequency term is essentially a statistic of F[::2, ::2], and for H = 2 (VGG's last convs) the
sparsity count is decided by the ripple alone. That is an artefact of the reference's kernel,
reproduced here on purpose (this follows the reference code).

The paper writes the sparsity denominator as H^2 (square maps); H * W is used, the same for
every map the pipeline produces. The tie tolerance is this module's own rule, not the paper's or
the reference's: after a ReLU, exact ties are common (zero padding rows and all-zero blocks
against a mean that, for r = 2, is exactly 0 whenever every block's top-left pixel is 0), and a
literal comparison would let float rounding, which depends on summation order, decide a large
part of the count. Float64 rounding here stays below 1e-14 * ||F||_F, while the ripple's
components are 4e-6 and 1.7e-11 of the block's coefficients, so apart from such exact ties the
count is the literal one.

Feature maps are streamed batch by batch (the per-image scores are the method's ``statistics``),
in chunks of images that bound the float64 intermediates; all arithmetic is float64. The reference code's
layer-hooking bugs (ResNet-56 hooks every block onto the stem ReLU, DenseNet files shifted by one
layer) are not inherited: the pipeline supplies each layer's own tap.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from . import combine
from .dct import dct_matrix
from .streaming import checked_maps, image_mean, in_chunks
from .params import integer, number

READS = "act"
PARAMS = {"block": integer(1), "sigma": number(minimum=0.0), "alpha": number(minimum=0.0)}  # with their checks

#: Entries of M within ``TIE_RTOL * ||F||_F`` of mean(M) count as equal to it (not above).
TIE_RTOL = 1e-12


@lru_cache(maxsize=None)
def block_operator(bh: int, bw: int, sigma: float) -> np.ndarray:
    """Matrix K (q x q, q = bh*bw, read-only float64) with ``vec(M_block) = K @ vec(block)``.

    vec is row-major; K = G @ kron(D_bh, D_bw), D the orthonormal DCT-II matrices and G the
    scipy reflect-mode Gaussian filter (truncate=4.0) written as a matrix, column j being the
    filtered j-th unit impulse. Cached per (bh, bw, sigma).
    """
    q = bh * bw
    filt = np.empty((q, q), dtype=np.float64)
    for j in range(q):
        impulse = np.zeros(q, dtype=np.float64)
        impulse[j] = 1.0
        filt[:, j] = gaussian_filter(
            impulse.reshape(bh, bw), sigma, mode="reflect", truncate=4.0
        ).ravel()
    op = filt @ np.kron(dct_matrix(bh), dct_matrix(bw))
    op.setflags(write=False)
    return op


def statistics(x: torch.Tensor, *, block: int = 2, sigma: float = 10.0, alpha: float = 0.03) -> torch.Tensor:
    """score(F) of every map of ``x`` [B, C, H, W]; float64 [B, C], on ``x``'s device. Images are
    processed in chunks, so the float64 intermediates (about four copies of a chunk) stay bounded."""
    if int(block) != block or block < 1:
        raise ValueError(f"block must be a positive integer; got {block!r}")
    block = int(block)
    _, c, h, w = x.shape
    bh, bw = (h, w) if h < block or w < block else (block, block)
    nh, nw = h // bh, w // bw
    op_t = torch.from_numpy(np.array(block_operator(bh, bw, sigma))).T.to(x.device)
    n_padding = h * w - nh * bh * nw * bw

    def reduce(chunk: torch.Tensor) -> torch.Tensor:
        chunk = chunk.to(torch.float64)
        b = chunk.shape[0]
        blocks = (
            chunk[:, :, : nh * bh, : nw * bw]
            .reshape(b, c, nh, bh, nw, bw)
            .permute(0, 1, 2, 4, 3, 5)
            .reshape(b, c, nh * nw, bh * bw)
        )
        m = blocks @ op_t
        f_norm = chunk.square().sum(dim=(2, 3)).sqrt()
        above = m.sum(dim=(2, 3)) / (h * w) + TIE_RTOL * f_norm
        count = (m > above[:, :, None, None]).sum(dim=(2, 3)).to(torch.float64)
        count += n_padding * (above < 0).to(torch.float64)
        freq = m.square().sum(dim=(2, 3)).sqrt() * (count / (h * w))
        return freq + alpha * f_norm

    return in_chunks(reduce, x, 4 * c * h * w)


def channel_scores(
    batches: Iterable[torch.Tensor],
    *,
    block: int = 2,
    sigma: float = 10.0,
    alpha: float = 0.03,
) -> np.ndarray:
    """Mean over images of score(F) for each channel; float64 [C]. Defaults are the reference's."""
    return image_mean(statistics(x, block=block, sigma=sigma, alpha=alpha) for x in checked_maps(batches, dtype=None))


def score(group, *, block: int = 2, sigma: float = 10.0, alpha: float = 0.03) -> np.ndarray:
    return combine([image_mean(group.statistics(tap)) for tap in group.taps])
