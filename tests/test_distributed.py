"""Data-parallel training: 2 processes (torchrun, gloo on CPU) against 1 process with the same
global batch.

* Parameters and buffers are identical on both ranks after training (DDP averages the
  gradients; BatchNorm running statistics are rank 0's, broadcast at each epoch's end), and both
  ranks report the same history (evaluation is sharded and all-reduced).
* Only rank 0 writes checkpoints and logs.
* A network without BatchNorm ends where the 1-process run ends, up to floating-point reduction
  order: |Δ| ≤ 1e-5 after 12 SGD steps with momentum (the loss is scaled so that the averaged
  gradient is the whole batch's; a last batch of 1 image gives rank 1 nothing, it takes part
  with weight 0).
* ResNet-20 (BatchNorm) cannot end exactly there: each process normalises with the statistics of
  its half of the batch (at initialisation that alone changes the gradient by ~30% here), so the
  weights drift apart element-wise. Two checks instead: (a) the 2-process run equals, to 1e-5
  (measured: bit for bit), a 1-process replay that runs each half batch through BatchNorm on its
  own ("ghost" batches) — so every difference to the plain 1-process run is the BatchNorm
  statistics; (b) the training loss of every epoch stays within 2% of the 1-process run's
  (measured ~0.2%). ``sync_bn: true`` in a recipe (SyncBatchNorm: statistics of the whole
  batch) removes the difference on CUDA; PyTorch's SyncBatchNorm does not run on CPU.
"""
import json
import os
import subprocess
import sys
import textwrap

import torch

from .conftest import DIGITS16, recipe

SCRIPT = f"DIGITS16 = {DIGITS16!r}\nRECIPE = {recipe(train_subset=193)!r}\n" + textwrap.dedent("""
    import json, sys, torch
    import torch.distributed as dist
    from pathlib import Path
    from torch import nn
    import fmprune.train as train
    from fmprune.data import load
    from fmprune.models import build

    from fmprune.data import shard_slice

    def ghost_batchnorm_reference(model, data, recipe, seed, world):
        # What `world` DDP processes compute, in one plain loop: every part of a global batch goes
        # through the model alone (its own BatchNorm statistics), the gradients of sum(loss)/batch
        # add up, and the running statistics are those of part 0 (DDP broadcasts rank 0's buffers).
        opt = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                              weight_decay=recipe["weight_decay"], nesterov=recipe["nesterov"])
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, recipe["milestones"], recipe["gamma"])
        crit = nn.CrossEntropyLoss(label_smoothing=recipe["label_smoothing"], reduction="sum")
        train_idx, _ = train.split_indices(len(data.train), recipe, seed)
        for epoch in range(1, recipe["epochs"] + 1):
            model.train()
            gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
            for x, y in data.train.batches(order, recipe["batch_size"], data.norm, augment=True, generator=gen):
                opt.zero_grad()
                for r in range(world):
                    part = shard_slice(len(y), r, world)
                    if part.stop == part.start:
                        continue
                    kept = [b.clone() for b in model.buffers()]
                    (crit(model(x[part]), y[part]) / len(y)).backward()
                    if r > 0:
                        for b, k in zip(model.buffers(), kept):
                            b.copy_(k)
                opt.step()
            sched.step()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    device = train.setup_distributed("cpu")
    rank, world = train.world()
    writes = []  # every file this rank writes through fit()
    save, write_log = train.atomic_torch_save, train._write_log
    train.atomic_torch_save = lambda obj, path: (writes.append(str(path)), save(obj, path))
    train._write_log = lambda path, history: (writes.append(str(path)), write_log(path, history))
    data = load("digits", DIGITS16)
    recipe = RECIPE  # 193 images in batches of 32: the last global batch has 1 image, so rank 1 gets none.
    report = {"rank": rank, "world": world}
    for name in ("plain", "resnet20"):
        torch.manual_seed(0)
        if name == "plain":
            model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(16, 10))
        else:
            model = build("resnet20")
            recipe = dict(recipe, lr=0.01)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        workdir = out / f"{name}-world{world}"
        summary = train.fit(model, data, recipe, seed=1, workdir=workdir, device=device, log_csv=workdir / "log.csv")
        state = model.state_dict()
        max_diff = 0.0
        for v in state.values():  # this rank against rank 0
            ref = v.clone()
            if world > 1:
                dist.broadcast(ref, 0)
            max_diff = max(max_diff, float((v.double() - ref.double()).abs().max()))
        report[name] = {"summary": summary, "max_diff_to_rank0": max_diff}
        if rank == 0:
            torch.save({"init": init, "final": state}, out / f"{name}-world{world}.pt")
    if world == 1:  # the 2-process optimisation replayed in 1 process: BatchNorm per half batch
        torch.manual_seed(0)
        model = build("resnet20")
        ghost_batchnorm_reference(model, data, dict(recipe, lr=0.01), seed=1, world=2)
        torch.save(model.state_dict(), out / "resnet20-ghost.pt")
    report["writes"] = writes
    (out / f"report-world{world}-rank{rank}.json").write_text(json.dumps(report))
    train.teardown_distributed()
""")


def test_two_gloo_processes_train_like_one(tmp_path):
    script = tmp_path / "fit_script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(script), str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    one = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300)
    out2, _ = two.communicate(timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr
    assert two.returncode == 0, out2

    r0, r1 = (json.loads((tmp_path / f"report-world2-rank{r}.json").read_text()) for r in (0, 1))
    for name in ("plain", "resnet20"):
        # identical weights and buffers on both ranks, and the same history
        assert r1[name]["max_diff_to_rank0"] == 0.0
        assert r0[name]["summary"] == r1[name]["summary"]
        assert (tmp_path / f"{name}-world2" / "checkpoint.pt").is_file()
    # only rank 0 writes
    assert r1["writes"] == []
    assert {os.path.basename(p) for p in r0["writes"]} == {"checkpoint.pt", "best.pt", "log.csv"}

    def load(name, world):
        return torch.load(tmp_path / f"{name}-world{world}.pt", weights_only=True)

    # Without BatchNorm: the same optimisation, up to reduction order.
    a, b = load("plain", 1)["final"], load("plain", 2)["final"]
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-5, worst
    # ResNet-20 (BatchNorm): exactly the optimisation of the 1-process replay with BatchNorm per half
    # batch, and close to the plain 1-process run (same loss per epoch within 2%).
    ghost = torch.load(tmp_path / "resnet20-ghost.pt", weights_only=True)
    two_run = load("resnet20", 2)["final"]
    worst = max(float((ghost[k].double() - two_run[k].double()).abs().max()) for k in ghost)
    assert worst <= 1e-5, worst
    losses = [[float(row.split(",")[2]) for row in (tmp_path / f"resnet20-world{w}" / "log.csv").read_text().split()[1:]]
              for w in (1, 2)]
    assert len(losses[0]) == len(losses[1]) == 2
    assert all(abs(a - b) <= 0.02 * a for a, b in zip(*losses)), losses


def test_cli_relaunches_a_training_step_under_torchrun_when_the_recipe_asks_for_gpus(monkeypatch):
    """`gpus: 2` in the fine-tuning recipe: `fmprune finetune …` replaces itself by
    `torchrun --standalone --nproc_per_node=2 -m fmprune.cli finetune …` (SIGUSR1 forwarded too);
    not with `gpus: 1`, and not again inside torchrun's workers."""
    from fmprune import cli
    from fmprune.config import validate

    cfg = validate({"datasets": {"d": {"kind": "digits"}},
                    "models": {"m": {"arch": "resnet20", "dataset": "d", "plans": {"p": {"uniform": 0.5}},
                                     "default_plan": "p"}},
                    "recipes": {"baseline": {"epochs": 1, "lr": 0.1}, "finetune": {"epochs": 1, "lr": 0.1, "gpus": 2}}})
    calls = []
    monkeypatch.setattr(os, "execv", lambda *a: calls.append(a))
    for var in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    argv = ["finetune", "--config", "c.yaml", "--model", "m", "--plan", "p"]
    cli._relaunch_distributed(cfg, "m", "finetune", argv, "p")
    (exe, cmd), = calls
    assert exe == sys.executable and cmd[0] == sys.executable
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert "SIGUSR1" in cmd[5] and cmd[5].startswith("--signals-to-handle=")
    assert cmd[6:8] == ["-m", "fmprune.cli"] and cmd[8:] == argv
    cli._relaunch_distributed(cfg, "m", "baseline", ["baseline"], None)  # the baseline recipe: 1 process
    monkeypatch.setenv("WORLD_SIZE", "2")  # already a torchrun worker
    cli._relaunch_distributed(cfg, "m", "finetune", argv, "p")
    assert len(calls) == 1
