"""DCT pruning: channel score = energy of the 2-D DCT of its feature maps.

Paper: Chen et al., "Discrete cosine transform for filter pruning" (DCTPruning), Applied
Intelligence 2022. Tap: ``act``.

Score of channel c = mean over images of the sum of squared orthonormal 2-D DCT-II coefficients
of the map F, taken over a frequency band:

- ``"all"`` (default): every coefficient. This follows the reference code, not the paper: the
  paper motivates keeping low-frequency information, but the reference sums all coefficients,
  which by Parseval is exactly the energy ``||F||_F^2``; it is computed that way here.
- ``"low:K"``: the top-left K x K corner of the coefficients (K clipped to H and W).
- ``"zigzag:P"``: the first ``int(P * H * W)`` coefficients (at least 1) in JPEG zig-zag order,
  0 < P <= 1 (the count is rounded down in float, like the pipeline's ``keep``).

Feature maps are streamed batch by batch (the per-map energies are the method's ``statistics``),
in chunks of images that bound the float64 intermediates; all arithmetic is float64.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from . import combine
from .streaming import checked_maps, image_mean, in_chunks

READS = "act"

_BAND_FORMS = "'all', 'low:K' (K a positive integer) or 'zigzag:P' (0 < P <= 1)"


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix D (n x n, float64): the DCT of a vector x is ``D @ x``."""
    k = np.arange(n, dtype=np.float64)[:, None]
    i = np.arange(n, dtype=np.float64)[None, :]
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2.0 * i + 1.0) * k / (2.0 * n))
    d[0, :] = np.sqrt(1.0 / n)
    return d


def zigzag_order(h: int, w: int) -> np.ndarray:
    """(row, col) pairs of an h x w matrix in JPEG zig-zag order, shape [h*w, 2].

    Anti-diagonal s = row + col in increasing order; along even s the row decreases, along odd s
    it increases: (0,0), (0,1), (1,0), (2,0), (1,1), (0,2), ...
    """
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    diag = rows + cols
    along = np.where(diag % 2 == 0, -rows, rows)
    order = np.lexsort((along, diag))
    return np.stack([rows[order], cols[order]], axis=1)


def parse_band(band: str) -> tuple[str, float]:
    """Split a band string into (kind, value); ValueError for anything but the accepted forms."""
    kind, _, arg = str(band).strip().partition(":")
    try:
        if kind == "all" and not arg:
            return "all", 0.0
        if kind == "low":
            k = int(arg)
            if k >= 1:
                return "low", float(k)
        if kind == "zigzag":
            p = float(arg)
            if 0.0 < p <= 1.0:
                return "zigzag", p
    except ValueError:
        pass
    raise ValueError(f"band must be {_BAND_FORMS}; got {band!r}")


PARAMS = {"band": parse_band}  # keyword arguments of score, with their checks (see .params)


def band_mask(kind: str, value: float, h: int, w: int) -> np.ndarray:
    """Boolean mask over the h x w coefficients, cropped to its bounding box (top-left corner)."""
    if kind == "all":
        return np.ones((h, w), dtype=bool)
    if kind == "low":
        k = int(value)
        return np.ones((min(k, h), min(k, w)), dtype=bool)
    n = max(1, int(value * h * w))
    rc = zigzag_order(h, w)[:n]
    mask = np.zeros((rc[:, 0].max() + 1, rc[:, 1].max() + 1), dtype=bool)
    mask[rc[:, 0], rc[:, 1]] = True
    return mask


def statistics(x: torch.Tensor, *, band: str = "all") -> torch.Tensor:
    """DCT energy in ``band`` of every map of ``x`` [B, C, H, W]; float64 [B, C], on ``x``'s device."""
    kind, value = parse_band(band)
    _, c, h, w = x.shape
    if kind == "all":
        return in_chunks(lambda chunk: chunk.to(torch.float64).square().sum(dim=(2, 3)), x, c * h * w)
    mask = band_mask(kind, value, h, w)
    dh = torch.from_numpy(dct_matrix(h)[: mask.shape[0]]).to(x.device)
    dw = torch.from_numpy(dct_matrix(w)[: mask.shape[1]]).to(x.device)
    mask_t = torch.from_numpy(mask).to(device=x.device, dtype=torch.float64)

    def energy(chunk: torch.Tensor) -> torch.Tensor:
        coeffs = dh @ chunk.to(torch.float64) @ dw.T
        return (coeffs.square() * mask_t).sum(dim=(2, 3))

    return in_chunks(energy, x, 2 * c * h * w)


def channel_scores(batches: Iterable[torch.Tensor], *, band: str = "all") -> np.ndarray:
    """Mean over images of the DCT energy in ``band`` of each channel's map; float64 [C]."""
    return image_mean(statistics(x, band=band) for x in checked_maps(batches, dtype=None))


def score(group, *, band: str = "all") -> np.ndarray:
    return combine([image_mean(group.statistics(tap)) for tap in group.taps])
