"""The saliency demo's chain through Snakemake, at a tiny size: U²-Net-P on a few synthetic
pairs, two methods (a feature-map one and a weights-only one), one epoch everywhere."""
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import snakemake_command

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_saliency_demo_chain_runs_end_to_end(tmp_path):
    cfg = yaml.safe_load((REPO / "config/saliency-demo.yaml").read_text())
    cfg["datasets"]["synthetic"].update(count=40, size=32, resolution=32, crop=28)
    cfg["methods"] = ["dct", "l1"]
    plans = cfg["models"]["u2netp"]["plans"]  # DCT at the rate list, L1 at the MAC target
    plans["rates30"]["methods"], plans["macs50"]["methods"] = ["dct"], ["l1"]
    cfg["features"]["samples"] = 16
    cfg["evaluation"]["bn_images"] = 16
    for recipe in cfg["recipes"].values():
        recipe["epochs"] = 1
    cmd = snakemake_command(tmp_path, cfg)
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / "results/u2netp"
    base = json.loads((results / "baseline/acc.json").read_text())
    assert base["task"] == "saliency" and base["params"] == 1_131_181
    assert {"maxf", "mae", "sm", "em", "wfm"} <= set(base) and "top1" not in base
    for method, plan in (("dct", "rates30"), ("l1", "macs50")):
        acc = json.loads((results / method / plan / "seed0/acc.json").read_text())
        for key in ("maxf", "mae", "maxf_best", "best_epoch", "maxf_before_finetune", "maxf_before_finetune_bn",
                    "mae_before_finetune", "params", "macs", "baseline"):
            assert key in acc, key
        assert 0 <= acc["maxf"] <= 1 and acc["params"] < base["params"] and acc["baseline"]["maxf"] == base["maxf"]
    log = pd.read_csv(results / "dct/rates30/seed0/log.csv")
    assert {"train_loss", "train_mae", "test_maxf", "test_mae"} <= set(log.columns)
    table = pd.read_csv(tmp_path / "results/tables/summary.csv")
    assert {"maxf", "maxf_before_finetune", "mae", "mae_before_finetune"} <= set(table.columns)
    assert "top1" not in table.columns and len(table) == 3  # the baseline + 2 runs
