"""Inference speed of a model on the device it runs on.

``latency_ms_b1``   median wall time of one forward pass of a single image, in milliseconds,
                    after warm-up passes (CUDA is synchronised around every timed pass).
``throughput_ips``  images per second of forward passes at ``throughput_batch`` images
                    (total images / total time over the timed passes, after one warm-up pass).
``latency_device``  where it was measured (``cpu`` with its thread count, or the CUDA device name).

Kept cheap on purpose (defaults: 20 timed single-image passes, 3 timed batches of 64): these are
relative figures for comparing pruned models measured on the same machine, not a benchmark.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


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
        with torch.inference_mode():
            one = torch.randn(1, 3, size, size, device=device)
            for _ in range(warmup):
                model(one)
            times = []
            for _ in range(iters):
                _sync(device)
                start = time.perf_counter()
                model(one)
                _sync(device)
                times.append(time.perf_counter() - start)
            many = torch.randn(batch, 3, size, size, device=device)
            model(many)
            _sync(device)
            start = time.perf_counter()
            for _ in range(batch_iters):
                model(many)
            _sync(device)
            elapsed = time.perf_counter() - start
    finally:
        model.train(was_training)
    return {
        "latency_ms_b1": 1000.0 * statistics.median(times),
        "throughput_ips": batch * batch_iters / elapsed,
        "throughput_batch": batch,
        "latency_device": device_name(device),
    }
