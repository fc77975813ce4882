"""Traced models through Snakemake at a tiny size: torchvision's MobileNetV2 (no hand-written
spec) on the embedded digits, seven methods once each over a rate list, a uniform rate and a MAC
target; FP-FMC, whose K selection takes minutes per MobileNetV2 layer of ~1000 channels, on a
small model of the user's own file."""
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import snakemake_command

REPO = Path(__file__).resolve().parent.parent
# each method at one plan form (CDP and RGD bisect their own knob to the MAC target)
RUNS = {"hrank": "rates30", "cfdp": "rates30", "dct": "rates30", "random": "uniform30", "rgd": "uniform30",
        "cdp": "macs50", "l1": "macs50"}


@pytest.mark.slow
def test_every_method_prunes_traced_models_end_to_end(tmp_path):
    cfg = yaml.safe_load((REPO / "config/torchvision-demo.yaml").read_text())
    for plan_name, plan in cfg["models"]["mobilenet_v2"]["plans"].items():
        plan["methods"] = [m for m, p in RUNS.items() if p == plan_name]
    cfg["datasets"]["digits16"] = dict(cfg["datasets"]["digits"], resolution=16)
    cfg["models"]["mine"] = {"arch": f"{REPO}/tests/user_models/my_model.py:make", "dataset": "digits16",
                             "methods": ["fpfmc"], "baseline_recipe": "digits-baseline",
                             "finetune_recipe": "digits-finetune", "plans": {"rates": {"rates": "[0.5]*2"}},
                             "default_plan": "rates"}
    cfg["methods"] = list(RUNS)
    cfg["recipes"]["digits-baseline"].update(epochs=1, train_subset=256)
    cfg["recipes"]["digits-finetune"].update(epochs=1, train_subset=64)
    cfg["method_params"] = {"fpfmc": {"images": 4}, "rgd": {"images": 8}}
    cfg["features"]["samples"] = 16
    cfg["evaluation"]["bn_images"] = 16
    cmd = snakemake_command(tmp_path, cfg)
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / "results"
    base = json.loads((results / "mobilenet_v2/baseline/acc.json").read_text())
    assert base["arch"] == "torchvision/mobilenet_v2" and base["input_size"] == 32
    reductions = {}
    for model, method, plan in [("mobilenet_v2", m, p) for m, p in RUNS.items()] + [("mine", "fpfmc", "rates")]:
        acc = json.loads((results / model / method / plan / "seed0/acc.json").read_text())
        assert acc["method"] == method and acc["plan"] == plan and 0 <= acc["top1"] <= 100
        assert acc["params"] < acc["baseline"]["params"]
        reductions[method] = acc["macs_reduction_pct"]
    assert abs(reductions["l1"] - 50) < 2 and abs(reductions["cdp"] - 50) < 2, reductions
    table = (tmp_path / "results/tables/summary.csv").read_text()
    assert all(method in table for method in [*RUNS, "fpfmc"])
