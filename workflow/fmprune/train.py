"""Evaluation and resumable fine-tuning (SGD or Adam), on one process or several (torch.distributed).

The data's task (``Data.task``, see .tasks) gives the loss, the evaluation metrics and the
figure the best epoch is selected on; classification is the default.

Every epoch ends with an atomic checkpoint (model, optimizer, scheduler, RNG states, history);
a restarted run continues from it. Batch order and augmentation come from a generator seeded
by (seed, epoch), so an interrupted and resumed run sees exactly the batches an uninterrupted
one would.

Preemption: SIGTERM (SLURM's time limit or preemption) and SIGUSR1 (the warning signal of
``sbatch --signal``) set a flag that is checked after every batch. On it, the run writes a
mid-epoch checkpoint that also holds its position in the epoch (batches done, the epoch
generator's state, the partial sums), and exits with status 75 (``PREEMPTED_EXIT``, EX_TEMPFAIL)
so that Snakemake's ``retries`` resubmit it; the retry resumes exactly where it stopped.

Several processes (``torchrun --nproc_per_node N``; ``WORLD_SIZE`` > 1): the model is wrapped
in DistributedDataParallel (nccl on CUDA, gloo on CPU). Every rank draws the same
(seed, epoch) order and takes its contiguous part of each global batch of ``batch_size``
(per-rank batch = batch_size / world), and the loss is scaled so that the averaged gradient is
the gradient of the whole batch: the same optimisation as one process, up to floating-point
reduction order and BatchNorm, whose batch statistics are per process unless the recipe asks
for ``sync_bn`` (SyncBatchNorm, CUDA only). Evaluation is sharded and all-reduced; only rank 0
writes checkpoints, logs and outputs, the others wait at a barrier.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import Data, Normalization, shard_slice
from .io import atomic_path, atomic_torch_save
from .tasks import CLASSIFICATION, Task

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: "try again later"; the retry resumes from the checkpoint
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """Raised after a stop signal, once the checkpoint is written; exits with PREEMPTED_EXIT."""

    def __init__(self, signum: int, where: str):
        super().__init__(PREEMPTED_EXIT)
        self.signum, self.where = signum, where

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name} {self.where}; exit status {PREEMPTED_EXIT}"


def resolve_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return world()[0] == 0


def setup_distributed(preference: str = "auto") -> torch.device:
    """The training device; under torchrun (WORLD_SIZE > 1) also joins the process group:
    nccl with one GPU per process (cuda:LOCAL_RANK), gloo on CPU."""
    import torch.distributed as dist

    device = resolve_device(preference)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return device


def teardown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _barrier() -> None:
    import torch.distributed as dist

    if world()[1] > 1:
        dist.barrier()


@torch.no_grad()
def evaluate(model: nn.Module, split, norm: Normalization, device: torch.device,
             indices=None, batch_size: int = 500, distributed: bool = False) -> dict:
    """Top-1 and top-5 (in %) over ``indices`` of ``split`` (all by default), plus flagged top-1.

    ``distributed=True`` (every rank must call it): each rank evaluates its part of the
    indices and the counts are all-reduced, so every rank returns the same figures.
    """
    model.eval().to(device)
    indices = np.arange(len(split)) if indices is None else np.asarray(indices)
    rank, size = world() if distributed else (0, 1)
    local = indices[shard_slice(len(indices), rank, size)]
    flags = getattr(split, "flags", None)
    if flags is not None:  # one copy to the device, sliced per batch
        flags = torch.as_tensor(np.asarray(flags)[local], device=device)
    # Counts stay on the device (no host sync per batch): top-1, top-5, flagged hits, flagged images.
    counts = torch.zeros(4, dtype=torch.long, device=device)
    done = 0
    for x, y in split.batches(local, batch_size, norm, device=device):
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device):
            logits = model(x)
        top = logits.topk(min(5, logits.shape[1]), 1).indices
        hit1 = top[:, 0] == y
        counts[0] += hit1.sum()
        counts[1] += (top == y[:, None]).any(1).sum()
        if flags is not None:
            flagged = flags[done : done + len(y)]
            counts[2] += (hit1 & flagged).sum()
            counts[3] += flagged.sum()
        done += len(y)
    if size > 1:
        import torch.distributed as dist

        dist.all_reduce(counts)
    correct1, correct5, flagged_hits, n_flagged = counts.tolist()
    result = {"top1": 100.0 * correct1 / len(indices), "top5": 100.0 * correct5 / len(indices)}
    if flags is not None and n_flagged:
        result["top1_flagged"] = 100.0 * (flagged_hits / n_flagged)
        result["n_flagged"] = int(n_flagged)
    return result


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def _optimizer(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    """SGD, or Adam (U²-Net's recipe). ``optimizer`` and ``eps`` have no schema defaults, so
    recipes written before them keep their fingerprints and resumable checkpoints."""
    if recipe.get("optimizer") == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe["lr"], eps=recipe.get("eps", 1e-8),
                                weight_decay=recipe["weight_decay"])
    return torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                           weight_decay=recipe["weight_decay"], nesterov=recipe["nesterov"])


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


class _StopSignal:
    """Remembers the first SIGTERM/SIGUSR1; checked by the training loop after every batch."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __call__(self, signum, _frame):
        if self.signum is None:
            self.signum = signum
            print(f"received {signal.Signals(signum).name}: checkpointing after this batch", flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, group=None) -> int | None:
        """The stop signal, agreed on by every rank (one small gloo all-reduce per call when
        distributed, on the host: no device sync); None to go on."""
        if world()[1] == 1:
            return self.signum
        import torch.distributed as dist

        flag = torch.tensor([self.signum or 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return int(flag) or None


def _run_key(model: nn.Module, recipe: dict, seed: int) -> str:
    """Identity of a training run: its starting weights, recipe and seed.

    A checkpoint is resumed only by the run that wrote it; Snakemake reruns a job in the same
    folder after its plan or recipe changed, and must not pick up the old run's weights.
    """
    h = hashlib.sha256(json.dumps({"recipe": recipe, "seed": seed}, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def fit(model: nn.Module, data: Data, recipe: dict, seed: int, workdir: str | Path,
        device: torch.device, log_csv: str | Path) -> dict:
    """Fine-tune ``model`` per ``recipe``; resume from ``workdir/checkpoint.pt`` if present.

    Returns the history summary: final and best-epoch accuracies, and the best epoch. Raises
    ``Preempted`` (a SystemExit with status 75) after SIGTERM/SIGUSR1, once the checkpoint is
    written. Under torch.distributed every rank calls it; only rank 0 writes files.
    """
    run = _Training(model, data, recipe, seed, Path(workdir), device, log_csv)
    start_epoch, partial = run.resume()
    run.distribute()
    with _StopSignal() as stop:
        for epoch in range(start_epoch + 1, recipe["epochs"] + 1):
            run.epoch(epoch, partial if partial is not None and partial["epoch"] == epoch else None, stop)
    return run.finish()


class _Training:
    """The state one :func:`fit` call trains with: model (DDP-wrapped as ``net`` when
    distributed), optimizer, schedule, data split, history, and the checkpoint that saves them."""

    def __init__(self, model: nn.Module, data: Data, recipe: dict, seed: int, workdir: Path,
                 device: torch.device, log_csv: str | Path):
        self.model, self.data, self.recipe, self.seed = model, data, recipe, seed
        self.device, self.log_csv = device, log_csv
        self.ckpt_path, self.best_path = workdir / "checkpoint.pt", workdir / "best.pt"
        self.rank, self.size = world()
        self.main = self.rank == 0
        self.run_key = _run_key(model, recipe, seed)
        torch.manual_seed(seed)
        model.to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)  # cuDNN's preferred layout for bf16 convolutions
        self.sync_bn = self._convert_sync_bn()
        self.optimizer = _optimizer(model, recipe)
        self.scheduler = _scheduler(self.optimizer, recipe)
        self.task = data.task
        self.train_idx, self.val_idx = split_indices(len(data.train), recipe, seed)
        self.history: list[dict] = []
        self.net, self.control = model, None  # see distribute()

    def _convert_sync_bn(self) -> bool:
        sync_bn = bool(self.recipe.get("sync_bn")) and self.size > 1
        if sync_bn and self.device.type != "cuda":
            print("sync_bn: SyncBatchNorm needs CUDA; BatchNorm statistics stay per process", flush=True)
            sync_bn = False
        if sync_bn:
            nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        return sync_bn

    def resume(self) -> tuple[int, dict | None]:
        """Load this run's checkpoint, if there is one: (epochs done, position in the next epoch
        when it was written mid-epoch, else None). A checkpoint of another run is ignored."""
        state = torch.load(self.ckpt_path, map_location="cpu", weights_only=True) if self.ckpt_path.is_file() else None
        if state is not None and state.get("run_key") != self.run_key:
            if self.main:
                print(f"ignoring {self.ckpt_path}: it was written by another run (other starting weights, recipe or "
                      "seed); starting afresh", flush=True)
            state = None
        if state is None:
            return 0, None
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device.
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng(state["rng"])
        self.history, partial = state["history"], state.get("partial")
        if self.main:
            where = (f"in epoch {partial['epoch']} after batch {partial['batch']}" if partial
                     else f"after epoch {state['epoch']}")
            print(f"resuming from {self.ckpt_path} {where}", flush=True)
        return state["epoch"], partial

    def distribute(self) -> None:
        """With several processes: wrap the model in DistributedDataParallel, and pick the gloo
        group the stop signal is agreed on (a host-side all-reduce, no device sync)."""
        if self.size == 1:
            return
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        if self.recipe["batch_size"] < self.size:
            raise ValueError(f"batch_size {self.recipe['batch_size']} is smaller than the {self.size} processes")
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.net = DistributedDataParallel(self.model, device_ids=device_ids)
        self.control = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def checkpoint(self, epochs_done: int, extra: dict | None = None) -> None:
        if self.main:
            atomic_torch_save(
                {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": _get_rng(), "history": self.history,
                 "epoch": epochs_done, "run_key": self.run_key, **(extra or {})},
                self.ckpt_path,
            )

    def epoch(self, epoch: int, partial: dict | None, stop: _StopSignal) -> None:
        """Train one epoch (from where ``partial`` stopped, if given), evaluate, record and
        checkpoint it; raise Preempted when a stop signal came meanwhile."""
        t0 = time.time() - (partial["seconds"] if partial is not None else 0.0)
        lr = self.optimizer.param_groups[0]["lr"]
        loss_sum, figure_sum, seen = self._train(epoch, partial, stop, t0)
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"training loss became {loss_sum} in epoch {epoch}")
        self.scheduler.step()
        row = {"epoch": epoch, "lr": lr, "train_loss": loss_sum / max(seen, 1),
               self.task.train_metric: figure_sum / max(seen, 1), **self._evaluate()}
        row["seconds"] = time.time() - t0
        self._record(row)
        if epoch < self.recipe["epochs"]:
            signum = stop.agreed(self.control)
            if signum:
                raise Preempted(signum, f"after epoch {epoch}")

    def _train(self, epoch: int, partial: dict | None, stop: _StopSignal, t0: float) -> tuple[float, float, int]:
        """One epoch's optimizer steps over the (seed, epoch) order; returns the training loss sum,
        the task's training figure summed over images (top-1 hits × 100 for classification) and
        images seen, summed over all processes."""
        self.model.train()
        bs, device = self.recipe["batch_size"], self.device
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=gen).numpy()]
        # Accumulated on the device: no host sync per batch.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.float64, device=device)  # the task's training figure
        seen, first = 0, 0
        if partial is not None:  # mid-epoch resume
            first = partial["batch"]
            gen.set_state(partial["gen"])
            if self.main:  # the partial sums are global; the other ranks start from zero
                loss_sum += partial["loss_sum"].to(device)
                correct += partial["correct"].to(device)
                seen = partial["seen"]
        n_batches = -(-len(order) // bs)
        batches = self.data.train.batches(order[first * bs :], bs, self.data.norm, augment=self.recipe["augment"],
                                          generator=gen, device=device,
                                          shard=(self.rank, self.size) if self.size > 1 else None)
        for b in range(first, n_batches):
            x, y, weight = self._next_batch(batches, order, b)
            batch_loss, outputs = self._step(x, y, weight)
            if weight:
                loss_sum += batch_loss
                correct += self.task.train_sum(outputs, y)
                seen += len(y)
            signum = stop.agreed(self.control)
            if signum:
                self._checkpoint_mid_epoch(epoch, b + 1, gen, (loss_sum, correct, seen), t0)
                raise Preempted(signum, f"in epoch {epoch} after batch {b + 1}/{n_batches}")
        if self.size > 1:
            import torch.distributed as dist

            totals = torch.stack([loss_sum.double(), correct, torch.tensor(seen, device=device).double()])
            dist.all_reduce(totals)
            loss_sum, correct, seen = totals[0], totals[1], int(totals[2])
            for buf in self.model.buffers():  # BatchNorm running statistics: rank 0's, everywhere
                dist.broadcast(buf, 0)
        return float(loss_sum), float(correct), seen

    def _next_batch(self, batches, order: np.ndarray, b: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This process's part of global batch ``b`` and its loss weight: with several processes
        the loss is scaled so that DDP's average over ranks is the whole batch's mean loss."""
        if self.size == 1:
            x, y = next(batches)
            return x, y, 1.0
        bs = self.recipe["batch_size"]
        n_global = min(bs, len(order) - b * bs)
        part = shard_slice(n_global, self.rank, self.size)
        if part.stop > part.start:
            x, y = next(batches)
            return x, y, self.size / n_global
        # a last batch smaller than the world: take part with zero weight
        x, y = next(self.data.train.batches(order[:1], 1, self.data.norm, device=self.device))
        return x, y, 0.0

    def _step(self, x: torch.Tensor, y: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns the batch's summed loss (detached) and the model's outputs."""
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        smoothing = self.recipe["label_smoothing"]
        with _autocast(self.device):
            outputs = self.net(x)
            if self.size == 1:
                loss = self.task.loss(outputs, y, label_smoothing=smoothing)
                batch_loss = loss.detach() * len(y)
            else:
                summed = self.task.loss(outputs, y, reduction="sum", label_smoothing=smoothing)
                loss = summed * weight
                batch_loss = summed.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return batch_loss, outputs

    def _checkpoint_mid_epoch(self, epoch: int, batches_done: int, gen: torch.Generator, sums: tuple,
                              t0: float) -> None:
        """A checkpoint of the epochs before ``epoch`` plus the position in it: batches done, the
        epoch generator's state and the global partial sums; every rank waits for it."""
        loss_sum, correct, seen = sums
        totals = [loss_sum.clone(), correct.clone(), torch.tensor(seen, device=self.device)]
        if self.size > 1:
            import torch.distributed as dist

            for t in totals:
                dist.all_reduce(t)
        self.checkpoint(epoch - 1, {"partial": {
            "epoch": epoch, "batch": batches_done, "gen": gen.get_state(), "loss_sum": totals[0].cpu(),
            "correct": totals[1].cpu(), "seen": int(totals[2]), "seconds": time.time() - t0}})
        _barrier()

    def _evaluate(self) -> dict:
        """The task's test metrics (classification: top-1/top-5, flagged top-1 if any) and the
        held-out validation headline figure of this epoch."""
        batch, task = self.recipe["eval_batch_size"], self.task
        test = task.evaluate(self.model, self.data.test, self.data.norm, self.device, batch_size=batch, distributed=True)
        row = {f"test_{k}": test[k] for k in task.metrics if k in test}
        if len(self.val_idx):
            row[f"val_{task.headline}"] = task.evaluate(self.model, self.data.train, self.data.norm, self.device,
                                                        self.val_idx, batch, distributed=True)[task.headline]
        return row

    def _record(self, row: dict) -> None:
        """Append an epoch to the history; rank 0 keeps the best weights, checkpoints and logs."""
        self.history.append(row)
        headline = self.task.headline
        key = f"val_{headline}" if len(self.val_idx) else f"test_{headline}"
        if self.main:
            if row[key] >= max(r[key] for r in self.history):
                atomic_torch_save(self.model.state_dict(), self.best_path)
            self.checkpoint(row["epoch"])
            _write_log(self.log_csv, self.history)
            print(f"epoch {row['epoch']}/{self.recipe['epochs']}: loss {row['train_loss']:.4f} test "
                  f"{self.task.headline_label} {row[f'test_{headline}']:.4g} ({row['seconds']:.1f}s)", flush=True)
        _barrier()

    def finish(self) -> dict:
        if self.sync_bn:
            _revert_sync_bn(self.model)
        if self.main:
            _write_log(self.log_csv, self.history)
        _barrier()
        return summarize(self.history, selection="val" if len(self.val_idx) else "test", task=self.task)


def _revert_sync_bn(module: nn.Module) -> None:
    """Replace SyncBatchNorm layers by BatchNorm2d with the same state (for saving and single-process use)."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats).to(child.running_mean.device)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            _revert_sync_bn(child)


def summarize(history: list[dict], selection: str, task: Task = CLASSIFICATION) -> dict:
    """The final epoch's test metrics, the task's ``best`` metrics at the selected epoch
    (``<metric>_best``; selected on the headline figure of the test or validation split)."""
    if not history:
        return {"epochs_run": 0}
    key = f"{selection}_{task.headline}"
    best = max(history, key=lambda r: (r[key], -r["epoch"]))
    last = history[-1]
    out = {k: last[f"test_{k}"] for k in task.metrics if f"test_{k}" in last}
    out |= {f"{k}_best": best[f"test_{k}"] for k in task.best if f"test_{k}" in best}
    return out | {"best_epoch": best["epoch"], "selection": selection, "epochs_run": len(history)}


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
