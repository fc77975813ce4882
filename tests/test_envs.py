"""The conda environment file pins exactly what requirements.txt pins."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def test_conda_env_matches_requirements():
    reqs = {l.strip() for l in (REPO / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")}
    env = yaml.safe_load((REPO / "envs/fmprune.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) == reqs
