"""Datasets: the embedded default (scikit-learn's digits), CIFAR-10, ImageFolder trees, and
saliency sets (DUTS-style image–mask folders, the embedded synthetic set).

Small-image datasets (the digits, CIFAR-10, a CIFAR-sized ImageFolder) live in memory as
uint8 tensors; normalisation and the standard crop+flip augmentation run on whole batches.
Large-image ImageFolder trees (ImageNet) stream through torchvision's transforms. Both give
``Split.batches(...)``, so training, evaluation and extraction do not care which is which.
"""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import FmpruneError
from .io import atomic_path, cache_dir, check_sha256, describe, remove_stale, user_path, writer_tag
from .tasks import CLASSIFICATION, Task, of_dataset

@dataclass
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


class TensorSplit:
    """Images held in memory as uint8 [N, 3, H, W] with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, flags: np.ndarray | None = None):
        self.images, self.labels = images, labels
        self.flags = flags  # optional per-image boolean (e.g. "exact pixels"), from a manifest

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, indices, batch_size: int, norm: Normalization, augment: bool = False,
                generator: torch.Generator | None = None, device="cpu", shard: tuple[int, int] | None = None):
        """Batches of ``indices`` in order. With ``shard=(rank, world)`` each batch of ``batch_size``
        is cut into ``world`` contiguous parts and only part ``rank`` is yielded (empty parts are
        skipped); the augmentation draws are made for the whole batch, so the union of the parts
        is exactly the batch a single process sees."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            draws = _crop_flip_draws(len(idx), generator) if augment else None
            part = slice(None) if shard is None else shard_slice(len(idx), *shard)
            idx = idx[part]
            if len(idx) == 0:
                continue
            x = self.images[idx].to(device, non_blocking=True).float().div_(255)
            if augment:
                x = _crop_flip(x, *(d[part] for d in draws))
            yield norm.apply(x), self.labels[idx].to(device, non_blocking=True)


def shard_slice(n: int, rank: int, world: int) -> slice:
    """Part ``rank`` of ``world`` contiguous, near-equal parts of ``range(n)`` (numpy's array_split)."""
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


def _crop_flip_draws(n: int, generator: torch.Generator | None, pad: int = 4):
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets, flips


def _crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding, and a random horizontal flip, per image (draws given)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    # One gather for the whole batch (no per-image loop): rows/cols of each image's window.
    offsets = offsets.to(x.device)
    rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2).contiguous()
    flips = flips.to(x.device)
    out[flips] = out[flips].flip(3)
    return out


class FolderSplit:
    """A large-image ImageFolder split, decoded and transformed on the fly."""

    def __init__(self, root: Path, resolution: int, workers: int):
        self.dataset = _image_folder(root)
        self.labels = torch.tensor(self.dataset.targets)
        self.flags = None
        self.resolution, self.workers = resolution, workers

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, indices, batch_size: int, norm: Normalization, augment: bool = False,
                generator: torch.Generator | None = None, device="cpu", shard: tuple[int, int] | None = None):
        from torchvision import transforms as T

        size = self.resolution
        tf = (
            [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
            if augment
            else [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)]
        )
        self.dataset.transform = T.Compose(tf + [T.ToTensor(), T.Normalize(norm.mean, norm.std)])
        indices = [int(i) for i in indices]
        parts = [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]
        if shard is not None:
            parts = [p[shard_slice(len(p), *shard)] for p in parts]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[p for p in parts if p], num_workers=self.workers,
            pin_memory=str(device) != "cpu", generator=generator,
        )
        try:
            for x, y in loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        except UnreadableImage as exc:  # from a worker, the message ends with the worker's traceback
            raise FmpruneError(str(exc).strip().splitlines()[-1].rpartition("UnreadableImage: ")[2]) from None


class SaliencySplit:
    """Image–mask pairs with U²-Net's preprocessing.

    ``batches`` yields images resized to ``resolution`` and divided by their maximum (training:
    then a random ``crop`` and a horizontal flip) with their masks resized and cropped alike, as
    float targets [N, 1, h, w] in [0, 1] (divided by the mask's maximum). :meth:`mask` gives a
    mask at its original size: evaluation resizes predictions back to it.
    """

    flags = None

    def __init__(self, pairs, resolution: int, crop: int):
        self.pairs = pairs  # _MemoryPairs or _FolderPairs: image(i), mask(i), len()
        self.resolution, self.crop = resolution, crop

    def __len__(self) -> int:
        return len(self.pairs)

    def mask(self, i: int) -> np.ndarray:
        return self.pairs.mask(i)

    def _resized(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        size = (self.resolution, self.resolution)
        image = torch.tensor(self.pairs.image(i), dtype=torch.float32)[None]
        mask = torch.tensor(self.pairs.mask(i), dtype=torch.float32)[None, None]
        if image.shape[2:] != size:
            image = torch.nn.functional.interpolate(image, size=size, mode="bilinear", antialias=True)
            mask = torch.nn.functional.interpolate(mask, size=size, mode="bilinear", antialias=True)
        return image[0] / image.max().clamp_min(1e-6), mask[0] / mask.max().clamp_min(1e-6)

    def batches(self, indices, batch_size: int, norm: Normalization, augment: bool = False,
                generator: torch.Generator | None = None, device="cpu", shard: tuple[int, int] | None = None):
        """As :meth:`TensorSplit.batches`, with masks for labels (crop and flip drawn per batch)."""
        indices = [int(i) for i in indices]
        side = self.crop if augment else self.resolution
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            if augment:
                offsets = torch.randint(0, self.resolution - self.crop + 1, (len(idx), 2), generator=generator)
                flips = torch.rand(len(idx), generator=generator) < 0.5
            part = range(len(idx))[slice(None) if shard is None else shard_slice(len(idx), *shard)]
            if not part:
                continue
            x, y = torch.empty(len(part), 3, side, side), torch.empty(len(part), 1, side, side)
            for row, k in enumerate(part):
                image, mask = self._resized(idx[k])
                if augment:
                    top, left = offsets[k].tolist()
                    image, mask = image[:, top : top + side, left : left + side], mask[:, top : top + side, left : left + side]
                    if flips[k]:
                        image, mask = image.flip(2), mask.flip(2)
                x[row], y[row] = image, mask
            yield norm.apply(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)


class _MemoryPairs:
    """Pairs held in memory: images uint8 [N, 3, H, W], masks uint8 [N, H, W]."""

    def __init__(self, images: np.ndarray, masks: np.ndarray):
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.masks)

    def image(self, i: int) -> np.ndarray:
        return self.images[i]

    def mask(self, i: int) -> np.ndarray:
        return self.masks[i]


class _FolderPairs:
    """Image and mask files, decoded when read (RGB image, greyscale mask)."""

    def __init__(self, images: list[Path], masks: list[Path]):
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.masks)

    def image(self, i: int) -> np.ndarray:
        return np.asarray(_load_rgb(str(self.images[i]))).transpose(2, 0, 1)

    def mask(self, i: int) -> np.ndarray:
        return np.asarray(_load_image(str(self.masks[i]), "L"))


@dataclass
class Data:
    name: str
    train: TensorSplit | FolderSplit | SaliencySplit
    test: TensorSplit | FolderSplit | SaliencySplit
    num_classes: int  # output maps for a saliency set
    norm: Normalization
    task: Task = CLASSIFICATION  # loss, metrics and report columns (see .tasks)


def load(name: str, cfg: dict) -> Data:
    """Load dataset ``name`` as the config describes it (see the schema's ``datasets``)."""
    kind = cfg["kind"]
    if kind == "digits":
        train, test, classes = _digits(cfg)
    elif kind == "cifar10":
        train, test, classes = _cifar10(cfg)
    elif kind == "imagefolder":
        train, test, classes = _imagefolder(cfg)
    elif kind in ("saliency", "synthetic-saliency"):
        train, test, classes = _saliency(cfg)
    else:  # the schema's enum makes this unreachable from a validated config
        raise FmpruneError(f"datasets.{name}.kind: unknown kind {kind!r}")
    if cfg.get("test_flagged_only"):
        if getattr(test, "flags", None) is None:
            raise FmpruneError(f"datasets.{name}.test_flagged_only needs an in-memory dataset with a flag_column")
        keep = torch.from_numpy(np.flatnonzero(test.flags))
        test = TensorSplit(test.images[keep], test.labels[keep], test.flags[keep.numpy()])
    norm = Normalization(tuple(cfg["normalize"]["mean"]), tuple(cfg["normalize"]["std"]))
    return Data(name, train, test, classes, norm, of_dataset(cfg))


def class_count(cfg: dict) -> int | None:
    """The classes (saliency: output maps) :func:`load` will find, without loading anything;
    None for an image folder not unpacked yet."""
    if cfg["kind"] in ("digits", "cifar10"):
        return 10
    if cfg["kind"] in ("saliency", "synthetic-saliency"):
        return 1
    train = user_path(cfg["root"]) / "train"
    return sum(entry.is_dir() for entry in os.scandir(train)) if train.is_dir() else None


def saliency_crop(cfg: dict) -> int:
    """The training crop of a saliency set: ``crop``, else U²-Net's 288 of 320 (0.9 × resolution)."""
    return cfg.get("crop") or round(0.9 * cfg["resolution"])


def _saliency(cfg: dict):
    """A saliency set: the embedded synthetic pairs, or a DUTS-style folder of image–mask pairs."""
    if cfg["kind"] == "synthetic-saliency":
        from .synthetic_saliency import generate_cached

        images, masks = generate_cached(cfg.get("count", 300), cfg.get("size", 64), cfg.get("seed", 0))
        order = np.random.default_rng(cfg["split_seed"]).permutation(len(masks))
        n_test = int(round(len(masks) * cfg["test_fraction"]))
        parts = [_MemoryPairs(images[ix], masks[ix]) for ix in (np.sort(order[n_test:]), np.sort(order[:n_test]))]
    else:
        root = user_path(cfg["root"])
        parts = [_FolderPairs(*saliency_pairs(root / f"DUTS-{s}" / f"DUTS-{s}-Image", root / f"DUTS-{s}" / f"DUTS-{s}-Mask"))
                 for s in ("TR", "TE")]
    crop = saliency_crop(cfg)
    return SaliencySplit(parts[0], cfg["resolution"], crop), SaliencySplit(parts[1], cfg["resolution"], crop), 1


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def saliency_pairs(image_dir: Path, mask_dir: Path) -> tuple[list[Path], list[Path]]:
    """Image and mask files matched by file stem, in stem order. Every image needs a mask and
    every mask an image, both readable and of the same size; else one line naming the file."""
    from PIL import Image

    found = []
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise FmpruneError(f"saliency folder {folder} does not exist")
        files = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                if p.stem in files:
                    raise FmpruneError(f"{p} and {files[p.stem]} share the stem {p.stem!r}: pairs are matched by stem")
                files[p.stem] = p
        found.append(files)
    images, masks = found
    if not images:
        raise FmpruneError(f"saliency folder {image_dir} holds no images")
    for stem, path in images.items():
        if stem not in masks:
            raise FmpruneError(f"image {path} has no mask {mask_dir / stem}.* (pairs are matched by file stem)")
    for stem, path in masks.items():
        if stem not in images:
            raise FmpruneError(f"mask {path} has no image {image_dir / stem}.* (pairs are matched by file stem)")
    stems = sorted(images)
    for stem in stems:
        sizes = []
        for path in (images[stem], masks[stem]):
            try:
                with Image.open(path) as im:
                    sizes.append(im.size)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise FmpruneError(f"image {path} does not decode ({describe(exc)})") from None
        if sizes[0] != sizes[1]:
            raise FmpruneError(f"mask {masks[stem]} is {sizes[1][0]}×{sizes[1][1]} but its image {images[stem]} is "
                               f"{sizes[0][0]}×{sizes[0][1]}")
    return [images[s] for s in stems], [masks[s] for s in stems]


def _digits(cfg: dict):
    """scikit-learn's 1,797 handwritten digits, upsampled from 8×8 to 32×32 RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=cfg["resolution"], mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = np.random.default_rng(cfg["split_seed"]).permutation(len(labels))
    n_test = int(round(len(labels) * cfg["test_fraction"]))
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    return TensorSplit(images[train_idx], labels[train_idx]), TensorSplit(images[test_idx], labels[test_idx]), 10


def _cifar10(cfg: dict):
    """torchvision's CIFAR-10; fetched only when the config says ``download: true``.

    torchvision checks the archive's MD5 (the hash the dataset's authors publish) before use.
    """
    from torchvision.datasets import CIFAR10

    root = user_path(cfg["root"])
    if not (root / "cifar-10-batches-py").is_dir() and not cfg["download"]:
        raise FmpruneError(f"CIFAR-10 not found under {root} (set download: true in its dataset config to fetch it)")
    splits = []
    for train in (True, False):
        ds = CIFAR10(str(root), train=train, download=cfg["download"])
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        splits.append(TensorSplit(images, torch.tensor(ds.targets)))
    return splits[0], splits[1], 10


def _imagefolder(cfg: dict):
    root = user_path(cfg["root"])
    if not root.is_dir() and cfg.get("archive"):
        unpack(cfg["archive"], root, cfg.get("archive_sha256"))
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise FmpruneError(f"dataset folder {root / split} does not exist")
    if not cfg["in_memory"]:
        workers = cfg["workers"]
        train, test = FolderSplit(root / "train", cfg["resolution"], workers), FolderSplit(root / "test", cfg["resolution"], workers)
        _same_classes(root, train.dataset.classes, test.dataset.classes)
        return train, test, len(train.dataset.classes)
    flags = _manifest_flags(root, cfg.get("flag_column"))
    splits, class_lists = [], []
    for split in ("train", "test"):
        images, labels, files, classes = _cached_folder(root / split, cfg["resolution"])
        split_flags = None if flags is None else np.array([flags.get(f"{split}/{f}", False) for f in files])
        splits.append(TensorSplit(images, labels, split_flags))
        class_lists.append(classes)
    _same_classes(root, *class_lists)
    return splits[0], splits[1], len(class_lists[0])


def _same_classes(root: Path, train: list[str], test: list[str]) -> None:
    """ImageFolder numbers classes per folder: differing class lists would shift test labels."""
    if train != test:
        missing = sorted(set(train) ^ set(test))
        raise FmpruneError(f"{root}: train/ and test/ have different class folders (e.g. {missing[0]!r})")


def unpack(archive: str | Path, root: Path, sha256: str | None = None) -> None:
    """Unpack the top folder ``root.name`` of a dataset archive to ``root``, atomically.

    Members pass tarfile's "data" filter and must keep links inside the top folder (members
    outside it are skipped). Everything lands in a staging folder beside ``root`` that is moved
    into place only after the whole archive unpacked; a refused member installs nothing, and a
    killed unpack's staging folder is removed by the next unpack.
    """
    archive = user_path(archive)
    if not archive.is_file():
        raise FmpruneError(f"dataset archive {archive} does not exist")
    if sha256:
        check_sha256(archive, sha256)
    root.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{root.name}.unpacking-"
    remove_stale(root.parent, prefix)
    staging = root.parent / f"{prefix}{writer_tag()}"
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter=_top_folder_filter(archive, root.name))
        top = staging / root.name
        if top.is_symlink() or not top.is_dir():
            raise FmpruneError(f"dataset archive {archive} does not contain a top folder named {root.name}")
        if not root.exists():  # else another process unpacked it meanwhile
            os.replace(top, root)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:  # refused member, truncated or corrupt archive
        raise FmpruneError(f"dataset archive {archive} cannot be unpacked ({describe(exc)})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _top_folder_filter(archive: Path, top: str):
    """tarfile's "data" filter, keeping only the members under ``top`` and links that stay there."""

    def inside(name: str) -> bool:
        return name == top or name.startswith(top + "/")

    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        member = tarfile.data_filter(member, dest)
        name = os.path.normpath(member.name)
        if not inside(name):
            return None
        if name == top and not member.isdir():
            raise FmpruneError(f"dataset archive {archive}: member {member.name!r} is not a folder")
        if member.issym() or member.islnk():
            target = os.path.normpath(os.path.join(os.path.dirname(name), member.linkname) if member.issym()
                                      else member.linkname)
            if not inside(target):
                raise FmpruneError(f"dataset archive {archive}: member {member.name!r} links outside {top}/")
        return member

    return check


def _manifest_flags(root: Path, column: str | None) -> dict[str, bool] | None:
    if not column:
        return None
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise FmpruneError(f"flag_column {column!r} needs {manifest}, which does not exist")
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for needed in ("file", column):
        if rows and needed not in rows[0]:
            raise FmpruneError(f"{manifest} has no column {needed!r}")
    return {r["file"]: (r[column] or "").strip() == "1" for r in rows}


class UnreadableImage(FmpruneError):
    """An image file that does not decode (a non-image, a truncated file)."""


def _load_rgb(path: str):
    """torchvision's default loader (PIL, RGB), with a one-line error naming a file that fails."""
    return _load_image(path, "RGB")


def _load_image(path: str, mode: str):
    """An image decoded by PIL and converted to ``mode``; a file that fails is one line naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"image {path} does not decode ({describe(exc)})") from None


def _image_folder(folder: Path):
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(folder), loader=_load_rgb)
    except OSError as exc:  # torchvision: no class folder, or no image file in them
        raise FmpruneError(f"image folder {folder} holds no class folders with images ({describe(exc)})") from None


def _cached_folder(folder: Path, resolution: int):
    """Decode an ImageFolder split once into a uint8 array cached outside the repo.

    The cache is keyed on the resolution and every file's relative path, size and mtime, so an
    edited, swapped, added or removed image is decoded afresh, never served stale.
    """
    from PIL import Image
    from tqdm import tqdm

    ds = _image_folder(folder)
    files = [os.path.relpath(p, folder) for p, _ in ds.samples]
    key = hashlib.sha256(f"{resolution}".encode())
    for rel, (path, _) in zip(files, ds.samples):
        st = os.stat(path)
        key.update(f"|{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache = cache_dir() / f"folder-{key.hexdigest()[:24]}.npz"
    if cache.is_file():
        stored = np.load(cache)
        return torch.from_numpy(stored["images"]), torch.from_numpy(stored["labels"]), files, ds.classes
    images = np.empty((len(files), 3, resolution, resolution), dtype=np.uint8)
    for i, (path, _) in enumerate(tqdm(ds.samples, desc=f"decoding {folder.name}", mininterval=5)):
        im = _load_rgb(path)
        if im.size != (resolution, resolution):
            im = im.resize((resolution, resolution), Image.BILINEAR)
        images[i] = np.asarray(im).transpose(2, 0, 1)
    labels = np.asarray(ds.targets, dtype=np.int64)
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels)
    return torch.from_numpy(images), torch.from_numpy(labels), files, ds.classes
