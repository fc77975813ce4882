"""The paper configs, the paper table, per-plan methods/recipes, and latency figures."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fmprune import config as cfglib
from fmprune import tables
from fmprune.plan import plan_applies

from .conftest import shared_file

REPO = Path(__file__).resolve().parent.parent
PAPER = {"cifar10": REPO / "config" / "paper-cifar10.yaml", "imagenet": REPO / "config" / "paper-imagenet.yaml",
         "duts": REPO / "config" / "paper-duts.yaml"}


def absolute(cfg: dict) -> dict:
    """The paper config with its repo-relative paths made absolute (tests run in a tmp folder)."""
    for ds in cfg["datasets"].values():
        if ds.get("archive"):
            shared_file("data", "cifar10-imagefolder.tar.gz")
            ds["archive"] = str((REPO / ds["archive"]).resolve())
    for m in cfg["models"].values():
        ckpt = m.get("checkpoint")
        if ckpt and ckpt["path"].startswith(".."):
            shared_file("weights", Path(ckpt["path"]).name)
            ckpt["path"] = str((REPO / ckpt["path"]).resolve())
    return cfg


def paper_cfg(name: str) -> dict:
    return absolute(yaml.safe_load(PAPER[name].read_text()))


def published(dataset: str) -> int:
    return len([r for _, r in tables.read_paper(tables.PAPER_RESULTS).iterrows() if r["dataset"] == dataset])


@pytest.mark.parametrize("name", ["cifar10", "imagenet", "duts"])
def test_paper_config_has_one_plan_per_published_row(name):
    cfg = cfglib.validate(paper_cfg(name), strict=False)
    plans = sum(len(m["plans"]) for m in cfg["models"].values())
    baselines = sum(1 for _, r in tables.read_paper(tables.PAPER_RESULTS).iterrows()
                    if r["dataset"] == name and r["method"] == "baseline")
    assert plans + baselines == published(name)
    for model in cfg["models"].values():  # each plan: its seed's method and its own recipe
        for plan in model["plans"].values():
            assert len(plan["methods"]) == 1 and plan["recipe"] in cfg["recipes"]


def test_missing_dataset_root_warns_at_parse_and_fails_validate(caplog):
    cfg = paper_cfg("imagenet")
    with caplog.at_level("WARNING", logger="fmprune"):
        cfglib.validate(cfg, strict=False)
    assert "datasets.imagenet.root" in caplog.text
    with pytest.raises(cfglib.ConfigError, match="datasets.imagenet.root"):
        cfglib.validate(cfg)


def dry_run(tmp_path, cfg: dict, *targets: str) -> subprocess.CompletedProcess:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "-n", *targets, "-s", str(REPO / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(tmp_path / "c.yaml")]
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.parametrize("name", ["cifar10", "imagenet", "duts"])
def test_snakemake_dry_run_lists_every_published_run(tmp_path, name):
    cfg = paper_cfg(name)
    result = dry_run(tmp_path, cfg)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    runs = sum(len(m["plans"]) for m in cfg["models"].values()) * len(cfg["seeds"])
    assert re.search(rf"^finetune\s+{runs}$", out, re.M), out[-2000:]
    # `methods:` restricts a plan: the CFDP row's plan runs CFDP only (run_targets, the summary's inputs)
    if name == "cifar10":
        assert "results/resnet56/cfdp/cfdp-r018/seed0/acc.json" in out
        assert "results/resnet56/dct/cfdp-r018/" not in out and "results/resnet56/hrank/" not in out
    else:
        assert f"datasets.{name}.root" in out  # one warning line, no error


def test_plan_methods_and_recipe_are_checked():
    assert plan_applies("cfdp", {"rates": "[0.1]*12", "methods": ["cfdp"]})
    assert not plan_applies("dct", {"rates": "[0.1]*12", "methods": ["cfdp"]})
    assert not plan_applies("rgd", {"threshold": 0.7, "methods": ["cdp"]})
    cfg = paper_cfg("cifar10")
    cfg["models"]["resnet20"]["plans"]["cdp-20.76M"]["methods"] = ["hrank"]
    with pytest.raises(cfglib.ConfigError, match=r"models.resnet20.plans.cdp-20.76M.methods: 'hrank'"):
        cfglib.validate(cfg, strict=False)
    cfg = paper_cfg("cifar10")
    cfg["models"]["resnet20"]["plans"]["cdp-20.76M"]["recipe"] = "nope"
    with pytest.raises(cfglib.ConfigError, match=r"plans.cdp-20.76M.recipe: no recipe named 'nope'"):
        cfglib.validate(cfg, strict=False)
    cfg = cfglib.validate(paper_cfg("cifar10"), strict=False)
    assert cfglib.finetune_recipe(cfg, "vgg16_bn", "dct-r05-095") == "dct-vgg"


def small_cifar_cfg() -> dict:
    cfg = paper_cfg("cifar10")
    cfg["models"] = {k: cfg["models"][k] for k in ("resnet56",)}
    cfg["table_name"] = "t"
    return cfglib.validate(cfg, strict=False)


def test_paper_table_with_nothing_run_then_with_results(tmp_path):
    cfg = small_cifar_cfg()
    df = tables.paper_table(cfg, tables.PAPER_RESULTS, tmp_path)
    assert len(df) == 11  # HRankPlus baseline + 10 published ResNet-56 rows
    assert set(df["status"]) == {"not run"}
    rates = df[df["paper_plan"].str.startswith("[")]
    assert len(rates) == 5 and rates["params_m"].map(lambda v: isinstance(v, float) and v > 0).all()
    row = df[df["plan"] == "cfdp-r018"].iloc[0]
    assert row["macs_convention"] == "macs_seeds" and row["macs_m"] == pytest.approx(89.90, abs=0.01)
    base = df[df["method"] == "baseline"].iloc[0]
    assert base["macs_m"] == pytest.approx(125.49, abs=0.01) and base["macs_convention"] == "macs"
    assert (df[df["method"].isin(["rgd", "cdp"])]["params_m"] == tables.NEEDS_RUN).all()
    # some results: a seed of one run, a plan.json of a threshold row, a failed job's log
    run = tmp_path / "resnet56" / "cfdp" / "cfdp-r018"
    (run / "seed0").mkdir(parents=True)
    (run / "seed0" / "acc.json").write_text(json.dumps({"top1": 93.0, "top1_best": 93.5, "top5": 99.0,
                                                        "latency_ms_b1": 2.0, "throughput_ips": 900.0,
                                                        "runtimes": {"onnxruntime": {"latency_ms_b1": 1.0,
                                                                                     "throughput_ips": 1800.0}}}))
    rgd = tmp_path / "resnet56" / "rgd" / "rgd-t0.75"
    rgd.mkdir(parents=True)
    from fmprune.models import build

    spec = build("resnet56").channel_spec()
    kept = {g: list(range(s.channels // 2)) for g, s in spec.groups.items() if s.prunable}
    (rgd / "plan.json").write_text(json.dumps({"kept": kept}))
    (rgd / "plan.log").write_text("fmprune: error: something broke\n")
    df = tables.paper_table(cfg, tables.PAPER_RESULTS, tmp_path).set_index("plan")
    assert df.loc["cfdp-r018", "status"] == "partial 1/3" and df.loc["cfdp-r018", "top1_best"] == 93.5
    assert df.loc["cfdp-r018", "d_top1"] == pytest.approx(93.5 - 93.97)
    assert df.loc["cfdp-r018", "throughput_ips_onnxruntime"] == 1800.0  # each runtime timed: its columns
    assert df.loc["rgd-t0.75", "status"].startswith("failed") and "plan.log" in df.loc["rgd-t0.75", "status"]
    assert isinstance(df.loc["rgd-t0.75", "params_red_pct"], float)
    tables.write_paper(df.reset_index(), tmp_path / "p.csv", tmp_path / "p.md")
    md = (tmp_path / "p.md").read_text()
    assert "| HRankPlus" in md and "nan" not in md and "throughput_ips_onnxruntime" in md
    assert "throughput_ips_compile" not in md  # no row has it


def test_paper_table_rule_runs_without_training_and_reruns_on_change(tmp_path):
    cfg = paper_cfg("cifar10")
    cfg["models"] = {"resnet56": cfg["models"]["resnet56"]}
    cfg["table_name"] = "t"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "results/tables/paper-t.md", "-s", str(REPO / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(tmp_path / "c.yaml")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not run" in (tmp_path / "results/tables/paper-t.md").read_text()
    again = subprocess.run(cmd[:3] + ["-n"] + cmd[3:], capture_output=True, text=True, env=env)
    assert "Nothing to be done" in again.stdout + again.stderr
    log = tmp_path / "results/resnet56/cdp/cdp-60.02M/plan.log"
    log.parent.mkdir(parents=True)
    log.write_text("Traceback (most recent call last):\n")
    changed = subprocess.run(cmd[:3] + ["-n"] + cmd[3:], capture_output=True, text=True, env=env)
    assert "paper_table" in changed.stdout + changed.stderr


def test_latency_keys_in_evaluation_and_summary(tmp_path):
    from fmprune.latency import measure
    from fmprune.models import build
    from fmprune.pipeline import evaluate_model
    from fmprune.surgery import save_pruned

    net = build("resnet20")
    speed = measure(net, 32, "cpu", iters=3, warmup=1, batch=8, batch_iters=1)
    assert speed["latency_ms_b1"] > 0 and speed["throughput_ips"] > 0 and speed["throughput_batch"] == 8
    cfg = cfglib.validate(yaml.safe_load((REPO / "config.yaml").read_text()))
    save_pruned(tmp_path / "m.pt", net, "resnet20", 10)
    report = evaluate_model(cfg, "resnet20", tmp_path / "m.pt", tmp_path / "acc.json")
    assert report["latency_ms_b1"] > 0 and report["throughput_ips"] > 0
    df = tables.summary([], [tmp_path / "acc.json"])
    assert df["latency_ms_b1"].iloc[0] > 0 and df["throughput_ips"].iloc[0] > 0
