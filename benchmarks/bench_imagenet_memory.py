"""ResNet-50 at 224×224: extraction to HDF5 and scoring from the file, with bounded memory.

What it measures
----------------
ResNet-50 (fmprune's, torchvision layout, seeded random init: the cost does not depend on the
weights) runs once over ``--images`` seeded Gaussian 224×224 images in batches of
``--batch-size``; ``fmprune.features.extract`` stores every prunable group's ``act`` tap (46
modules) as float32 in a temporary HDF5 file. Then ``score_groups`` of each ``--methods``
(default hrank and cfdp) reads the taps back from the file, ``--score-batch`` images at a time.

Reported for each phase: wall seconds; the resident set (VmRSS) before and after; the peak RSS
of the phase (the kernel's VmHWM mark, reset just before the phase through
``/proc/self/clear_refs``, Linux only) and ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` before
and after. On Linux ru_maxrss of a live process is read from the same mark, so after a reset it
no longer remembers earlier phases: its "after" value is the phase's own peak, its "before"
value the previous phase's (without the reset, where unsupported, it is the process's peak so
far and only grows). Beside them: the HDF5
file's size and bytes per image, the tap payload per image, a plain forward pass over the same
batches (the part of extraction that is not writing), and the two memory bounds the design
promises: extraction holds one batch of taps (``batch-size`` × payload per image, plus a
float32 copy of the tap being written), scoring holds one tap for ``score-batch`` images
(``score-batch`` × the largest tap per image), whatever the number of images.

How to run (from the repository root; a few minutes on 2 cores, ~37 MB of taps per image, so
64 images write a 2.4 GB file into the temporary folder, removed afterwards)::

    .venv/bin/python benchmarks/bench_imagenet_memory.py
    .venv/bin/python benchmarks/bench_imagenet_memory.py --images 16 --methods hrank   # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))  # fmprune, when run without the editable install

from fmprune.features import FeatureFile, extract, taps_for  # noqa: E402
from fmprune.methods import score_groups  # noqa: E402
from fmprune.models import build  # noqa: E402

MB = 1e6


def _status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss() -> int | None:
    return _status("VmRSS")


def maxrss() -> int:
    """ru_maxrss in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Phase:
    """Wall time and memory of one phase."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.rss_before, self.maxrss_before = rss(), maxrss()
        self.hwm_ok = reset_peak()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.rss_after, self.maxrss_after = rss(), maxrss()
        self.peak = _status("VmHWM") if self.hwm_ok else None

    def row(self) -> dict:
        return {"phase": self.name, "seconds": round(self.seconds, 2),
                "rss_before_mb": _mb(self.rss_before), "rss_after_mb": _mb(self.rss_after),
                "phase_peak_rss_mb": _mb(self.peak),
                "ru_maxrss_before_mb": _mb(self.maxrss_before), "ru_maxrss_after_mb": _mb(self.maxrss_after)}


def _mb(x: int | None) -> float | None:
    return None if x is None else round(x / MB, 1)


def image_batches(n: int, batch_size: int, seed: int = 0):
    """Seeded Gaussian images, generated batch by batch (nothing held beyond one batch)."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        yield torch.randn(b, 3, 224, 224, generator=gen), torch.arange(start, start + b) % 1000


def tap_sizes(model, taps) -> dict[str, int]:
    """Floats per image of every tap."""
    modules, sizes = dict(model.named_modules()), {}
    handles = [modules[t].register_forward_hook(lambda _m, _i, o, t=t: sizes.__setitem__(t, o[0].numel())) for t in taps]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for h in handles:
        h.remove()
    return sizes


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if r[k] is None else str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--score-batch", type=int, default=64, help="images per read when scoring (score_groups' batch_size)")
    p.add_argument("--methods", nargs="+", default=["hrank", "cfdp"])
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--dir", type=Path, help="folder for the HDF5 file (default: a temporary one, removed)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    phases: list[Phase] = []
    start_rss, start_maxrss = rss(), maxrss()
    torch.manual_seed(0)
    with Phase("build ResNet-50") as ph:
        model = build("resnet50", num_classes=1000).eval()
    phases.append(ph)
    spec = model.channel_spec()
    taps = taps_for(spec, {"act"})
    sizes = tap_sizes(model, taps)
    payload = 4 * sum(sizes.values())  # float32 bytes per image
    largest = max(sizes, key=sizes.get)

    with Phase(f"plain forward, {args.images} images") as ph, torch.no_grad():
        for x, _ in image_batches(args.images, args.batch_size):
            model(x)
    phases.append(ph)
    forward_s = ph.seconds

    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    path = Path(tmp.name) / "features.h5"
    try:
        with Phase(f"extract {len(taps)} act taps") as ph:
            extract(model, image_batches(args.images, args.batch_size), np.arange(args.images), taps, path,
                    {"arch": "resnet50"})
        phases.append(ph)
        extract_s = ph.seconds
        file_bytes = os.path.getsize(path)
        score_s = {}
        for method in args.methods:
            with Phase(f"score {method}") as ph, FeatureFile(path) as ff:
                scored = score_groups(method, spec, model, ff, batch_size=args.score_batch)
            assert set(scored.scores) == set(spec.prunable_groups())
            phases.append(ph)
            score_s[method] = ph.seconds
    finally:
        tmp.cleanup()

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} torch threads",
        "images": args.images, "batch_size": args.batch_size, "score_batch": args.score_batch,
        "taps": len(taps),
        "tap_payload_bytes_per_image": payload,
        "hdf5_file_bytes": file_bytes,
        "hdf5_bytes_per_image": round(file_bytes / args.images),
        "largest_tap": f"{largest}: {sizes[largest]:,} floats per image",
        "bound_extraction_batch_mb": round(args.batch_size * payload / MB, 1),
        "bound_scoring_read_mb": round(min(args.score_batch, args.images) * 4 * sizes[largest] / MB, 1),
        "extraction_seconds": round(extract_s, 2),
        "forward_seconds": round(forward_s, 2),
        "extraction_minus_forward_seconds": round(extract_s - forward_s, 2),
        "score_seconds": {m: round(s, 2) for m, s in score_s.items()},
        "process_start_rss_mb": _mb(start_rss), "process_start_ru_maxrss_mb": _mb(start_maxrss),
        "phases": [ph.row() for ph in phases],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "phases"}, indent=2))
    print()
    print(markdown(result["phases"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
