"""The design card's command on the default config, and targets the config does not have."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_design_card_target_is_planned_from_the_default_config_without_side_effects(tmp_path):
    dry = _snakemake(tmp_path, "--cores", "8", "-n", "results/resnet56/cfdp/acc.json",
                     "--configfile", str(REPO / "config.yaml"))
    assert dry.returncode == 0, dry.stderr[-2000:]
    for rule in ("baseline", "extract", "score", "plan", "prune", "finetune", "default_operating_point"):
        assert rule in dry.stdout
    assert not (tmp_path / "results").exists()  # a dry run writes nothing, downloads nothing
    everything = _snakemake(tmp_path, "--cores", "2", "-n", "--configfile", str(REPO / "config.yaml"))
    assert everything.returncode == 0, everything.stderr[-2000:]
    assert "resnet56" not in everything.stdout  # on_request: make demo never fetches it


@pytest.mark.parametrize("target, message", [
    ("results/resnet32/cfdp/acc.json", "no model named 'resnet32' in the config (it has resnet20, resnet56)"),
    ("results/resnet56/chip/acc.json", "'chip' is not a method of model resnet56 (it has hrank, cfdp,"),
    ("results/resnet56/cfdp/seeds050/seed0/acc.json", "model resnet56 has no plan named 'seeds050' (it has seeds018, macs89M)"),
    ("results/compare/resnet20/table.md", "model resnet20 has no compare block"),
])
def test_a_target_the_config_lacks_is_one_line(tmp_path, target, message):
    result = _snakemake(tmp_path, "--cores", "1", target, "--configfile", str(REPO / "config.yaml"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("fmprune: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "MissingRuleException" not in result.stderr


@pytest.mark.slow
def test_design_card_command_runs_on_the_shared_data(tmp_path, cifar_root, resnet56_checkpoint):
    """`snakemake --cores N results/resnet56/cfdp/acc.json` end to end, the shared archive and
    checkpoint standing in for the downloads, fine-tuning shortened to one pass over 256 images."""
    overlay = yaml.safe_load((REPO / "config" / "shared-cifar10.yaml").read_text())
    overlay["datasets"]["cifar10"]["root"] = str(cifar_root)
    overlay["datasets"]["cifar10"]["test_flagged_only"] = True  # the 1,000 exact test images
    overlay["models"]["resnet56"]["checkpoint"]["path"] = str(resnet56_checkpoint)
    overlay["features"] = {"samples": 128}
    overlay["evaluation"] = {"bn_images": 256}
    overlay["recipes"] = {"cifar-finetune": {"epochs": 1, "train_subset": 256, "lr": 0.01}}
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    run = _snakemake(tmp_path, "--cores", "2", "results/resnet56/cfdp/acc.json",
                     "--configfile", str(REPO / "config.yaml"), str(tmp_path / "overlay.yaml"))
    assert run.returncode == 0, run.stderr[-3000:]
    acc = json.loads((tmp_path / "results/resnet56/cfdp/acc.json").read_text())
    assert acc["plan"] == "seeds018" and acc["macs"] == 89_017_984
    assert acc["baseline"]["top1"] > 90.0  # the pretrained checkpoint on the exact test images
    assert acc["provenance"]["checkpoint_sha256"].startswith("4bfd9763")


def test_config_paths_expand_the_cache_variable(monkeypatch, tmp_path):
    from fmprune.io import user_path

    monkeypatch.setenv("FMPRUNE_CACHE", str(tmp_path / "cache"))
    assert user_path("$FMPRUNE_CACHE/cifar10") == tmp_path / "cache" / "cifar10"
    assert user_path("${FMPRUNE_CACHE}/weights/x.th") == tmp_path / "cache" / "weights" / "x.th"
    monkeypatch.delenv("FMPRUNE_CACHE")
    assert user_path("$FMPRUNE_CACHE/cifar10") == Path.home() / ".cache" / "fmprune" / "cifar10"  # also when unset
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    assert user_path("$DATA_ROOT/imagenet") == tmp_path / "imagenet"
    for config in (REPO / "config").glob("*.yaml"):  # no config bypasses FMPRUNE_CACHE
        values = [line for line in config.read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not any("~/.cache/fmprune" in line for line in values), config.name
