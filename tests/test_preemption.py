"""Preemption: SIGUSR1 (SLURM's warning signal) or SIGTERM (time limit, preemption) mid-epoch makes a
training run write a checkpoint with its position in the epoch and exit with status 75; the
restarted run resumes there, and ends bit for bit where an uninterrupted run ends."""
import csv
import signal
import time

import torch

from fmprune.train import PREEMPTED_EXIT

from .conftest import fit_script, recipe, start_script

SCRIPT = fit_script(recipe(), after_loading="""
    train_batches = data.train.batches
    def batches(*args, **kw):  # a progress line per training batch, for the test to aim its signal
        for i, item in enumerate(train_batches(*args, **kw)):
            if kw.get("generator") is not None:
                print(f"train-batch {i}", flush=True)
            yield item
    data.train.batches = batches
""")


def signal_during(proc, sig, epoch_line, batch):
    """Send ``sig`` once ``epoch_line`` and then ``train-batch {batch}`` have been printed; return the output."""
    lines, armed = [], epoch_line is None
    deadline = time.time() + 120
    for line in proc.stdout:
        lines.append(line)
        armed = armed or line.startswith(epoch_line)
        if armed and line.strip() == f"train-batch {batch}":
            proc.send_signal(sig)
            break
        assert time.time() < deadline, "".join(lines)
    out, _ = proc.communicate(timeout=120)
    return "".join(lines) + out


def read_log(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_signal_checkpoints_mid_epoch_and_resume_is_exact(run_dirs):
    straight, interrupted = run_dirs
    reference = start_script(SCRIPT, straight)

    # 1. SIGUSR1 in epoch 1 (no end-of-epoch checkpoint yet): a mid-epoch checkpoint, exit status 75.
    victim = start_script(SCRIPT, interrupted)
    out = signal_during(victim, signal.SIGUSR1, None, 3)
    assert victim.returncode == PREEMPTED_EXIT, out
    assert "received SIGUSR1" in out
    state = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 0 and state["partial"]["epoch"] == 1, state.get("partial")
    stopped_at = state["partial"]["batch"]
    assert 4 <= stopped_at < 10  # after the batch in flight when the signal came, before the epoch's end

    # 2. The retry resumes there; SIGTERM in epoch 2 stops it again.
    victim = start_script(SCRIPT, interrupted)
    out = signal_during(victim, signal.SIGTERM, "epoch 1/2", 2)
    assert victim.returncode == PREEMPTED_EXIT, out
    assert f"resuming from {interrupted / 'checkpoint.pt'} in epoch 1 after batch {stopped_at}" in out
    assert "received SIGTERM" in out
    state = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["partial"]["epoch"] == 2

    # 3. The last retry finishes; weights, BatchNorm statistics and the log equal the uninterrupted run's.
    victim = start_script(SCRIPT, interrupted)
    out, _ = victim.communicate(timeout=120)
    assert victim.returncode == 0, out
    ref_out, _ = reference.communicate(timeout=120)
    assert reference.returncode == 0, ref_out
    a = torch.load(straight / "final.pt", weights_only=True)
    b = torch.load(interrupted / "final.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_log(straight / "log.csv") == read_log(interrupted / "log.csv")
    assert "partial" not in torch.load(interrupted / "checkpoint.pt", weights_only=True)


def test_preempted_cli_step_exits_75_with_a_message(tmp_path, monkeypatch):
    """The CLI turns the stop into one line on stderr and exit status 75 (Snakemake then retries)."""
    from fmprune import cli, pipeline
    from fmprune.train import Preempted

    def stopped(*args, **kwargs):
        raise Preempted(signal.SIGTERM, "in epoch 1 after batch 2/5")

    monkeypatch.setattr(pipeline, "finetune", stopped)
    monkeypatch.setattr(cli, "_relaunch_distributed", lambda *a: None)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("datasets: {d: {kind: digits}}\nmodels: {m: {arch: resnet20, dataset: d, plans: {p: {uniform: 0.5}}, "
                   "default_plan: p}}\nrecipes: {finetune: {epochs: 1, lr: 0.1}, baseline: {epochs: 1, lr: 0.1}}\n")
    args = ["finetune", "--config", str(cfg), "--model", "m", "--method", "l1", "--plan", "p", "--seed", "0",
            "--pruned", "x", "--pruned-report", "x", "--baseline-report", "x", "--out-dir", str(tmp_path)]
    assert cli.main(args) == PREEMPTED_EXIT
