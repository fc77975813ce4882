"""Feature extraction time against a plain inference pass over the same images (ResNet-56, CPU).

What it measures
----------------
ResNet-56 (the shared checkpoint; a seeded random init when it is missing) over the first
``--images`` images of the pipeline's seeded sample of the flagged CIFAR-10 training images
(seeded Gaussian images when the data folder is missing), in batches of ``--batch-size``:

* a plain inference pass, ``model(x)`` for every batch under ``torch.no_grad()``;
* ``fmprune.features.extract`` of all prunable groups' ``act`` taps, then of ``act`` + ``conv``
  taps, each stored as float32 and as float16 (the pipeline's ``features.dtype`` option).

Every pass starts from the same in-memory images and includes turning them into normalised
float batches. Reported: wall seconds (the best of ``--repeats`` runs, as the machine is
shared), images/s, time relative to the plain pass, the HDF5 file's size and bytes per image.
One untimed forward pass warms the model up first. Files are written to a temporary folder
(not fsynced: the time is that of writing into the page cache).

How to run (from the repository root)::

    .venv/bin/python benchmarks/bench_extract.py                 # 640 images -> results/bench/extract.md
    .venv/bin/python benchmarks/bench_extract.py --quick         # smoke run on 32 images
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # ``benchmarks.common`` when run as a script

from benchmarks.common import CONFIG, MODEL, load_images, load_model, machine, markdown_table, resnet56_parser, write_report  # noqa: E402
from fmprune import config as cfglib  # noqa: E402
from fmprune.features import extract, taps_for  # noqa: E402

PASSES = [("act", "float32"), ("act+conv", "float32"), ("act", "float16"), ("act+conv", "float16")]


def best_of(repeats: int, run: Callable[[], None]) -> float:
    """The shortest wall time of ``repeats`` calls of ``run``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def plain_pass(model, batches) -> None:
    for x, _ in batches:
        model(x)


def main() -> None:
    parser = resnet56_parser(__doc__)
    parser.add_argument("--images", type=int, default=640, help="images per pass (default 640)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="runs per pass; the best is reported (default 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "results/bench/extract.md")
    parser.add_argument("--quick", action="store_true", help="smoke run: 32 images, 1 run per pass")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 32, 1

    host = machine()
    cfg = cfglib.load([CONFIG])
    model, model_source = load_model(args.checkpoint.resolve())
    model.eval()
    images = load_images(cfg, args.data_root.expanduser(), args.images)
    spec = model.channel_spec()
    plain_pass(model, [next(iter(images.batches(args.batch_size)))])  # warm-up, untimed

    plain_s = best_of(args.repeats, lambda: plain_pass(model, images.batches(args.batch_size)))
    n = args.images
    rows = [["plain inference, model(x)", "—", f"{plain_s:.2f}", f"{n / plain_s:.0f}", "1.00×", "—", "—"]]
    print(f"plain inference: {plain_s:.2f} s", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        for kinds, dtype in PASSES:
            taps = taps_for(spec, set(kinds.split("+")))
            out = Path(tmp) / f"{kinds}-{dtype}.h5"
            seconds = best_of(args.repeats, lambda: extract(
                model, images.batches(args.batch_size), images.indices, taps, out,
                {"arch": "resnet56", "model": MODEL, "dataset": "cifar10"}, dtype=dtype))
            size = out.stat().st_size
            out.unlink()
            print(f"extract {kinds} {dtype}: {seconds:.2f} s, {size / 2**20:.0f} MiB", flush=True)
            rows.append([f"extract {kinds} ({len(taps)} taps)", dtype, f"{seconds:.2f}", f"{n / seconds:.0f}",
                         f"{seconds / plain_s:.2f}×", f"{size / 2**20:.1f}", f"{size / n:,.0f}"])

    report = "\n".join([
        f"# Extraction benchmark: ResNet-56, {n} images, batches of {args.batch_size}, best of {args.repeats}",
        "",
        f"- machine: {host}",
        f"- model: {model_source}",
        f"- images: {images.source}",
        "",
        markdown_table(["pass", "dtype", "seconds", "images/s", "time vs plain", "HDF5 MiB", "bytes / image"], rows),
        "",
        "Each pass includes building the normalised batches from the in-memory images; extraction "
        "adds the forward hooks, the copies to numpy and the HDF5 writes (page cache, no fsync).",
        "",
    ])
    write_report(report, args.out)


if __name__ == "__main__":
    main()
