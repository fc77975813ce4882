"""Evaluation and resumable SGD fine-tuning.

Every epoch ends with an atomic checkpoint (model, optimizer, scheduler, RNG states, history);
a restarted run continues from it. Batch order and augmentation come from a generator seeded
by (seed, epoch), so an interrupted and resumed run sees exactly the batches an uninterrupted
one would.
"""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import Data, Normalization
from .io import atomic_path, atomic_torch_save


def resolve_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, split, norm: Normalization, device: torch.device,
             indices=None, batch_size: int = 500) -> dict:
    """Top-1 and top-5 (in %) over ``indices`` of ``split`` (all by default), plus flagged top-1."""
    model.eval().to(device)
    indices = np.arange(len(split)) if indices is None else np.asarray(indices)
    correct1 = correct5 = 0
    hits = []
    for x, y in split.batches(indices, batch_size, norm, device=device):
        with _autocast(device):
            logits = model(x)
        top = logits.topk(min(5, logits.shape[1]), 1).indices
        hit1 = top[:, 0] == y
        correct1 += int(hit1.sum())
        correct5 += int((top == y[:, None]).any(1).sum())
        hits.append(hit1.cpu())
    result = {"top1": 100.0 * correct1 / len(indices), "top5": 100.0 * correct5 / len(indices)}
    flags = getattr(split, "flags", None)
    if flags is not None:
        flagged = np.asarray(flags)[indices]
        if flagged.any():
            result["top1_flagged"] = 100.0 * float(torch.cat(hits).numpy()[flagged].mean())
            result["n_flagged"] = int(flagged.sum())
    return result


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def _scheduler(optimizer, recipe: dict):
    if recipe["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, recipe["epochs"]))
    if recipe["schedule"] == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, recipe["milestones"], recipe["gamma"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _epoch: 1.0)


def split_indices(n_train: int, recipe: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out validation indices. The validation set depends on the recipe
    only (not on the seed), so every method and seed is selected on the same images."""
    order = np.random.default_rng(0).permutation(n_train)
    n_val = int(round(n_train * recipe["val_fraction"]))
    val, train = np.sort(order[:n_val]), order[n_val:]
    if recipe.get("train_subset"):
        train = np.random.default_rng(seed).permutation(train)[: recipe["train_subset"]]
    return np.sort(train), val


def fit(model: nn.Module, data: Data, recipe: dict, seed: int, workdir: str | Path,
        device: torch.device, log_csv: str | Path) -> dict:
    """Fine-tune ``model`` per ``recipe``; resume from ``workdir/checkpoint.pt`` if present.

    Returns the history summary: final and best-epoch accuracies, and the best epoch.
    """
    workdir = Path(workdir)
    ckpt_path, best_path = workdir / "checkpoint.pt", workdir / "best.pt"
    torch.manual_seed(seed)
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
        weight_decay=recipe["weight_decay"], nesterov=recipe["nesterov"],
    )
    scheduler = _scheduler(optimizer, recipe)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe["label_smoothing"])
    train_idx, val_idx = split_indices(len(data.train), recipe, seed)
    history: list[dict] = []
    start_epoch = 0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng(state["rng"])
        history, start_epoch = state["history"], state["epoch"]
        print(f"resuming from {ckpt_path} after epoch {start_epoch}", flush=True)

    for epoch in range(start_epoch + 1, recipe["epochs"] + 1):
        t0 = time.time()
        model.train()
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        # Accumulated on the device: no host sync per batch.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        lr = optimizer.param_groups[0]["lr"]
        for x, y in data.train.batches(order, recipe["batch_size"], data.norm, augment=recipe["augment"],
                                       generator=gen, device=device):
            with _autocast(device):
                logits = model(x)
                loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        loss_sum, correct = float(loss_sum), int(correct)
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"training loss became {loss_sum} in epoch {epoch}")
        scheduler.step()
        test = evaluate(model, data.test, data.norm, device, batch_size=recipe["eval_batch_size"])
        row = {
            "epoch": epoch, "lr": lr, "train_loss": loss_sum / max(seen, 1),
            "train_top1": 100.0 * correct / max(seen, 1), "test_top1": test["top1"], "test_top5": test["top5"],
        }
        if "top1_flagged" in test:
            row["test_top1_flagged"] = test["top1_flagged"]
        if len(val_idx):
            row["val_top1"] = evaluate(model, data.train, data.norm, device, val_idx, recipe["eval_batch_size"])["top1"]
        row["seconds"] = time.time() - t0
        history.append(row)
        key = "val_top1" if len(val_idx) else "test_top1"
        if row[key] >= max(r[key] for r in history):
            atomic_torch_save(model.state_dict(), best_path)
        atomic_torch_save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": _get_rng(), "history": history, "epoch": epoch},
            ckpt_path,
        )
        _write_log(log_csv, history)
        print(f"epoch {epoch}/{recipe['epochs']}: loss {row['train_loss']:.4f} test top-1 {row['test_top1']:.2f}% "
              f"({row['seconds']:.1f}s)", flush=True)
    _write_log(log_csv, history)
    return summarize(history, selection="val" if len(val_idx) else "test")


def summarize(history: list[dict], selection: str) -> dict:
    if not history:
        return {"epochs_run": 0}
    key = "val_top1" if selection == "val" else "test_top1"
    best = max(history, key=lambda r: (r[key], -r["epoch"]))
    out = {"top1": history[-1]["test_top1"], "top5": history[-1]["test_top5"],
           "top1_best": best["test_top1"], "best_epoch": best["epoch"], "selection": selection,
           "epochs_run": len(history)}
    if "test_top1_flagged" in history[-1]:
        out["top1_flagged"] = history[-1]["test_top1_flagged"]
        out["top1_flagged_best"] = best["test_top1_flagged"]
    return out


def _write_log(path: str | Path, history: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in history for k in row)) or ["epoch"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _get_rng() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
