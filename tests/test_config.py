"""Bad input: one line naming the problem, from the CLI and from Snakemake's parse."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def base_config(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    return cfg


def run_validate(tmp_path, cfg):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "fmprune.cli", "validate", "--config", str(path)],
                          capture_output=True, text=True)


def test_the_default_config_is_valid(tmp_path):
    assert run_validate(tmp_path, base_config(tmp_path)).returncode == 0


@pytest.mark.parametrize("mutate,expected", [
    (lambda c: c["models"]["resnet20"].update(checkpoint={"path": "/nonexistent/r.th"}), "models.resnet20.checkpoint.path"),
    (lambda c: c["datasets"].update(folder={"kind": "imagefolder", "root": "/nonexistent/data"})
     or c["models"]["resnet20"].update(dataset="folder"), "datasets.folder.root"),
    (lambda c: c.update(methods=["hrank", "magic"]), "unknown method 'magic'"),
    (lambda c: c["models"]["resnet20"].update(arch="resnet99"), "unknown architecture 'resnet99'"),
    (lambda c: c["recipes"]["digits-finetune"].update(epochs="three"), "recipes.digits-finetune.epochs"),
    (lambda c: c["models"]["resnet20"]["plans"].update(bad={"rates": "[0.1]*3"}), "models.resnet20.plans.bad.rates"),
    (lambda c: c["models"]["resnet20"]["plans"].update(big={"target_macs": 10**9}),
     "models.resnet20.plans.big.target_macs: 1,000,000,000 is not below the baseline's 40,551,040 MACs (resnet20)"),
    (lambda c: c.update(colour="blue"), "colour"),
])
def test_bad_config_is_one_line(tmp_path, mutate, expected):
    cfg = base_config(tmp_path)
    mutate(cfg)
    result = run_validate(tmp_path, cfg)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_snakemake_rejects_a_bad_config_at_parse_time(tmp_path):
    cfg = base_config(tmp_path)
    cfg["methods"] = ["nonsense"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path), "--directory", str(tmp_path),
                             "-s", str(REPO / "Snakefile")], capture_output=True, text=True)
    assert result.returncode != 0
    assert "unknown method 'nonsense'" in result.stdout + result.stderr
