"""Salient-object detection metrics, as the saliency papers report them (U²-Net, DCT's U²Net row).

Each image contributes a predicted map, min–max normalised to [0, 1] and resized to its mask,
and the mask binarised at > 128 of 255. :class:`SaliencyMetrics` accumulates images and reports

- ``maxf``: F-measure (β² = 0.3) of the precision and recall averaged over images at each of 256
  thresholds, maximised over the thresholds (Achanta et al., CVPR 2009);
- ``mae``: mean absolute error (Perazzi et al., CVPR 2012);
- ``sm``: S-measure, α = 0.5 (Fan et al., ICCV 2017);
- ``em`` and ``em_max``: E-measure (Fan et al., IJCAI 2018) of the binarised map, averaged over
  images at each threshold, then its mean and its maximum over the thresholds;
- ``wfm``: weighted F-measure, β² = 1 (Margolin et al., CVPR 2014).

A threshold t keeps the pixels whose value, scaled to 0–255 and truncated, is at least t. Where
the papers leave a detail open (rounding of the S-measure's centroid, the E-measure's
thresholds), the choice is that of pysodmetrics (MIT), which its authors check against the
original MATLAB code; tests/test_saliency_metrics.py holds figures computed with it.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import FmpruneError

EPS = np.spacing(1)  # MATLAB's eps, as the original code divides by (x + eps)
THRESHOLDS = 256


def normalize_prediction(pred: np.ndarray) -> np.ndarray:
    """Min–max normalise a predicted map to [0, 1] (a constant map is left as it is)."""
    pred = np.asarray(pred, dtype=np.float64)
    low, high = pred.min(), pred.max()
    return (pred - low) / (high - low) if high > low else pred


class SaliencyMetrics:
    """Accumulates (prediction, mask) pairs image by image; :meth:`results` gives the averages."""

    def __init__(self, beta2: float = 0.3):
        self.beta2 = beta2
        self._precision: list[np.ndarray] = []
        self._recall: list[np.ndarray] = []
        self._em: list[np.ndarray] = []
        self._scalars: dict[str, list[float]] = {"mae": [], "sm": [], "wfm": []}

    def update(self, pred: np.ndarray, mask: np.ndarray) -> None:
        """``pred`` in [0, 1] (see :func:`normalize_prediction`), ``mask`` boolean, same shape."""
        pred, mask = np.asarray(pred, dtype=np.float64), np.asarray(mask, dtype=bool)
        if pred.shape != mask.shape or pred.ndim != 2:
            raise FmpruneError(f"prediction of shape {pred.shape} does not match its mask of shape {mask.shape}")
        if pred.min() < 0 or pred.max() > 1:
            raise FmpruneError(f"prediction values must lie in [0, 1], found [{pred.min():.3g}, {pred.max():.3g}]")
        above_fg, above_all = _counts_at_thresholds(pred, mask)
        foreground = int(mask.sum())
        self._precision.append(np.divide(above_fg, above_all, out=np.zeros(THRESHOLDS), where=above_all > 0))
        self._recall.append(above_fg / max(foreground, 1))
        self._em.append(_e_measure_curve(above_fg, above_all, foreground, mask.size))
        self._scalars["mae"].append(float(np.abs(pred - mask).mean()))
        self._scalars["sm"].append(s_measure(pred, mask))
        self._scalars["wfm"].append(weighted_f_measure(pred, mask))

    def __len__(self) -> int:
        return len(self._scalars["mae"])

    def extend(self, other: "SaliencyMetrics") -> None:
        """Add the images ``other`` accumulated (e.g. another process's part of a test set)."""
        self._precision += other._precision
        self._recall += other._recall
        self._em += other._em
        for key, values in other._scalars.items():
            self._scalars[key] += values

    def results(self) -> dict[str, float]:
        if not len(self):
            raise FmpruneError("no images were evaluated")
        precision, recall = np.mean(self._precision, axis=0), np.mean(self._recall, axis=0)
        numerator = (1 + self.beta2) * precision * recall
        denominator = self.beta2 * precision + recall
        f = np.divide(numerator, denominator, out=np.zeros(THRESHOLDS), where=denominator > 0)
        em = np.mean(self._em, axis=0)
        return {"maxf": float(f.max()), **{k: float(np.mean(v)) for k, v in self._scalars.items()},
                "em": float(em.mean()), "em_max": float(em.max()), "images": len(self)}


def _counts_at_thresholds(pred: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For t = 0 … 255: foreground pixels and all pixels whose scaled value is at least t."""
    levels = (pred * 255).astype(np.uint8)

    def at_least(values: np.ndarray) -> np.ndarray:
        return np.cumsum(np.bincount(values, minlength=THRESHOLDS)[::-1])[::-1].astype(np.float64)

    return at_least(levels[mask]), at_least(levels.ravel())


def _e_measure_curve(above_fg: np.ndarray, above_all: np.ndarray, foreground: int, size: int) -> np.ndarray:
    """E-measure of the map binarised at each threshold.

    A binary map and a binary mask take two values each, so the enhanced alignment matrix takes
    four: one per (prediction, mask) combination, times the number of pixels in that combination.
    """
    if foreground == 0:  # an empty mask: the score is the fraction predicted as background
        return (size - above_all) / (size - 1 + EPS)
    if foreground == size:
        return above_all / (size - 1 + EPS)
    pred_mean, mask_mean = above_all / size, foreground / size
    true_pos = above_fg
    false_pos = above_all - above_fg
    false_neg = foreground - above_fg
    true_neg = size - above_all - false_neg

    def enhanced(pred_value, mask_value):
        align = 2 * pred_value * mask_value / (pred_value**2 + mask_value**2 + EPS)
        return (align + 1) ** 2 / 4

    total = (true_pos * enhanced(1 - pred_mean, 1 - mask_mean) + false_pos * enhanced(1 - pred_mean, -mask_mean)
             + false_neg * enhanced(-pred_mean, 1 - mask_mean) + true_neg * enhanced(-pred_mean, -mask_mean))
    return total / (size - 1 + EPS)


def s_measure(pred: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> float:
    """Structure measure: object-aware and region-aware similarity, weighted by ``alpha``."""
    foreground = mask.mean()
    if foreground == 0:
        return float(1 - pred.mean())
    if foreground == 1:
        return float(pred.mean())
    score = alpha * _s_object(pred, mask, foreground) + (1 - alpha) * _s_region(pred, mask)
    return float(max(0.0, score))


def _object_similarity(values: np.ndarray) -> float:
    mean = values.mean()
    std = values.std(ddof=1) if values.size > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _s_object(pred: np.ndarray, mask: np.ndarray, foreground: float) -> float:
    return foreground * _object_similarity(pred[mask]) + (1 - foreground) * _object_similarity(1 - pred[~mask])


def _s_region(pred: np.ndarray, mask: np.ndarray) -> float:
    """Four quadrants split at the mask's centroid, each scored by SSIM, weighted by area."""
    h, w = mask.shape
    rows, cols = np.nonzero(mask)
    # 1-based like the MATLAB original, so that [0:cy] includes the centroid's row.
    cy, cx = int(np.round(rows.mean())) + 1, int(np.round(cols.mean())) + 1
    score = 0.0
    for r in (slice(0, cy), slice(cy, h)):
        for c in (slice(0, cx), slice(cx, w)):
            part = pred[r, c]
            if part.size:
                score += part.size / (h * w) * _ssim(part, mask[r, c])
    return score


def _ssim(pred: np.ndarray, mask: np.ndarray) -> float:
    """The S-measure's SSIM of one region (whole-region statistics, no window)."""
    n = pred.size
    gt = mask.astype(np.float64)
    x, y = pred.mean(), gt.mean()
    var_x = ((pred - x) ** 2).sum() / (n - 1 + EPS)
    var_y = ((gt - y) ** 2).sum() / (n - 1 + EPS)
    cov = ((pred - x) * (gt - y)).sum() / (n - 1 + EPS)
    numerator = 4 * x * y * cov
    denominator = (x**2 + y**2) * (var_x + var_y)
    if numerator != 0:
        return numerator / (denominator + EPS)
    return 1.0 if denominator == 0 else 0.0


def _gaussian_kernel(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """MATLAB's ``fspecial('gaussian', size, sigma)``."""
    r = (size - 1) / 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    kernel[kernel < np.finfo(np.float64).eps * kernel.max()] = 0
    return kernel / kernel.sum()


def weighted_f_measure(pred: np.ndarray, mask: np.ndarray, beta2: float = 1.0) -> float:
    """Margolin et al.'s F-measure of weighted precision and recall (0 for an empty mask).

    Errors in the background take the error of their nearest foreground pixel (dependency),
    smoothed by a 7×7 Gaussian (σ 5) and kept where smaller inside the object; background
    errors weigh more the closer they are to the object (importance, halved every 5 pixels).
    """
    if not mask.any():
        return 0.0
    gt = mask.astype(np.float64)
    distance, nearest = ndimage.distance_transform_edt(~mask, return_indices=True)
    error = np.abs(pred - gt)
    dependent = error[nearest[0], nearest[1]]  # inside the object, nearest is the pixel itself
    smoothed = ndimage.convolve(dependent, _gaussian_kernel(), mode="constant", cval=0.0)
    error = np.where(mask & (smoothed < error), smoothed, error)
    importance = np.where(mask, 1.0, 2 - np.exp(np.log(0.5) / 5 * distance))
    weighted = error * importance
    true_pos = gt.sum() - weighted[mask].sum()
    false_pos = weighted[~mask].sum()
    recall = 1 - weighted[mask].mean()
    precision = true_pos / (true_pos + false_pos + EPS)
    return float((1 + beta2) * recall * precision / (recall + beta2 * precision + EPS))
