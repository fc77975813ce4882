"""Feature extraction against a plain inference pass, per store mode and dtype, and the scorers
reading its file back: ResNet-56 on CIFAR-sized images and ResNet-50 at 224×224, in one run.

What it measures
----------------
* ResNet-56 (the shared checkpoint; a seeded random init when it is missing) over the first
  ``--images`` images of the pipeline's seeded sample of the flagged CIFAR-10 training images
  (unpacked once from ../shared into ``--data-root`` when missing there; seeded Gaussian images
  when neither exists);
* ResNet-50 (fmprune's, torchvision layout, seeded random init: the cost does not depend on the
  weights) over ``--imagenet-images`` seeded Gaussian 224×224 images.

For each model, ``features.store`` (``maps``, ``statistics``) and ``features.dtype``
(``float32``, ``float16``), and for float32 maps also in the chunk layout extraction wrote before
(one channel of up to 256 images a chunk, to compare writes and reads), one fresh process (so that its peak RSS is its own) times a plain
inference pass, ``model(x)`` for every batch under ``torch.no_grad()``, and the extraction of
what ``--methods`` need (``fmprune.features.contents_for``: every ``act`` and ``conv`` tap the
eight seeds' methods read), each the best of ``--repeats`` runs in batches of
``--batch-size`` on ``--device``, after one untimed warm-up batch. Every pass starts from the
same in-memory images and includes normalising and moving them. Reported: seconds, the ratio to
the plain pass, the file's size and bytes per image (split into stored maps and statistics),
the size extrapolated to 640 images (statistics and maps grow with the images stored:
statistics with every image, FP-FMC's maps only up to its ``images`` = 128), and the
extraction's peak RSS (VmHWM, reset through ``/proc/self/clear_refs`` just before it; Linux).
Files are written to a temporary folder (not fsynced: the time is that of writing into the page
cache).

Then each scorer of ``--methods`` but FP-FMC (whose t-SNE scoring runs as rules of its own and
is ``bench_methods.py``'s) runs in a fresh process on that file, ``score_groups`` with
``--batch-size`` images a batch: seconds and peak RSS; "read" is streaming every stored
dataset once, the readers' I/O alone. HRank refuses float16 maps (its row says so).

How to run (from the repository root; the default is the issue-13 benchmark, which writes up
to ~5 GB of ResNet-50 maps into the temporary folder, removed afterwards)::

    .venv/bin/python benchmarks/bench_extract.py                 # -> results/bench/extract.md
    .venv/bin/python benchmarks/bench_extract.py --images 16 --imagenet-images 4 --repeats 1   # smoke run
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # ``benchmarks.common`` when run as a script

from benchmarks.common import (CONFIG, in_fresh_process, load_images, load_model, machine, markdown_table,  # noqa: E402
                               measured, resnet56_parser, write_report)
from fmprune import FmpruneError  # noqa: E402
from fmprune import config as cfglib  # noqa: E402
from fmprune import features as featlib  # noqa: E402
from fmprune.data import unpack  # noqa: E402
from fmprune.features import FeatureFile, contents_for, extract  # noqa: E402
from fmprune.methods import images_read, reads, score_groups  # noqa: E402
from fmprune.models import build  # noqa: E402
from fmprune.tasks import CLASSIFICATION  # noqa: E402

SEEDS_FEATURE_METHODS = ["hrank", "cfdp", "dct", "cdp", "rgd", "fpfmc"]
# (store, dtype, layout): "before" is the chunking extraction had before issue 13, one channel and
# up to 256 images a chunk, kept for comparison (its reads and writes), float32 maps only
MODES = [("maps", "float32", "before"),
         *((store, dtype, "") for store in ("maps", "statistics") for dtype in ("float32", "float16"))]
EXTRAPOLATE_TO = 640
MIB = 2**20


class Workload:
    """One model (and, with ``images``, its images), rebuilt identically in every measuring process."""

    def __init__(self, job: dict, images: bool = True):
        self.job = job
        torch.manual_seed(0)
        if job["model"] == "resnet56":
            self.model, self.model_source = load_model(Path(job["checkpoint"]))
        else:
            self.model, self.model_source = build("resnet50"), "random init (torch seed 0)"
        self.device = torch.device(job["device"])
        self.model.eval().to(self.device)
        self.spec = self.model.channel_spec()
        if images:
            self.indices, self.images_source, self._batches = self._images(job["model"], job["images"])

    def _images(self, model: str, n: int):
        if model == "resnet56":
            images = load_images(cfglib.load([CONFIG]), Path(self.job["data_root"]), n)
            return images.indices, images.source, images.batches
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, 3, 224, 224, generator=gen)
        y = torch.randint(0, 1000, (n,), generator=gen)
        return (np.arange(n), f"{n} random Gaussian 224×224 images (seed 0)",
                lambda bs: ((x[s : s + bs], y[s : s + bs]) for s in range(0, n, bs)))

    def batches(self):
        return ((x.to(self.device), y.to(self.device)) for x, y in self._batches(self.job["batch_size"]))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _best(repeats: int, run) -> dict:
    """Shortest wall time and highest peak RSS of ``repeats`` measured calls of ``run``."""
    runs = []
    for _ in range(repeats):
        with measured() as m:
            run()
        runs.append(m)
    return {"seconds": min(m["seconds"] for m in runs), "peak_rss_mib": max(m["peak_rss_mib"] for m in runs)}


def _datasets(group: h5py.Group) -> list[h5py.Dataset]:
    found = []
    group.visititems(lambda _name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def _stored_bytes(path: Path) -> dict:
    """Bytes on disk of the stored maps and statistics."""
    with h5py.File(path, "r") as h5:
        return {part: sum(ds.id.get_storage_size() for ds in _datasets(h5[part])) if part in h5 else 0
                for part in ("taps", "statistics")}


def _chunks_before(shape: tuple[int, ...], itemsize: int, batch: int) -> tuple[int, ...]:
    """The chunks extraction wrote before issue 13: one channel of up to 256 images."""
    return (min(shape[0], 256), 1, *shape[2:]) if len(shape) == 4 else (min(shape[0], 256), *shape[1:])


def run_extraction(job: dict) -> dict:
    """Plain pass and extraction of one (model, store, dtype, layout), in this (fresh) process."""
    if job["layout"] == "before":
        featlib._chunks = _chunks_before  # this process writes the former layout
    w = Workload(job)
    contents = contents_for(w.spec, {m: {} for m in job["methods"]}, job["store"])

    @torch.no_grad()
    def plain():
        for x, _ in w.batches():
            w.model(x)
        w.sync()

    def extraction():
        extract(w.model, w.batches(), w.indices, contents.taps, job["out"], {"arch": job["model"]}, dtype=job["dtype"],
                taylor_taps=contents.taylor_taps, loss=CLASSIFICATION.loss, statistics=contents.statistics,
                map_images=contents.map_images)

    with torch.no_grad():
        w.model(next(w.batches())[0])  # warm-up, untimed
    w.sync()
    plain_m = _best(job["repeats"], plain)
    extract_m = _best(job["repeats"], extraction)
    size = Path(job["out"]).stat().st_size
    return {"plain_s": plain_m["seconds"], "extract_s": extract_m["seconds"], "peak_rss_mib": extract_m["peak_rss_mib"],
            "size": size, **_stored_bytes(Path(job["out"])), "map_images": contents.map_images,
            "n_maps": len(contents.taps), "n_statistics": len(contents.statistics),
            "model_source": w.model_source, "images_source": w.images_source}


def run_scorer(job: dict) -> dict:
    """One scorer (or "read": every stored dataset streamed once) on the file, in this process."""
    w = Workload(job, images=False)  # the images are the file's
    with FeatureFile(job["out"]) as ff, measured() as m:
        if job["method"] == "read":  # every stored map, as the readers stream them, and every statistic
            for tap in json.loads(ff.attrs["tap_kinds"]):  # maps of the images stored (FP-FMC's first ones)
                for _ in ff.batches(tap, job["batch_size"], images=ff.h5["taps"][tap].shape[0]):
                    pass
            for ds in _datasets(ff.h5["statistics"]) if "statistics" in ff.h5 else []:
                for start in range(0, ds.shape[0], job["batch_size"]):
                    ds[start : start + job["batch_size"]]
        else:
            try:
                score_groups(job["method"], w.spec, w.model, ff, batch_size=job["batch_size"])
            except FmpruneError as exc:
                return {"refused": str(exc)}
    return m


def extrapolated_mib(result: dict, n: int) -> float:
    """File size at ``EXTRAPOLATE_TO`` images: statistics per image × 640, maps per image × the
    images they are kept for (all, or FP-FMC's first ``images``), the rest (indices, labels) as is."""
    map_images = min(n, result["map_images"] or n)
    map_images_at = min(EXTRAPOLATE_TO, result["map_images"] or EXTRAPOLATE_TO)
    rest = result["size"] - result["taps"] - result["statistics"]
    return (result["statistics"] / n * EXTRAPOLATE_TO + result["taps"] / map_images * map_images_at + rest) / MIB


def main() -> None:
    parser = resnet56_parser(__doc__)
    parser.add_argument("--images", type=int, default=640, help="ResNet-56 images (default 640)")
    parser.add_argument("--imagenet-images", type=int, default=64, help="ResNet-50 224×224 images (default 64)")
    parser.add_argument("--models", type=lambda s: s.split(","), default=["resnet56", "resnet50"])
    parser.add_argument("--methods", type=lambda s: s.split(","), default=SEEDS_FEATURE_METHODS,
                        help=f"methods whose taps are extracted (default {','.join(SEEDS_FEATURE_METHODS)})")
    parser.add_argument("--batch-size", type=int, default=64, help="extraction and scoring batch (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each pass; the best is reported")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "results/bench/extract.md")
    args = parser.parse_args()
    unknown = [m for m in args.methods if reads(m) is None]
    if unknown:
        parser.error(f"--methods: {unknown[0]} reads no feature maps")

    data_root = args.data_root.expanduser()
    archive = ROOT.parent / "shared" / "data" / "cifar10-imagefolder.tar.gz"
    if "resnet56" in args.models and not data_root.is_dir() and archive.is_file():
        print(f"unpacking {archive} to {data_root} (once)", flush=True)
        unpack(archive, data_root)
    host = machine()
    sections = []
    for model in args.models:
        n = args.images if model == "resnet56" else args.imagenet_images
        base = {"model": model, "images": n, "methods": args.methods, "batch_size": args.batch_size,
                "repeats": args.repeats, "device": args.device, "checkpoint": str(args.checkpoint.resolve()),
                "data_root": str(data_root)}
        extract_rows, score_rows, sources = [], [], None
        scorers = ["read", *[m for m in args.methods if m != "fpfmc"]]
        with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
            for store, dtype, layout in MODES:
                job = {**base, "store": store, "dtype": dtype, "layout": layout,
                       "out": str(Path(tmp) / f"{store}-{dtype}{layout}.h5")}
                r = in_fresh_process(run_extraction, job)
                sources = sources or (r["model_source"], r["images_source"])
                label = f"{store} ({layout} chunks)" if layout else store
                print(f"{model} {label} {dtype}: plain {r['plain_s']:.2f} s, extract {r['extract_s']:.2f} s, "
                      f"{r['size'] / MIB:.1f} MiB", flush=True)
                extract_rows.append([
                    label, dtype, f"{r['n_maps']} + {r['n_statistics']}", f"{r['plain_s']:.2f}",
                    f"{r['extract_s']:.2f}", f"{r['extract_s'] / r['plain_s']:.2f}×", f"{r['size'] / MIB:.1f}",
                    f"{r['taps'] / MIB:.1f} / {r['statistics'] / MIB:.2f}", f"{r['size'] / n:,.0f}",
                    f"{extrapolated_mib(r, n):,.0f}", f"{r['peak_rss_mib']:.0f}"])
                for method in scorers:
                    s = in_fresh_process(run_scorer, {**job, "method": method})
                    cell = (["refused (float16 maps)", "—"] if "refused" in s
                            else [f"{s['seconds']:.2f}", f"{s['peak_rss_mib']:.0f}"])
                    score_rows.append([label, dtype, method, *cell])
                    print(f"  {method}: {cell[0]}", flush=True)
                Path(job["out"]).unlink()
        fpfmc_images = images_read("fpfmc") if "fpfmc" in args.methods else None
        sections += [
            f"## {model}: {n} images, batches of {args.batch_size}, best of {args.repeats}, on {args.device}",
            "",
            f"- model: {sources[0]}",
            f"- images: {sources[1]}",
            f"- methods: {', '.join(args.methods)}"
            + (f" (FP-FMC's maps of its first {fpfmc_images} images are what statistics mode still stores)"
               if fpfmc_images else ""),
            "",
            markdown_table(["store", "dtype", "maps + statistics datasets", "plain s", "extract s", "vs plain",
                            "file MiB", "maps / statistics MiB", "bytes / image", f"MiB at {EXTRAPOLATE_TO} images",
                            "extract peak RSS MiB"], extract_rows),
            "",
            markdown_table(["store", "dtype", "scorer", "seconds", "peak RSS MiB"], score_rows),
            "",
        ]

    report = "\n".join([
        "# Extraction benchmark: time against plain inference, file size, scorers' time and memory",
        "",
        f"- machine: {host}",
        f"- command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"- started: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        "",
        *sections,
        "Each pass includes building the normalised batches from the in-memory images; extraction adds "
        "the forward hooks, the statistics (statistics mode), one copy of each tap to the host, and the "
        "HDF5 writes (a background thread, into the page cache, no fsync). Every row is its own process.",
        "",
    ])
    write_report(report, args.out)


if __name__ == "__main__":
    main()
