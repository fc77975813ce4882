"""One forward pass over a fixed, seeded image sample writes every needed tap to one HDF5 file.

Layout: ``taps/<module name>`` float32 (or float16) [N, C, H, W], chunked one channel at a
time (each chunk Fletcher-32 checksummed) so a scorer can stream images or channels with
bounded memory; ``sample_indices`` and (classification) ``sample_labels`` [N]; attributes ``arch``, ``model``,
``model_sha256``, ``dataset``, ``sample_sha256`` (hash of the indices), ``seed`` and
``tap_kinds`` (JSON: module -> kind). Only when a method reading ``act_grad`` (Taylor) is
configured, one backward pass of the task's loss per batch also writes ``taylor/<module>``
float64 [N, C]: per image and channel, the mean over positions of tap · ∂L/∂tap.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import FmpruneError
from .io import atomic_path, describe
from .methods import GRAD
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
    """Tap module -> kind, for every prunable group's taps of the requested map kinds ("act",
    "conv"; gradient kinds such as "act_grad" are :func:`taylor_taps_for`'s)."""
    taps: dict[str, str] = {}
    for kind in sorted(k for k in kinds if not k.endswith(GRAD)):
        for modules in spec.taps(kind).values():
            for m in modules:
                taps.setdefault(m, kind)
    return taps


def taylor_taps_for(spec: ArchSpec, kinds: set[str]) -> tuple[str, ...]:
    """The tap modules whose Taylor terms are needed: those of kind K for each requested "K_grad"."""
    modules = {m: None for kind in sorted(kinds) if kind.endswith(GRAD)
               for group_taps in spec.taps(kind.removesuffix(GRAD)).values() for m in group_taps}
    return tuple(modules)


def taylor_terms(outputs, y: torch.Tensor, loss, tapped: list[torch.Tensor]) -> list[np.ndarray]:
    """For each tapped tensor z [B, C, H, W] of the forward pass that gave ``outputs``: the mean over
    positions of z · ∂L/∂z, float64 [B, C], L = ``loss(outputs, y, reduction="sum")`` (zero for a
    tap the loss does not depend on)."""
    grads = torch.autograd.grad(loss(outputs, y, reduction="sum"), tapped, allow_unused=True)
    return [np.zeros(z.shape[:2]) if g is None else (z.detach().double() * g.double()).mean(dim=(2, 3)).cpu().numpy()
            for z, g in zip(tapped, grads)]


def extract(model: nn.Module, batches, indices: np.ndarray, taps: dict[str, str], out: str | Path,
            attrs: dict, dtype: str = "float32", taylor_taps: tuple[str, ...] = (), loss=None) -> None:
    """Run ``batches`` (the sample ``indices`` as (x, y)) through ``model`` once, storing every tap,
    and the labels when ``y`` holds one class per image (a saliency set's masks are not stored).

    With ``taylor_taps``, the forward pass keeps its graph and one backward pass of
    ``loss(outputs, y, reduction="sum")`` (the task's loss: summed, so each image's gradient is
    that of its own loss) gives each of those modules' Taylor terms, the mean over positions of
    z · ∂L/∂z per image and channel.
    """
    n_images = len(indices)
    model.eval()
    modules = dict(model.named_modules())
    hooked = {**dict.fromkeys(taps), **dict.fromkeys(taylor_taps)}
    missing = [t for t in hooked if t not in modules]
    if missing:
        raise FmpruneError(f"model has no module named {missing[0]} to tap")
    if taylor_taps and loss is None:
        raise FmpruneError("Taylor terms need the task's loss")
    captured: dict[str, torch.Tensor] = {}
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, o, name=name: captured.__setitem__(name, o))
        for name in hooked
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
            has_labels = True
            pos = 0
            for x, y in tqdm(batches, desc="extracting", total=None, mininterval=5, leave=False):
                captured.clear()
                with torch.set_grad_enabled(bool(taylor_taps)):  # a graph from the input even if weights are frozen
                    outputs = model(x.detach().requires_grad_() if taylor_taps else x)
                b = len(y)
                if taylor_taps:
                    terms = taylor_terms(outputs, y, loss, [captured[name] for name in taylor_taps])
                    for name, values in zip(taylor_taps, terms):
                        if f"taylor/{name}" not in h5:
                            h5.create_dataset(f"taylor/{name}", shape=(n_images, values.shape[1]), dtype=np.float64)
                        h5[f"taylor/{name}"][pos : pos + b] = values
                for name in taps:
                    fmap = captured[name]
                    if name not in group:
                        c, h, w = fmap.shape[1:]
                        group.create_dataset(
                            name, shape=(n_images, c, h, w), dtype=np_dtype,
                            chunks=(min(n_images, 256), 1, h, w), fletcher32=True,  # corrupt bytes fail to read
                        )
                    group[name][pos : pos + b] = fmap.detach().cpu().numpy().astype(np_dtype, copy=False)
                has_labels = has_labels and y.ndim == 1
                if has_labels:
                    labels[pos : pos + b] = y.cpu().numpy()
                pos += b
            if pos != n_images:
                raise FmpruneError(f"extraction saw {pos} images, expected {n_images}")
            if has_labels:
                h5["sample_labels"] = labels
    finally:
        for h in handles:
            h.remove()


class FeatureFile:
    """Read side of an extraction: taps streamed as float32 torch batches.

    Nothing read is trusted: a truncated or corrupt file (h5py's OSError, a failed chunk
    checksum), a missing entry and non-finite values are one-line errors naming the file, and
    :meth:`check_source` refuses a file extracted from another model.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FmpruneError(f"feature file {path} does not exist")
        self.path = path
        try:
            self.h5 = h5py.File(path, "r")
        except OSError as exc:
            raise FmpruneError(f"feature file {path} is truncated or not HDF5 ({describe(exc)})") from None
        try:
            self.attrs = dict(self.h5.attrs)
            self.n_images = len(self.h5["sample_indices"])
            if not (isinstance(self.h5["taps"], h5py.Group) and "sample_sha256" in self.attrs and self.n_images):
                raise KeyError("no taps group, no sample_sha256 attribute or no image")
        except (KeyError, OSError, TypeError) as exc:
            self.h5.close()
            raise FmpruneError(f"feature file {path} is not a complete extraction ({describe(exc)})") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.h5.close()

    def check_source(self, arch: str, model_sha256: str | None, taps: Iterable[str] = (),
                     taylor_taps: Iterable[str] = ()) -> None:
        """Refuse the file unless it was extracted from ``arch`` (and the model file of hash
        ``model_sha256``, when given) and holds every tap in ``taps`` and the Taylor terms of
        every module in ``taylor_taps``."""
        stored_arch = self.attrs.get("arch")
        if stored_arch != arch:
            raise FmpruneError(f"feature file {self.path} was extracted from a {stored_arch} model, not {arch} "
                               f"(re-run extraction)")
        stored_sha = str(self.attrs.get("model_sha256", "none"))
        if model_sha256 is not None and stored_sha != model_sha256:
            raise FmpruneError(f"feature file {self.path} was extracted from another model file (model_sha256 "
                               f"{stored_sha[:12]}…, this model's {model_sha256[:12]}…; re-run extraction)")
        for tap in taps:
            self._dataset(tap)
        for tap in taylor_taps:
            self._taylor_dataset(tap)

    def dtype(self, tap: str) -> np.dtype:
        return self._dataset(tap).dtype

    def _dataset(self, tap: str) -> h5py.Dataset:
        if tap not in self.h5["taps"]:
            raise FmpruneError(f"feature file {self.path} has no tap {tap} (re-run extraction for this method)")
        ds = self.h5["taps"][tap]
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 4 or ds.shape[0] != self.n_images:
            raise FmpruneError(f"feature file {self.path}: tap {tap} is not [{self.n_images}, C, H, W] feature maps")
        return ds

    def _taylor_dataset(self, tap: str) -> h5py.Dataset:
        ds = self.h5.get(f"taylor/{tap}")
        if not isinstance(ds, h5py.Dataset):
            raise FmpruneError(f"feature file {self.path} has no Taylor terms of {tap} (re-run extraction with "
                               f"a method that reads act_grad, e.g. taylor)")
        if ds.ndim != 2 or ds.shape[0] != self.n_images:
            raise FmpruneError(f"feature file {self.path}: taylor/{tap} is not [{self.n_images}, C] terms")
        return ds

    def taylor_terms(self, tap: str, channels: tuple[int, int] | None = None) -> np.ndarray:
        """float64 [N, C] Taylor terms of ``tap`` (mean over positions of tap · ∂L/∂tap per image)."""
        ds = self._taylor_dataset(tap)
        try:
            terms = np.asarray(ds[:, slice(*channels) if channels else slice(None)], dtype=np.float64)
        except OSError as exc:
            raise FmpruneError(f"feature file {self.path}: taylor/{tap} is unreadable ({describe(exc)})") from None
        if not np.isfinite(terms).all():
            raise FmpruneError(f"feature file {self.path}: taylor/{tap} holds non-finite values (NaN or inf)")
        return terms

    def batches(self, tap: str, batch_size: int = 64, images: int | None = None,
                channels: tuple[int, int] | None = None):
        """Yield float32 tensors [B, C, H, W] of ``tap`` over the first ``images`` images."""
        ds = self._dataset(tap)
        n = min(images or self.n_images, self.n_images)
        cs = slice(*channels) if channels else slice(None)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            try:
                block = np.asarray(ds[start:stop, cs], dtype=np.float32)
            except OSError as exc:  # a truncated file, or a chunk whose checksum fails
                raise FmpruneError(f"feature file {self.path}: tap {tap} is unreadable ({describe(exc)})") from None
            if not np.isfinite(block).all():
                raise FmpruneError(f"feature file {self.path}: tap {tap} holds non-finite values (NaN or inf) "
                                   f"in images {start}-{stop - 1}")
            yield torch.from_numpy(block)

    @property
    def labels(self) -> np.ndarray:
        try:
            labels = self.h5["sample_labels"][()]
        except (KeyError, OSError) as exc:
            raise FmpruneError(f"feature file {self.path}: no readable sample labels ({describe(exc)})") from None
        if labels.shape != (self.n_images,):
            raise FmpruneError(f"feature file {self.path}: {labels.size} sample labels for {self.n_images} images")
        return labels
