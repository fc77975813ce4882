"""Fine-tuning: a run killed with SIGKILL resumes from its last checkpoint and ends where an
uninterrupted run ends."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import torch

SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    from fmprune.data import load
    from fmprune.models import build
    from fmprune.train import fit
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    data = load("digits", {"kind": "digits", "resolution": 16, "test_fraction": 0.5, "split_seed": 0,
                           "normalize": {"mean": [0.2] * 3, "std": [0.3] * 3}})
    torch.manual_seed(0)
    model = build("resnet20")
    recipe = {"epochs": 4, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
              "label_smoothing": 0.1, "schedule": "step", "milestones": [2], "gamma": 0.1, "augment": True,
              "val_fraction": 0.1, "train_subset": 300, "eval_batch_size": 500}
    out = Path(sys.argv[1])
    summary = fit(model, data, recipe, seed=1, workdir=out, device=torch.device("cpu"), log_csv=out / "log.csv")
    torch.save(model.state_dict(), out / "final.pt")
""")


def run(workdir, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(workdir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_killed_run_resumes_and_matches_an_uninterrupted_run(run_dirs):
    straight, interrupted = run_dirs
    reference = run(straight)
    victim = run(interrupted)
    deadline = time.time() + 300
    while not (interrupted / "checkpoint.pt").exists():  # first epoch done
        assert time.time() < deadline and victim.poll() is None, victim.stdout.read() if victim.poll() is not None else ""
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    epoch_at_kill = torch.load(interrupted / "checkpoint.pt", weights_only=True)["epoch"]
    assert epoch_at_kill < 4 and not (interrupted / "final.pt").exists()
    resumed = run(interrupted)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resuming from {interrupted / 'checkpoint.pt'} after epoch {epoch_at_kill}" in out
    reference.communicate(timeout=300)
    a = torch.load(straight / "final.pt", weights_only=True)
    b = torch.load(interrupted / "final.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = (interrupted / "log.csv").read_text().splitlines()
    assert len(log) == 5 and log[0].startswith("epoch,lr,train_loss") and "val_top1" in log[0]


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path, capsys):
    """Snakemake reruns a job in the same folder when its plan changed: the old weights must not come back."""
    from fmprune.data import load
    from fmprune.models import build
    from fmprune.train import fit

    data = load("digits", {"kind": "digits", "resolution": 16, "test_fraction": 0.5, "split_seed": 0,
                           "normalize": {"mean": [0.2] * 3, "std": [0.3] * 3}})
    recipe = {"epochs": 1, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
              "label_smoothing": 0.0, "schedule": "constant", "milestones": [], "gamma": 0.1, "augment": False,
              "val_fraction": 0.0, "train_subset": 64, "eval_batch_size": 500}

    def train(init_seed, **changes):
        torch.manual_seed(init_seed)
        fit(build("resnet20"), data, dict(recipe, **changes), seed=1, workdir=tmp_path, device=torch.device("cpu"),
            log_csv=tmp_path / "log.csv")
        return capsys.readouterr().out

    train(0)
    assert "resuming" in train(0)  # the same run again: its checkpoint is taken (and it is finished)
    for init_seed, changes in ((1, {}), (1, {"lr": 0.01})):  # other starting weights; another recipe
        out = train(init_seed, **changes)
        assert "ignoring" in out and "resuming" not in out
