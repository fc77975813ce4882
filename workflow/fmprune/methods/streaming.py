"""The checks every streaming scorer makes of the feature-map batches of one tap."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch


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
