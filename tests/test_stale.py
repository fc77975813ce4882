"""A finished result always belongs to the current config of everything upstream of it.

Snakemake does not rebuild a missing intermediate file whose consumers look up to date, and a
failed or killed job removes its output. So each rule's params carry the fingerprint of its
whole upstream chain (fmprune.fingerprints): a config change reruns everything downstream of it,
also after the upstream job failed and left nothing behind.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

from fmprune import fingerprints
from fmprune.config import validate

REPO = Path(__file__).resolve().parent.parent


def tiny_config() -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["models"] = {"resnet20": cfg["models"]["resnet20"]}
    cfg["models"]["resnet20"]["plans"] = {"rates30": cfg["models"]["resnet20"]["plans"]["rates30"]}
    cfg["datasets"] = {"digits": cfg["datasets"]["digits"]}
    cfg["methods"] = ["hrank", "l1"]
    cfg["features"]["samples"] = 16
    cfg["evaluation"] = {"bn_images": 32}
    cfg["recipes"]["digits-baseline"].update(epochs=0)
    cfg["recipes"]["digits-finetune"].update(epochs=0)
    return cfg


def test_fingerprints_follow_the_upstream_chain():
    base = validate(tiny_config())
    points = [("hrank", "rates30"), ("l1", "rates30")]

    def chain(cfg):
        return {(m, p): (fingerprints.scores(cfg, "resnet20", m), fingerprints.plan(cfg, "resnet20", m, p),
                         fingerprints.pruned(cfg, "resnet20", m, p), fingerprints.run(cfg, "resnet20", m, p))
                for m, p in points}

    before = chain(base)
    changed = tiny_config()
    changed["features"]["samples"] = 24
    after = chain(validate(changed))
    # Everything downstream of the extraction changes for a feature-map method, nothing for L1.
    assert all(a != b for a, b in zip(before[("hrank", "rates30")], after[("hrank", "rates30")]))
    assert before[("l1", "rates30")] == after[("l1", "rates30")]

    seeds = tiny_config()
    seeds["models"]["resnet20"]["plans"]["rates30"]["seeds"] = [3, 4]
    recipe = tiny_config()
    recipe["recipes"]["digits-finetune"]["lr"] = 0.02
    for edited, unchanged_steps in ((seeds, 4), (recipe, 3)):
        other = chain(validate(edited))
        for point in points:  # seeds choose runs, not kept channels; a recipe changes only the runs
            assert other[point][:unchanged_steps] == before[point][:unchanged_steps]
    assert chain(validate(recipe))[points[0]][3] != before[points[0]][3]
    baseline = tiny_config()
    baseline["recipes"]["digits-baseline"]["lr"] = 0.05
    assert all(a != b for a, b in zip(before[("l1", "rates30")], chain(validate(baseline))[("l1", "rates30")]))


def _snakemake(workdir: Path, *targets: str, dry: bool = False) -> subprocess.CompletedProcess:
    python = workdir / ".venv" / "bin" / Path(sys.executable).name
    cmd = [str(python), "-m", "snakemake", "--cores", "2", "--configfile", str(workdir / "c.yaml"),
           "-s", str(workdir / "Snakefile"), "--directory", str(workdir), *(["-n"] if dry else []), *targets]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.slow
def test_no_stale_result_after_a_failed_upstream_job(tmp_path):
    # A checkout whose path has a space, with its environment inside it: every job's command
    # must quote the interpreter it names.
    checkout = tmp_path / "a checkout"
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(".git", ".venv", "results", ".snakemake", "tests"))
    (checkout / ".venv").symlink_to(Path(sys.prefix))
    cfg = tiny_config()
    (checkout / "c.yaml").write_text(yaml.safe_dump(cfg))
    targets = ["results/resnet20/hrank/acc.json", "results/resnet20/l1/acc.json"]
    first = _snakemake(checkout, *targets)
    assert first.returncode == 0, first.stderr[-3000:]
    acc = checkout / "results/resnet20/hrank/acc.json"
    old_sample = json.loads(acc.read_text())["provenance"]["sample_sha256"]

    # The extraction of a changed config fails (more samples than the digits' training split).
    cfg["features"]["samples"] = 100_000
    (checkout / "c.yaml").write_text(yaml.safe_dump(cfg))
    failed = _snakemake(checkout, *targets)
    assert failed.returncode != 0
    assert "features.samples = 100000" in (checkout / "results/resnet20/features.log").read_text()
    assert not (checkout / "results/resnet20/features.h5").exists()

    # Run again: not "Nothing to be done". Every job downstream of the extraction is scheduled
    # again (L1 reads no features and stays finished).
    dry = _snakemake(checkout, *targets, dry=True)
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = _job_counts(dry.stdout + dry.stderr)
    assert {k: jobs.get(k) for k in ("extract", "score", "plan", "prune", "finetune", "default_operating_point")} == \
        {"extract": 1, "score": 1, "plan": 1, "prune": 1, "finetune": 1, "default_operating_point": 1}
    assert _snakemake(checkout, *targets).returncode != 0  # the same failure, not a stale success

    # A fixed config rebuilds the chain from a new extraction.
    cfg["features"]["samples"] = 24
    (checkout / "c.yaml").write_text(yaml.safe_dump(cfg))
    fixed = _snakemake(checkout, *targets)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    with h5py.File(checkout / "results/resnet20/features.h5", "r") as h5:
        assert len(h5["sample_indices"]) == 24
        new_sample = h5.attrs["sample_sha256"]
    assert json.loads(acc.read_text())["provenance"]["sample_sha256"] == new_sample != old_sample
    again = _snakemake(checkout, *targets)
    assert "Nothing to be done" in again.stdout + again.stderr


def _job_counts(text: str) -> dict[str, int]:
    """Snakemake's "Job stats" table of a dry run, as rule -> count."""
    counts, in_table = {}, False
    for line in text.splitlines():
        if line.startswith("Job stats"):
            in_table = True
        elif in_table and line.strip().startswith("total"):
            break
        elif in_table and len(line.split()) == 2 and line.split()[1].isdigit():
            counts[line.split()[0]] = int(line.split()[1])
    return counts
