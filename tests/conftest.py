"""Shared fixtures. Tests that need ../shared (CIFAR folder, pretrained ResNets) skip without it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FMPRUNE_SHARED", REPO.parent / "shared"))


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


@pytest.fixture
def run_dirs(tmp_path) -> tuple[Path, Path]:
    """Folders of two identical training runs: one left alone, one interrupted and resumed."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    straight.mkdir()
    interrupted.mkdir()
    return straight, interrupted
