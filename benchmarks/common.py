"""What the ResNet-56 benchmarks share: the model and image sample they measure on, timing and
peak-memory measurement, the machine line and the Markdown report."""
from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from fmprune import config as cfglib
from fmprune import data as datalib
from fmprune.features import sample_indices
from fmprune.models import build
from fmprune.pipeline import _read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "cifar10-resnet56.yaml"
MODEL = "resnet56"


def resnet56_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser with the ResNet-56 checkpoint and CIFAR-10 folder options."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "../shared/weights/resnet56-4bfd9763.th",
                        help="ResNet-56 weights (default: the shared checkpoint; random init when missing)")
    parser.add_argument("--data-root", type=Path, default=Path("~/.cache/fmprune/cifar10").expanduser(),
                        help="CIFAR-10 ImageFolder with manifest.csv (default: %(default)s; "
                             "random Gaussian images when missing)")
    return parser


def load_model(checkpoint: Path) -> tuple[nn.Module, str]:
    """ResNet-56 from ``checkpoint``, or a seeded random init (with a printed note) without one."""
    if checkpoint.is_file():
        return _read_checkpoint(checkpoint, "resnet56", 10), f"checkpoint {checkpoint.name}"
    print(f"note: checkpoint {checkpoint} not found: using a randomly initialised ResNet-56 (torch seed 0)")
    torch.manual_seed(0)
    return build("resnet56"), "random init (torch seed 0, no checkpoint)"


@dataclass
class Images:
    indices: np.ndarray  # training-set indices (0 … N−1 for random images)
    source: str
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # batch size -> (x, y)


def load_images(cfg: dict, data_root: Path, n: int) -> Images:
    """The first ``n`` of the pipeline's seeded sample of flagged training images, normalised as
    the model expects; seeded Gaussian images (with a printed note) when ``data_root`` is missing."""
    if not data_root.is_dir():
        print(f"note: data folder {data_root} not found: using {n} random Gaussian images (seed 0)")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
        return Images(np.arange(n), f"{n} random Gaussian images (seed 0, no data folder)",
                      lambda bs: ((x[s : s + bs], y[s : s + bs]) for s in range(0, n, bs)))
    m = cfg["models"][MODEL]
    ds_cfg = dict(cfg["datasets"][m["dataset"]], root=str(data_root), normalize=cfglib.normalization(cfg, MODEL))
    data = datalib.load(m["dataset"], ds_cfg)
    pool = np.flatnonzero(data.train.flags)
    f = cfg["features"]
    size = max(f["samples"], n)
    indices = sample_indices(len(data.train), size, f["seed"], pool)[:n]
    source = (f"first {n} of the pipeline's seeded sample of {size} (seed {f['seed']}) from the {len(pool)} "
              f"flagged ({ds_cfg['flag_column']}) training images in {data_root}")
    return Images(indices, source, lambda bs: data.train.batches(indices, bs, data.norm))


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in MiB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


@contextmanager
def measured():
    """Wall time and peak RSS of the block, filled into the yielded dict when the block ends."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    result = {"rss_start_mib": _status_mib("VmRSS")}
    start = time.perf_counter()
    yield result
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mib"] = _status_mib("VmHWM")


def in_fresh_process(fn, *args):
    """Run ``fn(*args)`` in a newly spawned process and return its result."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line on the machine, with its load (other jobs on a shared box distort every timing)."""
    return (f"{platform.node()}: {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f} at the "
            f"start, torch {torch.__version__} with {torch.get_num_threads()} threads, numpy {np.__version__}")


def write_report(report: str, out: Path) -> None:
    """Print the Markdown report and save it to ``out``."""
    print("\n" + report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"written to {out}")
