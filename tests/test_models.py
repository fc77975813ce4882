"""Architectures: cost counts against the papers' baselines, strict checkpoint loading, accuracy."""
import json
import subprocess
import sys

import pytest
import torch

from fmprune.counting import count
from fmprune.models import ARCHS, build

from .conftest import shared_file


def test_resnet56_counts_match_the_papers_baseline():
    c = count(build("resnet56"), "resnet56")
    assert c["params"] == 853_018
    assert abs(c["macs"] - 125_485_696) <= 0.005 * 125_485_696  # papers: 125.49M
    assert c["flops"] == 2 * c["macs"]
    assert c["macs_thop"] > c["macs"]  # thop also charges BatchNorm


@pytest.mark.parametrize("arch", ARCHS)
def test_count_cli_works_for_every_architecture(arch):
    out = subprocess.run([sys.executable, "-m", "fmprune.cli", "count", arch], capture_output=True, text=True, check=True)
    c = json.loads(out.stdout)
    assert {"params", "macs", "macs_thop", "flops"} <= set(c) and c["macs"] > 0


def test_resnet110_counts():
    c = count(build("resnet110"), "resnet110")
    assert abs(c["macs"] - 252.89e6) <= 0.005 * 252.89e6
    assert abs(c["params"] - 1.72e6) <= 0.01 * 1.72e6


@pytest.mark.parametrize("depth,params", [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018)])
def test_shared_checkpoints_load_strictly(depth, params):
    from fmprune.pipeline import _read_checkpoint

    path = next(iter(shared_file("weights").glob(f"resnet{depth}-*.th")))
    model = _read_checkpoint(path, f"resnet{depth}", 10)
    assert sum(p.numel() for p in model.parameters()) == params


def test_resnet56_checkpoint_accuracy_on_exact_test_images(cifar_root, resnet56_checkpoint):
    from fmprune.data import load
    from fmprune.pipeline import _read_checkpoint
    from fmprune.train import evaluate

    data = load("cifar10", {"kind": "imagefolder", "root": str(cifar_root), "resolution": 32, "in_memory": True,
                            "flag_column": "exact", "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}})
    flagged = data.test.flags.nonzero()[0]
    assert len(flagged) == 1000
    model = _read_checkpoint(resnet56_checkpoint, "resnet56", 10)
    result = evaluate(model, data.test, data.norm, torch.device("cpu"), indices=flagged)
    assert result["top1"] >= 92.0, result
