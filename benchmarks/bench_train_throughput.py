"""Fine-tuning throughput (images/s) of fmprune's training loop against a bare PyTorch loop.

Both train the same model (ResNet-56 by default) on the same in-memory images with the same
batch size, SGD with momentum and cross-entropy, for the same number of epochs:

* ``bare``: the minimal loop: index the uint8 tensor, convert and normalise the batch, forward,
  loss, backward, step. On CUDA it uses what fit() uses (bfloat16 autocast, channels_last), so
  the comparison isolates the loop's own overhead.
* ``fit``: ``fmprune.train.fit`` without augmentation: adds the (seed, epoch)-seeded order, the
  per-batch preemption check, on-device loss/accuracy sums, and per epoch a learning-rate step,
  an evaluation (on a small test split here) and an atomic checkpoint + log.
* ``fit+augment``: the same with the random crop + flip of the recipes.

    .venv/bin/python -m benchmarks.bench_train_throughput --threads 1 --images 256   # ~1 min, 2 shared cores
    .venv/bin/python -m benchmarks.bench_train_throughput --images 2048 --device cuda

Prints one JSON line per configuration (best of --repeats) and a summary table.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from fmprune.data import Data, Normalization, TensorSplit
from fmprune.models import build
from fmprune.train import _autocast, fit, resolve_device

NORM = Normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def synthetic(n_train: int, n_test: int, size: int = 32) -> Data:
    g = torch.Generator().manual_seed(0)
    split = lambda n: TensorSplit(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                                  torch.randint(0, 10, (n,), generator=g))
    return Data("synthetic", split(n_train), split(n_test), 10, NORM)


def recipe(epochs: int, batch: int, augment: bool) -> dict:
    return {"epochs": epochs, "batch_size": batch, "lr": 0.01, "momentum": 0.9, "nesterov": False,
            "weight_decay": 5e-4, "label_smoothing": 0.0, "schedule": "constant", "milestones": [], "gamma": 0.1,
            "augment": augment, "val_fraction": 0.0, "eval_batch_size": 500}


def bare_loop(model: nn.Module, data: Data, epochs: int, batch: int, device: torch.device) -> None:
    model.to(device).train()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    crit = nn.CrossEntropyLoss()
    images, labels = data.train.images, data.train.labels
    mean = torch.tensor(NORM.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(NORM.std, device=device).view(1, -1, 1, 1)
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            x = (images[idx].to(device, non_blocking=True).float().div_(255) - mean) / std
            y = labels[idx].to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device):
                loss = crit(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet56")
    ap.add_argument("--images", type=int, default=384, help="training images per epoch")
    ap.add_argument("--test-images", type=int, default=64, help="fit() evaluates these once per epoch")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs per configuration")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's); on a CPU that other "
                    "jobs share, 1 avoids OpenMP threads spinning against each other")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = synthetic(args.images, args.test_images)
    n = args.images * args.epochs

    def fresh():
        torch.manual_seed(0)
        return build(args.arch)

    bare_loop(fresh(), data, 1, args.batch, device)  # warm-up (allocator, cuDNN autotuning, thread pools)
    runs = {
        "bare": lambda: bare_loop(fresh(), data, args.epochs, args.batch, device),
        "fit": lambda: _fit(fresh(), data, recipe(args.epochs, args.batch, False), device),
        "fit+augment": lambda: _fit(fresh(), data, recipe(args.epochs, args.batch, True), device),
    }
    best: dict[str, float] = {}
    for _ in range(args.repeats):  # interleaved, so a busy spell on a shared machine hits all alike
        for name, fn in runs.items():
            best[name] = min(best.get(name, float("inf")), timed(fn, device))
    rows = []
    for name, seconds in best.items():
        row = {"config": name, "arch": args.arch, "device": str(device), "threads": torch.get_num_threads(),
               "batch": args.batch, "images": n, "seconds": round(seconds, 3), "img_per_s": round(n / seconds, 1),
               "relative_to_bare": round(best["bare"] / seconds, 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'config':<12} {'img/s':>8} {'vs bare':>8}")
    for r in rows:
        print(f"{r['config']:<12} {r['img_per_s']:>8.1f} {r['relative_to_bare']:>8.3f}")


def _fit(model, data, rec, device):
    with tempfile.TemporaryDirectory() as tmp:
        fit(model, data, rec, seed=0, workdir=tmp, device=device, log_csv=Path(tmp) / "log.csv")


if __name__ == "__main__":
    main()
