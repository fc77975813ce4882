"""One forward pass over a fixed, seeded image sample writes every needed tap to one HDF5 file.

Layout: ``taps/<module name>`` float32 (or float16) [N, C, H, W] feature maps;
``sample_indices`` and (classification) ``sample_labels`` [N]; attributes ``arch``, ``model``,
``model_sha256``, ``dataset``, ``sample_sha256`` (hash of the indices), ``seed``, ``tap_kinds``
(JSON: module -> kind) and ``statistics`` (JSON: method -> the parameters of its stored
statistics; ``{}`` in maps mode). Only when a method reading ``act_grad`` (Taylor) is
configured, one backward pass of the task's loss per batch also writes ``taylor/<module>``
float64 [N, C]: per image and channel, the mean over positions of tap · ∂L/∂tap.

With ``features.store: statistics`` (:func:`contents_for`), each method that declares its
per-image reduction (the method contract's ``statistics``) gets
``statistics/<method>/<group>/<tap>`` [N, C, ...] instead (bool statistics, RGD's hash bits,
packed eight a byte, their count in the attribute ``bits``; ``maps_dtype``: the dtype the
reduction saw), and ``taps/`` holds only the maps of methods without one (FP-FMC), of as many of
the first images as they read.

Every dataset is chunked by whole images, as many as divide the extraction batch within
``CHUNK_BYTES`` (readers stream batches of images, all of a group's channels), each chunk
Fletcher-32 checksummed. Writes run in a background thread, overlapping the next forward pass.
"""
from __future__ import annotations

import hashlib
import json
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import FmpruneError
from .io import atomic_path, describe
from .methods import GRAD, has_statistics, images_read, reads, statistics_params, tap_kind
from .methods import get as get_method
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


def taylor_terms(outputs, y: torch.Tensor, loss, tapped: list[torch.Tensor],
                 axes: list[int] | None = None) -> list[np.ndarray]:
    """For each tapped tensor z of the forward pass that gave ``outputs`` (its channels on axis 1,
    or on its entry of ``axes``): the mean over positions of z · ∂L/∂z, float64 [B, C],
    L = ``loss(outputs, y, reduction="sum")`` (zero for a tap the loss does not depend on)."""
    grads = torch.autograd.grad(loss(outputs, y, reduction="sum"), tapped, allow_unused=True)
    out = []
    for z, g, axis in zip(tapped, grads, axes or [1] * len(tapped)):
        if g is None:
            out.append(np.zeros((z.shape[0], z.shape[axis])))
        else:
            positions = tuple(d for d in range(1, z.dim()) if d != axis)
            out.append((z.detach().double() * g.double()).mean(dim=positions).cpu().numpy())
    return out


CHUNK_BYTES = 4 << 20  # target size of one HDF5 chunk


@dataclass(frozen=True)
class Statistic:
    """One method's per-image reduction (its module's ``statistics``) of one group's channels of
    a tap, computed during extraction and stored as ``statistics/<method>/<group>/<tap>``."""

    method: str
    params: dict  # the reduction's resolved parameters
    group: str
    tap: str
    channels: tuple[int, int] | None  # the group's slice of the tap's channels (None: all)
    images: int | None  # stored for the sample's first ``images`` images (None: all)

    def __call__(self, fmap: torch.Tensor) -> torch.Tensor:
        """The statistics of a batch of the tap's maps [B, C, H, W] (laid out as a reader's batch)."""
        x = fmap if self.channels is None else fmap[:, slice(*self.channels)]
        return get_method(self.method).statistics(x.contiguous(), **self.params)

    @property
    def path(self) -> str:
        return statistics_path(self.method, self.group, self.tap)


def statistics_path(method: str, group: str, tap: str) -> str:
    """Where ``method``'s statistics of ``group``'s channels of ``tap`` are stored."""
    return f"statistics/{method}/{group}/{tap}"


@dataclass(frozen=True)
class Contents:
    """What one extraction stores (``extract``'s arguments of the same names)."""

    taps: dict[str, str]  # tap modules whose maps are stored -> kind
    map_images: int | None  # maps are stored for the sample's first images only (None: all)
    statistics: tuple[Statistic, ...]
    taylor_taps: tuple[str, ...]
    axes: dict[str, int] = field(default_factory=dict)  # tap -> its channel axis, where not 1


def contents_for(spec: ArchSpec, method_params: dict[str, dict], store: str = "maps") -> Contents:
    """What an extraction for the methods of ``method_params`` (method -> its parameters) stores:
    with ``store="maps"`` every tap they read, for every image; with ``"statistics"`` each
    method's per-image statistics where it declares its reduction (the method contract's
    ``statistics``), and maps only of the taps the other methods read (FP-FMC's), for as many
    of the sample's first images as they read (:func:`fmprune.methods.images_read`)."""
    if store not in ("maps", "statistics"):
        raise FmpruneError(f"features.store must be maps or statistics, not {store!r}")
    methods = [m for m in method_params if reads(m) is not None]
    taylor = taylor_taps_for(spec, {reads(m) for m in methods})
    if store == "maps":
        return Contents(taps_for(spec, {reads(m) for m in methods}), None, (), taylor, spec.channel_axes())
    by_maps = [m for m in methods if not has_statistics(m) and not reads(m).endswith(GRAD)]
    images = [images_read(m, method_params[m]) for m in by_maps]
    statistics = tuple(
        Statistic(m, statistics_params(m, method_params[m]), group, tap, spec.groups[group].tap_slices.get(tap),
                  images_read(m, method_params[m]))
        for m in methods if has_statistics(m) for group, taps in spec.taps(tap_kind(m)).items() for tap in taps)
    map_images = None if None in images or not images else max(images)
    return Contents(taps_for(spec, {reads(m) for m in by_maps}), map_images, statistics, taylor, spec.channel_axes())


def _chunks(shape: tuple[int, ...], itemsize: int, batch: int) -> tuple[int, ...]:
    """Chunk shape of a dataset [N, ...] written ``batch`` images at a time and read by batches of
    images: whole images, as many as divide ``batch`` within ``CHUNK_BYTES`` (so that a write
    fills whole chunks and never reads one back); an image larger than that is split by channels."""
    per_image = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    fitting = [k for k in range(1, batch + 1) if batch % k == 0 and k * per_image <= CHUNK_BYTES]
    images = min(max(fitting, default=1), shape[0])
    if images > 1 or per_image <= CHUNK_BYTES or len(shape) < 3:
        return (images, *shape[1:])
    per_channel = per_image // shape[1]
    return (1, max(1, CHUNK_BYTES // per_channel), *shape[2:])


def _packed_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool [..., n] -> uint8 [..., ceil(n / 8)], eight bits a byte, the first the highest
    (``numpy.unpackbits``'s order), on ``bits``' device."""
    padded = torch.nn.functional.pad(bits.to(torch.uint8), (0, -bits.shape[-1] % 8))
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=bits.device)
    return (padded.unflatten(-1, (-1, 8)) * weights).sum(-1).to(torch.uint8)


@dataclass
class _Entry:
    """One batch's rows of one dataset, on the host (or being copied there), waiting to be written."""

    path: str
    values: torch.Tensor  # on the CPU
    rows: int  # the dataset's number of images
    attrs: dict = field(default_factory=dict)


def _host_entry(path: str, t: torch.Tensor, rows: int, dtype: torch.dtype | None = None, **attrs) -> _Entry:
    """``t`` cast (or, when bool, bit-packed) on its own device, then copied once to the host:
    from a CUDA device asynchronously, into pinned memory (the writer waits for the copy)."""
    t = t.detach()
    if t.dtype == torch.bool:
        attrs["bits"] = t.shape[-1]
        t = _packed_bits(t)
    elif dtype is not None:
        t = t.to(dtype)
    if t.is_cuda:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return _Entry(path, host.copy_(t, non_blocking=True), rows, attrs)
    return _Entry(path, t.cpu().contiguous(), rows, attrs)


def _batch_entries(captured: dict[str, torch.Tensor], pos: int, n_images: int, taps: dict[str, str],
                   map_dtype: torch.dtype, map_images: int | None, statistics: tuple[Statistic, ...]) -> list[_Entry]:
    """The batch starting at image ``pos``: its maps of ``taps`` (of images below ``map_images``)
    and its ``statistics`` (of images below each one's ``images``), on the host."""

    def stored(limit: int | None) -> int:
        return n_images if limit is None else min(n_images, limit)

    entries = []
    if stored(map_images) > pos:
        rows = stored(map_images)
        entries += [_host_entry(f"taps/{name}", captured[name][: rows - pos], rows, map_dtype) for name in taps]
    for stat in statistics:
        rows = stored(stat.images)
        if rows > pos:
            fmap = captured[stat.tap][: rows - pos].detach()
            entries.append(_host_entry(stat.path, stat(fmap), rows, maps_dtype=str(fmap.dtype).removeprefix("torch.")))
    return entries


def _write(h5: h5py.File, pos: int, entries: list[_Entry], copied=None) -> None:
    """Write one batch's entries at image ``pos``, creating a dataset at its first batch, once the
    event ``copied`` (their copies from a CUDA device, if any) has completed."""
    if copied is not None:
        copied.synchronize()
    for e in entries:
        values = e.values.numpy()
        if e.path not in h5:
            shape = (e.rows, *values.shape[1:])
            ds = h5.create_dataset(e.path, shape=shape, dtype=values.dtype, chunks=_chunks(
                shape, values.dtype.itemsize, len(values)), fletcher32=True)  # corrupt bytes fail to read
            ds.attrs.update(e.attrs)
        h5[e.path][pos : pos + len(values)] = values


@contextmanager
def _in_background():
    """A ``submit(job)`` that runs jobs in order in one thread, at most one waiting, so that a
    batch's HDF5 writes overlap the next forward pass (h5py releases the GIL while it writes)
    with at most three batches of taps held. A job's exception is raised by the next
    ``submit`` or at the end."""
    jobs: queue.Queue = queue.Queue(maxsize=1)
    errors: list[BaseException] = []

    def run() -> None:
        while (job := jobs.get()) is not None:
            if not errors:  # after a failure, drain the queue so that submit never blocks
                try:
                    job()
                except BaseException as exc:  # noqa: BLE001 - handed to the submitting thread
                    errors.append(exc)

    def submit(job) -> None:
        if errors:
            raise errors[0]
        jobs.put(job)

    thread = threading.Thread(target=run, name="fmprune-feature-writer", daemon=True)
    thread.start()
    try:
        yield submit
    finally:
        jobs.put(None)
        thread.join()
    if errors:
        raise errors[0]


def extract(model: nn.Module, batches, indices: np.ndarray, taps: dict[str, str], out: str | Path,
            attrs: dict, dtype: str = "float32", taylor_taps: tuple[str, ...] = (), loss=None,
            statistics: tuple[Statistic, ...] = (), map_images: int | None = None,
            axes: dict[str, int] | None = None) -> None:
    """Run ``batches`` (the sample ``indices`` as (x, y)) through ``model`` once, storing the maps
    of ``taps`` (of the first ``map_images`` images, default all) and the ``statistics`` (see
    :func:`contents_for`), and the labels when ``y`` holds one class per image (a saliency
    set's masks are not stored).

    With ``taylor_taps``, the forward pass keeps its graph and one backward pass of
    ``loss(outputs, y, reduction="sum")`` (the task's loss: summed, so each image's gradient is
    that of its own loss) gives each of those modules' Taylor terms, the mean over positions of
    z · ∂L/∂z per image and channel.

    A tap whose channels lie on another axis than 1 (``axes``: module -> axis; a channels-last
    [N, H, W, C] output) is stored, reduced and Taylor-scored with them moved to axis 1.

    Maps are cast to ``dtype`` and statistics computed on the taps' device; each tap is then
    copied to the host once per batch, and written by a background thread while the next batch
    runs.
    """
    n_images = len(indices)
    model.eval()
    modules = dict(model.named_modules())
    hooked = {**dict.fromkeys(taps), **dict.fromkeys(taylor_taps), **dict.fromkeys(s.tap for s in statistics)}
    missing = [t for t in hooked if t not in modules]
    if missing:
        raise FmpruneError(f"model has no module named {missing[0]} to tap")
    if taylor_taps and loss is None:
        raise FmpruneError("Taylor terms need the task's loss")
    axes = axes or {}
    captured: dict[str, torch.Tensor] = {}  # as the module returned it (a Taylor term differentiates it)
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, o, name=name: captured.__setitem__(name, o))
        for name in hooked
    ]
    map_dtype = getattr(torch, np.dtype(dtype).name)
    try:
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
            for key, value in attrs.items():
                h5.attrs[key] = value
            h5.attrs["tap_kinds"] = json.dumps(taps)
            h5.attrs["statistics"] = json.dumps({s.method: s.params for s in statistics})
            h5.attrs["sample_sha256"] = indices_sha256(indices)
            h5["sample_indices"] = np.asarray(indices, dtype=np.int64)
            h5.create_group("taps")
            labels = np.empty(n_images, dtype=np.int64)
            has_labels = True
            pos = 0
            with _in_background() as submit:
                for x, y in tqdm(batches, desc="extracting", total=None, mininterval=5, leave=False):
                    captured.clear()
                    with torch.set_grad_enabled(bool(taylor_taps)):  # a graph from the input even if weights are frozen
                        outputs = model(x.detach().requires_grad_() if taylor_taps else x)
                    b = len(y)
                    entries = []
                    if taylor_taps:
                        terms = taylor_terms(outputs, y, loss, [captured[name] for name in taylor_taps],
                                             [axes.get(name, 1) for name in taylor_taps])
                        entries += [_Entry(f"taylor/{t}", torch.from_numpy(values), n_images)
                                    for t, values in zip(taylor_taps, terms)]
                    with torch.no_grad():
                        nchw = {name: o.movedim(axes[name], 1) if name in axes else o for name, o in captured.items()}
                        entries += _batch_entries(nchw, pos, n_images, taps, map_dtype, map_images, statistics)
                    copied = torch.cuda.Event() if x.is_cuda else None  # the copies to the host end
                    if copied is not None:
                        copied.record()
                    submit(partial(_write, h5, pos, entries, copied))
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
    """Read side of an extraction: maps streamed as float32 torch batches, per-image statistics
    as stored, Taylor terms.

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
                     taylor_taps: Iterable[str] = (), statistics_of: str | None = None) -> None:
        """Refuse the file unless it was extracted from ``arch`` (and the model file of hash
        ``model_sha256``, when given) and holds every tap in ``taps`` (its maps, or the
        statistics of method ``statistics_of`` when the extraction stored those) and the Taylor
        terms of every module in ``taylor_taps``."""
        stored_arch = self.attrs.get("arch")
        if stored_arch != arch:
            raise FmpruneError(f"feature file {self.path} was extracted from a {stored_arch} model, not {arch} "
                               f"(re-run extraction)")
        stored_sha = str(self.attrs.get("model_sha256", "none"))
        if model_sha256 is not None and stored_sha != model_sha256:
            raise FmpruneError(f"feature file {self.path} was extracted from another model file (model_sha256 "
                               f"{stored_sha[:12]}…, this model's {model_sha256[:12]}…; re-run extraction)")
        if statistics_of is None or self.statistics_params(statistics_of) is None:
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
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 4 or not 0 < ds.shape[0] <= self.n_images:
            raise FmpruneError(f"feature file {self.path}: tap {tap} is not [N, C, H, W] feature maps of at most "
                               f"{self.n_images} images")
        return ds

    def statistics_params(self, method: str) -> dict | None:
        """The parameters ``method``'s per-image statistics were computed with, None when the
        extraction stored none of them (maps mode)."""
        try:
            stored = json.loads(self.attrs.get("statistics", "{}"))
        except (TypeError, ValueError):
            stored = None
        if not isinstance(stored, dict):
            raise FmpruneError(f"feature file {self.path}: its statistics attribute is not a JSON object")
        return stored.get(method)

    def _statistics_dataset(self, method: str, params: dict, group: str, tap: str) -> h5py.Dataset:
        stored = self.statistics_params(method)
        if stored != json.loads(json.dumps(params)):
            raise FmpruneError(f"feature file {self.path}: the statistics of {method} were computed with "
                               f"{json.dumps(stored)}, not {json.dumps(params)} (re-run extraction)")
        ds = self.h5.get(statistics_path(method, group, tap))
        if not isinstance(ds, h5py.Dataset) or ds.ndim < 2 or not 0 < ds.shape[0] <= self.n_images:
            raise FmpruneError(f"feature file {self.path} has no {method} statistics of tap {tap} for group {group} "
                               f"(re-run extraction)")
        return ds

    def statistics_source_dtype(self, method: str, group: str, tap: str) -> np.dtype:
        """The dtype of the maps ``method``'s stored statistics of ``tap`` were computed from."""
        ds = self._statistics_dataset(method, self.statistics_params(method), group, tap)
        return np.dtype(ds.attrs.get("maps_dtype", "float32"))

    def statistics(self, method: str, params: dict, group: str, tap: str, batch_size: int = 64,
                   images: int | None = None):
        """Yield ``method``'s per-image statistics [B, C, ...] of ``group``'s channels of ``tap``
        over the first ``images`` images, as stored by a statistics-mode extraction (bool
        statistics unpacked). Refused when they were computed with other ``params``."""
        ds = self._statistics_dataset(method, params, group, tap)
        n = self._images(ds, f"{method} statistics of {tap}", images)
        bits = ds.attrs.get("bits")
        for start in range(0, n, batch_size):
            block = self._read(ds, f"{method} statistics of {tap}", start, min(start + batch_size, n), slice(None))
            if bits is not None:
                block = np.unpackbits(block, axis=-1, count=int(bits)).astype(bool)
            yield torch.from_numpy(block)

    def _images(self, ds: h5py.Dataset, what: str, images: int | None) -> int:
        """How many images a read of ``images`` (None: all) takes from ``ds``, which must hold them."""
        n = min(images or self.n_images, self.n_images)
        if n > ds.shape[0]:
            raise FmpruneError(f"feature file {self.path} holds the {what} of the first {ds.shape[0]} images only, "
                               f"not {n} (re-run extraction)")
        return n

    def _read(self, ds: h5py.Dataset, what: str, start: int, stop: int, channels: slice) -> np.ndarray:
        """Images ``start:stop`` of ``ds``, checked: unreadable bytes and non-finite values are
        one-line errors."""
        try:
            block = ds[start:stop, channels]
        except OSError as exc:  # a truncated file, or a chunk whose checksum fails
            raise FmpruneError(f"feature file {self.path}: {what} is unreadable ({describe(exc)})") from None
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            raise FmpruneError(f"feature file {self.path}: {what} holds non-finite values (NaN or inf) "
                               f"in images {start}-{stop - 1}")
        return block

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
        n = self._images(ds, f"maps of tap {tap}", images)
        cs = slice(*channels) if channels else slice(None)
        for start in range(0, n, batch_size):
            block = self._read(ds, f"tap {tap}", start, min(start + batch_size, n), cs)
            yield torch.from_numpy(block.astype(np.float32, copy=False))

    @property
    def labels(self) -> np.ndarray:
        try:
            labels = self.h5["sample_labels"][()]
        except (KeyError, OSError) as exc:
            raise FmpruneError(f"feature file {self.path}: no readable sample labels ({describe(exc)})") from None
        if labels.shape != (self.n_images,):
            raise FmpruneError(f"feature file {self.path}: {labels.size} sample labels for {self.n_images} images")
        return labels
