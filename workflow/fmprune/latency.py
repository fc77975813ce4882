"""Inference speed of a model on the device it runs on, measured robustly on a shared machine.

Every figure is a median over timed passes after warm-up passes, with its spread (the
interquartile range), at a stated thread count (pinned for the measurement) and device; CUDA is
synchronised around every timed pass.

``latency_ms_b1``      median wall time of one forward pass of a single image, in milliseconds
``latency_ms_b1_iqr``  its interquartile range
``throughput_ips``     images per second at ``throughput_batch`` images (the batch over the median
                       time of a batched pass)
``latency_device``     where it was measured (``cpu`` with its thread count, or the CUDA device)

:func:`measure` is kept cheap on purpose (20 single-image passes, 3 batches of 64): relative
figures for pruned models measured on the same machine, not a benchmark. :class:`WidthTimer`
times an architecture at given widths for the time targets of :mod:`fmprune.plan`, once per
width set (a JSON cache).
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import FmpruneError
from .io import atomic_write_json, read_json, sha256_json


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's model name (Linux), so timings of different machines never mix in a cache."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    return next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), "unknown CPU")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


@contextmanager
def pinned_threads(threads: int | None):
    """torch's intra-op thread count set to ``threads`` for the block (None: left as it is)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def summarize(seconds: list[float]) -> dict:
    """Median, interquartile range and minimum of timed passes, in milliseconds."""
    ms = sorted(1000.0 * s for s in seconds)
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else (ms[0],) * 3
    return {"median_ms": statistics.median(ms), "iqr_ms": q3 - q1, "min_ms": ms[0], "repeats": len(ms)}


def time_calls(call: Callable[[], object], repeats: int, warmup: int, sync: Callable[[], None] = lambda: None) -> dict:
    """:func:`summarize` of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        call()
        sync()
        seconds.append(time.perf_counter() - start)
    return {**summarize(seconds), "warmup": warmup}


def time_forward(model: nn.Module | Callable, batch: int, size: int, device: torch.device | str = "cpu",
                 threads: int | None = None, repeats: int = 10, warmup: int = 3,
                 memory_format: torch.memory_format = torch.contiguous_format) -> dict:
    """Forward passes of a ``batch``×3×``size``×``size`` input (timed by :func:`time_calls`) at
    ``threads`` threads (pinned for the measurement, and stated in the result)."""
    device = torch.device(device)
    with pinned_threads(threads), torch.inference_mode():
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
        timing = time_calls(lambda: model(x), repeats, warmup, lambda: _sync(device))
        return {**timing, "batch": batch, "threads": torch.get_num_threads()}


def measure(model: nn.Module, size: int, device: torch.device | str | None = None, iters: int = 20,
            warmup: int = 3, batch: int = 64, batch_iters: int = 3) -> dict:
    """Latency at batch 1 and throughput at ``batch`` of ``model`` on a ``size``×``size`` input.

    The model is put in eval mode for the measurement and restored to its previous mode.
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    try:
        one = time_forward(model, 1, size, device, repeats=iters, warmup=warmup)
        many = time_forward(model, batch, size, device, repeats=batch_iters, warmup=1)
    finally:
        model.train(was_training)
    return {
        "latency_ms_b1": one["median_ms"],
        "latency_ms_b1_iqr": one["iqr_ms"],
        "throughput_ips": 1000.0 * batch / many["median_ms"],
        "throughput_batch": batch,
        "latency_device": device_name(device),
    }


# ---------------------------------------------------------------------------------------------
# Time targets: an architecture timed at given widths, once per width set


def time_widths(timer: WidthTimer, widths: dict[str, int]) -> dict:
    """The default measurement of :class:`WidthTimer`: ``timer.arch`` (seeded random weights)
    with its groups cut to ``widths`` (the first channels: the time depends on widths only)."""
    from .models import build
    from .surgery import prune_

    torch.manual_seed(0)
    net = prune_(build(timer.arch), {g: torch.arange(w) for g, w in widths.items()}).eval().to(timer.device)
    return time_forward(net, timer.batch, timer.size, timer.device, timer.threads, timer.repeats, timer.warmup)


@dataclass
class WidthTimer:
    """``timer(widths)``: the timing (:func:`time_forward`'s dict) of ``arch`` at ``widths``.

    Each width set is measured once: the result is kept in ``cache`` (a folder of JSON files, one
    per key, written atomically, so concurrent jobs never corrupt it), keyed by
    :attr:`setting` (architecture, batch, input side, device model, threads, repeats, torch
    version) and the widths. ``measure(timer, widths)`` is injectable: tests use a synthetic
    timing model instead of the machine's speed.
    """
    arch: str
    size: int
    batch: int = 1
    device: str = "cpu"
    threads: int = 1
    repeats: int = 10
    warmup: int = 3
    cache: Path | None = None
    measure: Callable[[WidthTimer, dict[str, int]], dict] = time_widths
    measured: int = field(default=0, init=False)  # width sets measured (not from the cache)

    @property
    def setting(self) -> dict:
        dev = torch.device(self.device)
        device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu: {cpu_model()}"
        return {"arch": self.arch, "size": self.size, "batch": self.batch, "device": device, "threads": self.threads,
                "repeats": self.repeats, "warmup": self.warmup, "torch": torch.__version__}

    def __call__(self, widths: dict[str, int]) -> dict:
        key = {**self.setting, "widths": dict(sorted(widths.items()))}
        path = None if self.cache is None else Path(self.cache) / f"{sha256_json(key)[:32]}.json"
        if path is not None and path.is_file():
            entry = read_json(path, "latency cache entry")
            if isinstance(entry, dict) and entry.get("key") == key and "median_ms" in entry.get("timing", {}):
                return entry["timing"]
        timing = self.measure(self, widths)
        self.measured += 1
        if path is not None:
            atomic_write_json(path, {"key": key, "timing": timing})
        return timing


def timer_for(plan_cfg: dict, arch: str, size: int, device: torch.device, cache: Path | None) -> WidthTimer:
    """The :class:`WidthTimer` of a time-target plan (its ``batch``, ``device`` and ``threads``)."""
    wanted = torch.device(plan_cfg.get("device", device.type))
    if wanted.type == "cuda" and not torch.cuda.is_available():
        raise FmpruneError("device: the plan times on cuda, and no CUDA device is available here")
    return WidthTimer(arch, size, plan_cfg.get("batch", 1), str(wanted), plan_cfg.get("threads", 1), cache=cache)
