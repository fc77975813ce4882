"""One forward pass over a fixed, seeded image sample writes every needed tap to one HDF5 file.

Layout: ``taps/<module name>`` float32 (or float16) [N, C, H, W], chunked one channel at a
time so a scorer can stream images or channels with bounded memory; ``sample_indices`` and
``sample_labels`` [N]; attributes ``arch``, ``model``, ``model_sha256``, ``dataset``,
``sample_sha256`` (hash of the indices), ``seed`` and ``tap_kinds`` (JSON: module -> kind).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import FmpruneError
from .io import atomic_path
from .models import ArchSpec


def sample_indices(n_pool: int, size: int, seed: int, pool: np.ndarray | None = None) -> np.ndarray:
    """A seeded sample of ``size`` training indices (from ``pool`` if given), sorted."""
    candidates = np.arange(n_pool) if pool is None else np.asarray(pool)
    if size > len(candidates):
        raise FmpruneError(f"features.samples = {size} but only {len(candidates)} training images are eligible")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, size=size, replace=False))


def indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()


def taps_for(spec: ArchSpec, kinds: set[str]) -> dict[str, str]:
    """Tap module -> kind, for every prunable group's taps of the requested kinds."""
    taps: dict[str, str] = {}
    for kind in sorted(kinds):
        for modules in spec.taps(kind).values():
            for m in modules:
                taps.setdefault(m, kind)
    return taps


@torch.no_grad()
def extract(model: nn.Module, batches, indices: np.ndarray, taps: dict[str, str], out: str | Path,
            attrs: dict, dtype: str = "float32") -> None:
    """Run ``batches`` (the sample ``indices`` as (x, y)) through ``model`` once, storing every tap."""
    n_images = len(indices)
    model.eval()
    modules = dict(model.named_modules())
    missing = [t for t in taps if t not in modules]
    if missing:
        raise FmpruneError(f"model has no module named {missing[0]} to tap")
    captured: dict[str, torch.Tensor] = {}
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, o, name=name: captured.__setitem__(name, o))
        for name in taps
    ]
    np_dtype = np.dtype(dtype)
    try:
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
            for key, value in attrs.items():
                h5.attrs[key] = value
            h5.attrs["tap_kinds"] = json.dumps(taps)
            h5.attrs["sample_sha256"] = indices_sha256(indices)
            h5["sample_indices"] = np.asarray(indices, dtype=np.int64)
            group = h5.create_group("taps")
            labels = np.empty(n_images, dtype=np.int64)
            pos = 0
            for x, y in tqdm(batches, desc="extracting", total=None, mininterval=5, leave=False):
                captured.clear()
                model(x)
                b = len(y)
                for name in taps:
                    fmap = captured[name]
                    if name not in group:
                        c, h, w = fmap.shape[1:]
                        group.create_dataset(
                            name, shape=(n_images, c, h, w), dtype=np_dtype,
                            chunks=(min(n_images, 256), 1, h, w),
                        )
                    group[name][pos : pos + b] = fmap.detach().cpu().numpy().astype(np_dtype, copy=False)
                labels[pos : pos + b] = y.cpu().numpy()
                pos += b
            if pos != n_images:
                raise FmpruneError(f"extraction saw {pos} images, expected {n_images}")
            h5["sample_labels"] = labels
    finally:
        for h in handles:
            h.remove()


class FeatureFile:
    """Read side of an extraction: taps streamed as float32 torch batches."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FmpruneError(f"feature file {path} does not exist")
        self.path = path
        self.h5 = h5py.File(path, "r")
        self.attrs = dict(self.h5.attrs)
        self.n_images = len(self.h5["sample_indices"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.h5.close()

    def dtype(self, tap: str) -> np.dtype:
        return self._dataset(tap).dtype

    def _dataset(self, tap: str) -> h5py.Dataset:
        if tap not in self.h5["taps"]:
            raise FmpruneError(f"{self.path} has no tap {tap} (re-run extraction for this method)")
        return self.h5["taps"][tap]

    def batches(self, tap: str, batch_size: int = 64, images: int | None = None,
                channels: tuple[int, int] | None = None):
        """Yield float32 tensors [B, C, H, W] of ``tap`` over the first ``images`` images."""
        ds = self._dataset(tap)
        n = min(images or self.n_images, self.n_images)
        cs = slice(*channels) if channels else slice(None)
        for start in range(0, n, batch_size):
            block = ds[start : min(start + batch_size, n), cs]
            yield torch.from_numpy(np.asarray(block, dtype=np.float32))

    @property
    def labels(self) -> np.ndarray:
        return self.h5["sample_labels"][()]
