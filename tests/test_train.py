"""Fine-tuning: a run killed with SIGKILL resumes from its last checkpoint and ends where an
uninterrupted run ends."""
import signal
import time

import torch

from .conftest import DIGITS16, fit_script, recipe, start_script

SCRIPT = fit_script(recipe(epochs=4, batch_size=64, milestones=[2], val_fraction=0.1, train_subset=300))


def test_killed_run_resumes_and_matches_an_uninterrupted_run(run_dirs):
    straight, interrupted = run_dirs
    reference = start_script(SCRIPT, straight)
    victim = start_script(SCRIPT, interrupted)
    deadline = time.time() + 300
    while not (interrupted / "checkpoint.pt").exists():  # first epoch done
        assert time.time() < deadline and victim.poll() is None, victim.stdout.read() if victim.poll() is not None else ""
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    epoch_at_kill = torch.load(interrupted / "checkpoint.pt", weights_only=True)["epoch"]
    assert epoch_at_kill < 4 and not (interrupted / "final.pt").exists()
    resumed = start_script(SCRIPT, interrupted)
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

    data = load("digits", DIGITS16)
    short = recipe(epochs=1, batch_size=64, nesterov=False, label_smoothing=0.0, schedule="constant", milestones=[],
                   augment=False, train_subset=64)

    def train(init_seed, **changes):
        torch.manual_seed(init_seed)
        fit(build("resnet20"), data, dict(short, **changes), seed=1, workdir=tmp_path, device=torch.device("cpu"),
            log_csv=tmp_path / "log.csv")
        return capsys.readouterr().out

    train(0)
    assert "resuming" in train(0)  # the same run again: its checkpoint is taken (and it is finished)
    for init_seed, changes in ((1, {}), (1, {"lr": 0.01})):  # other starting weights; another recipe
        out = train(init_seed, **changes)
        assert "ignoring" in out and "resuming" not in out
