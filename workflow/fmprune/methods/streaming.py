"""What every streaming scorer shares: the checks of one tap's feature-map batches, the mean of
per-image statistics over images, and reductions chunked so that their intermediates stay bounded
whatever the batch size."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np
import torch

#: Elements of a reduction's float64 intermediates processed at once (32 MiB).
CHUNK_ELEMENTS = 1 << 22


def checked_maps(batches: Iterable[torch.Tensor], dtype: torch.dtype | None = torch.float64) -> Iterator[torch.Tensor]:
    """The non-empty batches as [B, C, H, W] tensors of ``dtype`` (None: as given).

    ValueError for a batch that is not four-dimensional, maps of another (C, H, W) than the first
    batch's, or no image at all.
    """
    shape, n_images = None, 0
    for batch in batches:
        x = torch.as_tensor(batch).detach()
        if dtype is not None:
            x = x.to(dtype=dtype)
        if x.ndim != 4:
            raise ValueError(f"expected [B, C, H, W] feature maps, got shape {tuple(x.shape)}")
        if shape is None:
            shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != shape:
            raise ValueError(f"batch maps of shape {tuple(x.shape[1:])} differ from the first, {shape}")
        if len(x):
            n_images += len(x)
            yield x
    if n_images == 0:
        raise ValueError("no feature maps: the batch iterable was empty")


def image_mean(statistics: Iterable[torch.Tensor]) -> np.ndarray:
    """float64 mean over images of per-image statistics, streamed as batches [B, C, ...]."""
    total, n_images = None, 0
    for s in statistics:
        batch_sum = torch.as_tensor(s).to(device="cpu", dtype=torch.float64).sum(0)
        total = batch_sum if total is None else total + batch_sum
        n_images += len(s)
    if not n_images:
        raise ValueError("no per-image statistics: the batch iterable was empty")
    return (total / n_images).numpy()


def in_chunks(reduce: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, elements_per_image: int,
              budget: int | None = None) -> torch.Tensor:
    """``reduce`` of ``x`` [B, ...] applied to chunks of images whose intermediates
    (``elements_per_image`` each) stay within ``budget`` elements (default ``CHUNK_ELEMENTS``);
    the results concatenated."""
    step = max(1, (CHUNK_ELEMENTS if budget is None else budget) // max(1, elements_per_image))
    if step >= len(x):
        return reduce(x)
    return torch.cat([reduce(chunk) for chunk in x.split(step)])
