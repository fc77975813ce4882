"""Shared fixtures. Tests that need ../shared (CIFAR folder, pretrained ResNets) skip without it."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FMPRUNE_SHARED", REPO.parent / "shared"))


def snakemake_command(workdir: Path, cfg: dict) -> list[str]:
    """The workflow on ``cfg`` (written to workdir/c.yaml) in ``workdir``, on 2 cores at one
    thread a job: the small jobs of the end-to-end tests are start-up bound, so two at a time
    finish sooner than one job with two threads."""
    (workdir / "c.yaml").write_text(yaml.safe_dump(cfg))
    return [sys.executable, "-m", "snakemake", "--cores", "2", "--max-threads", "1", "--configfile",
            str(workdir / "c.yaml"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared data folder), which is absent here")
    return path


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """The shared CIFAR-10 ImageFolder tree, unpacked once into a cache outside the repo."""
    from fmprune.data import unpack

    archive = shared_file("data", "cifar10-imagefolder.tar.gz")
    cache = Path(os.environ.get("FMPRUNE_CACHE", Path.home() / ".cache" / "fmprune"))
    root = cache / "cifar10"
    if not root.is_dir():
        unpack(archive, root)
    return root


@pytest.fixture(scope="session")
def resnet56_checkpoint() -> Path:
    return shared_file("weights", "resnet56-4bfd9763.th")


def random_batches(rng: np.random.Generator, sizes: list[int], c: int, h: int, w: int,
                   relu: bool = False) -> list[torch.Tensor]:
    """Feature-map batches [B, C, H, W] of standard normal float32 values, one per size (ReLU'd
    with ``relu``). Continuous data: a float tie between two implementations has probability ~0."""
    out = []
    for b in sizes:
        x = rng.standard_normal((b, c, h, w)).astype(np.float32)
        out.append(torch.from_numpy(np.maximum(x, 0) if relu else x))
    return out


@pytest.fixture
def run_dirs(tmp_path) -> tuple[Path, Path]:
    """Folders of two identical training runs: one left alone, one interrupted and resumed."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    straight.mkdir()
    interrupted.mkdir()
    return straight, interrupted


# Training tests: a small dataset and a complete fine-tuning recipe (all keys of a validated one).
DIGITS16 = {"kind": "digits", "resolution": 16, "test_fraction": 0.5, "split_seed": 0,
            "normalize": {"mean": [0.2] * 3, "std": [0.3] * 3}}


def recipe(**changes) -> dict:
    return {"epochs": 2, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
            "label_smoothing": 0.1, "schedule": "step", "milestones": [1], "gamma": 0.1, "augment": True,
            "val_fraction": 0.0, "train_subset": 320, "eval_batch_size": 500, **changes}


def fit_script(train_recipe: dict, after_loading: str = "") -> str:
    """Source of a script that fine-tunes ResNet-20 (initialised with seed 0) on DIGITS16 with
    seed 1, deterministically on one thread, in the folder given as its argument, and saves the
    final weights there as final.pt; ``after_loading`` runs once ``data`` is loaded."""
    head = f"""
        import sys, torch
        from pathlib import Path
        from fmprune.data import load
        from fmprune.models import build
        from fmprune.train import fit
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        data = load("digits", {DIGITS16!r})
    """
    tail = f"""
        torch.manual_seed(0)
        model = build("resnet20")
        out = Path(sys.argv[1])
        fit(model, data, {train_recipe!r}, seed=1, workdir=out, device=torch.device("cpu"), log_csv=out / "log.csv")
        torch.save(model.state_dict(), out / "final.pt")
    """
    return textwrap.dedent(head) + textwrap.dedent(after_loading) + textwrap.dedent(tail)


def start_script(source: str, workdir: Path) -> subprocess.Popen:
    """Run ``source`` with ``workdir`` as its argument (one OpenMP thread, unbuffered, stderr into stdout)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-u", "-c", source, str(workdir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
