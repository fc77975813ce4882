"""The whole chain through Snakemake on a tiny version of the embedded default."""
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import snakemake_command

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_snakemake_runs_the_chain_end_to_end(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["features"]["samples"] = 32
    cfg["recipes"]["digits-baseline"].update(epochs=1, train_subset=256)
    cfg["recipes"]["digits-finetune"].update(epochs=1, train_subset=128)
    cfg["seeds"] = [0, 1]
    # A feature-map method, FP-FMC's three rules, a weights-only method and a native plan form.
    cfg["methods"] = ["hrank", "fpfmc", "l1", "cdp"]
    plans = cfg["models"]["resnet20"]["plans"]
    cfg["models"]["resnet20"]["plans"] = {"rates30": plans["rates30"], "cdp-sparsity40": plans["cdp-sparsity40"]}
    # The equal-cost comparison at one target: eq50 for every method, native50 for CDP.
    cfg["models"]["resnet20"]["compare"] = {"targets": [0.5], "seeds": [0, 1]}
    cmd = snakemake_command(tmp_path, cfg)
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    acc = json.loads((tmp_path / "results/resnet20/hrank/acc.json").read_text())
    for key in ("top1", "top1_best", "best_epoch", "params", "macs", "macs_thop", "flops", "baseline",
                "params_reduction_pct", "macs_reduction_pct", "method", "plan", "seed", "epochs", "provenance",
                "top1_before_finetune"):
        assert key in acc, key
    assert acc["flops"] == 2 * acc["macs"] and acc["plan"] == "rates30" and acc["seed"] == 0
    assert {"git_commit", "torch", "checkpoint_sha256", "sample_sha256", "config_sha256"} <= set(acc["provenance"])
    assert (tmp_path / "results/resnet20/cdp/cdp-sparsity40/seed1/log.csv").is_file()
    assert (tmp_path / "results/resnet20/fpfmc/kselect.h5").is_file()
    table = (tmp_path / "results/tables/summary.csv").read_text()
    assert "cdp-sparsity40" in table and "fpfmc" in table and "baseline" in table
    compared = pd.read_csv(tmp_path / "results/compare/resnet20/table.csv")
    eq = compared[compared["series"] == "equal widths"]
    assert sorted(eq["method"]) == ["cdp", "fpfmc", "hrank", "l1"] and set(eq["seeds"]) == {2}
    assert eq["macs_m"].nunique() == 1 and abs(eq["macs_red_pct"].iloc[0] - 50) < 5  # one width set for all
    assert compared[compared["series"] == "native"]["method"].tolist() == ["cdp"]
    assert {"before_ft_mean", "before_ft_bn_mean", "top1_std"} <= set(compared.columns)
    assert (tmp_path / "results/resnet20/l1/eq50/seed1/acc.json").is_file()
    for name in ("pareto.png", "jaccard.png", "jaccard.csv", "table.md"):
        assert (tmp_path / "results/compare/resnet20" / name).stat().st_size > 0
    # Nothing left to do: a second run is a no-op.
    again = subprocess.run(cmd + ["-n"], capture_output=True, text=True)
    assert "Nothing to be done" in again.stdout + again.stderr
    # The report: tables and figures with their captions, one self-contained HTML file.
    report = subprocess.run(cmd + ["--report", str(tmp_path / "report.html")], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (tmp_path / "report.html").read_text()
    assert "pareto.png" in html and "jaccard.png" in html and "summary.csv" in html
    assert "Equal-cost comparison" in html and "same per-layer widths" in html
