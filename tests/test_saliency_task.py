"""The saliency task: its loss, the saliency data kinds, evaluation through the task layer,
the config checks, the comparison and the paper table of U²-Net-P."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from fmprune import FmpruneError, tables
from fmprune import config as cfglib
from fmprune.compare import compare
from fmprune.data import Normalization, SaliencySplit, _MemoryPairs, load
from fmprune.features import FeatureFile, extract
from fmprune.saliency import SaliencyMetrics
from fmprune.tasks import CLASSIFICATION, SALIENCY, of_dataset

REPO = Path(__file__).resolve().parent.parent
IDENTITY = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_the_dataset_kind_decides_the_task():
    assert of_dataset({"kind": "synthetic-saliency"}) is SALIENCY and of_dataset({"kind": "saliency"}) is SALIENCY
    assert all(of_dataset({"kind": k}) is CLASSIFICATION for k in ("digits", "cifar10", "imagefolder"))


def test_saliency_loss_is_the_sum_of_the_bce_terms_by_hand():
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    fused = torch.tensor([0.8, 0.3]).view(1, 1, 1, 2)
    side = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2)
    by_hand = -(math.log(0.8) + math.log(0.7)) / 2 - (math.log(0.5) + math.log(0.5)) / 2
    assert SALIENCY.loss((fused, side), target).item() == pytest.approx(by_hand, rel=1e-6)
    two = torch.cat([target, target])
    outputs = (torch.cat([fused, fused]), torch.cat([side, side]))
    assert SALIENCY.loss(outputs, two, reduction="sum").item() == pytest.approx(2 * by_hand, rel=1e-6)
    # the training figure: the fused map's MAE per image, summed
    assert SALIENCY.train_sum(outputs, two).item() == pytest.approx(2 * (0.2 + 0.3) / 2)


def test_classification_loss_is_cross_entropy():
    logits, y = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    expected = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, y)
    assert torch.equal(CLASSIFICATION.loss(logits, y, label_smoothing=0.1), expected)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _duts(root: Path, sizes=((40, 30), (24, 36))) -> Path:
    """A DUTS-style tree: image i (.jpg) and mask i (.png) of size sizes[i], in both splits."""
    rng = np.random.default_rng(0)
    for split in ("TR", "TE"):
        for i, (w, h) in enumerate(sizes):
            _save(root / f"DUTS-{split}/DUTS-{split}-Image/img{i}.jpg", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4 : h // 2, w // 4 : w // 2] = 255
            _save(root / f"DUTS-{split}/DUTS-{split}-Mask/img{i}.png", mask)
    return root


def _folder_cfg(root: Path, **extra) -> dict:
    return {"kind": "saliency", "root": str(root), "resolution": 32, "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3},
            **extra}


def test_duts_pairs_by_stem_and_preprocessing_shapes(tmp_path):
    data = load("duts", _folder_cfg(_duts(tmp_path), crop=24))
    assert data.task is SALIENCY and data.num_classes == 1 and len(data.train) == len(data.test) == 2
    assert data.train.crop == 24 and data.test.mask(0).shape == (30, 40) and data.test.mask(1).shape == (36, 24)
    gen = torch.Generator().manual_seed(0)
    x, y = next(data.train.batches([0, 1], 2, data.norm, augment=True, generator=gen))
    assert x.shape == (2, 3, 24, 24) and y.shape == (2, 1, 24, 24) and 0 <= y.min() and y.max() <= 1
    x, y = next(data.test.batches([1], 4, data.norm))
    assert x.shape == (1, 3, 32, 32) and y.shape == (1, 1, 32, 32) and y.max() == 1
    # the default crop: U²-Net's 288 of 320
    assert load("duts", _folder_cfg(tmp_path)).train.crop == round(0.9 * 32)


@pytest.mark.parametrize("damage, named", [
    ("missing_mask", "DUTS-TR-Image/img1.jpg"),
    ("orphan_mask", "DUTS-TR-Mask/extra.png"),
    ("unreadable", "DUTS-TR-Image/img0.jpg"),
    ("size", "DUTS-TR-Mask/img1.png"),
    ("no_folder", "DUTS-TE-Mask"),
])
def test_bad_pairs_are_one_line_naming_the_file(tmp_path, damage, named):
    root = _duts(tmp_path)
    if damage == "missing_mask":
        (root / "DUTS-TR/DUTS-TR-Mask/img1.png").unlink()
    elif damage == "orphan_mask":
        _save(root / "DUTS-TR/DUTS-TR-Mask/extra.png", np.zeros((8, 8), np.uint8))
    elif damage == "unreadable":
        (root / "DUTS-TR/DUTS-TR-Image/img0.jpg").write_bytes(b"not an image")
    elif damage == "size":
        _save(root / "DUTS-TR/DUTS-TR-Mask/img1.png", np.zeros((10, 10), np.uint8))
    else:
        for f in (root / "DUTS-TE/DUTS-TE-Mask").iterdir():
            f.unlink()
        (root / "DUTS-TE/DUTS-TE-Mask").rmdir()
    with pytest.raises(FmpruneError) as exc:
        load("duts", _folder_cfg(root))
    assert named in str(exc.value) and "\n" not in str(exc.value)


def test_synthetic_saliency_kind_splits_the_generated_pairs():
    cfg = {"kind": "synthetic-saliency", "count": 20, "size": 32, "seed": 1, "test_fraction": 0.25, "split_seed": 0,
           "resolution": 32, "crop": 28, "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    data = load("synthetic", cfg)
    assert (len(data.train), len(data.test)) == (15, 5) and data.task is SALIENCY
    assert set(np.unique(data.test.mask(0))) <= {0, 255}


class _MaskEcho(torch.nn.Module):
    """Predicts the mask the image encodes (first channel), with a second, side map."""

    def forward(self, x):
        fused = torch.sigmoid(20 * (x[:, :1] - 0.5))
        return fused, torch.full_like(fused, 0.5)


def _encoded_split(resolution: int) -> SaliencySplit:
    masks = np.zeros((6, 32, 32), np.uint8)
    for i in range(6):
        masks[i, 4 + i : 20 + i, 8:24] = 255
    images = np.repeat(masks[:, None], 3, axis=1)
    images[:, 1:] = 128  # the other channels: no information
    return SaliencySplit(_MemoryPairs(images, masks), resolution, resolution)


@pytest.mark.parametrize("resolution", [32, 16])
def test_evaluation_through_the_task_layer(resolution):
    """A model that predicts the mask scores maxF ≈ 1 and MAE ≈ 0, also when its predictions
    are made at another resolution and resized back to the masks' size."""
    split = _encoded_split(resolution)
    result = SALIENCY.evaluate(_MaskEcho(), split, IDENTITY, torch.device("cpu"), batch_size=4)
    assert result["images"] == 6 and set(SALIENCY.metrics) <= set(result)
    assert result["maxf"] > 0.95 and result["mae"] < 0.05 and result["sm"] > 0.9
    if resolution == 32:  # no resize: the exact figures of the normalised predictions
        metrics = SaliencyMetrics()
        for i in range(6):
            x, _ = next(split.batches([i], 1, IDENTITY))
            pred = _MaskEcho()(x)[0][0, 0].numpy().astype(np.float64)
            metrics.update((pred - pred.min()) / (pred.max() - pred.min()), split.mask(i) > 128)
        assert result["maxf"] == pytest.approx(metrics.results()["maxf"], abs=1e-6)
        assert result["mae"] == pytest.approx(metrics.results()["mae"], abs=1e-6)


SHARDED_EVALUATION = """
import json, sys, torch
import fmprune.train as train
from fmprune.data import load
from fmprune.models import build
from fmprune.tasks import SALIENCY

torch.set_num_threads(1)
device = train.setup_distributed("cpu")
rank, world = train.world()
cfg = {"kind": "synthetic-saliency", "count": 28, "size": 32, "seed": 2, "test_fraction": 0.25, "split_seed": 0,
       "resolution": 32, "crop": 28, "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}
data = load("synthetic", cfg)
torch.manual_seed(0)
model = build("u2netp")
result = SALIENCY.evaluate(model, data.test, data.norm, device, batch_size=2, distributed=world > 1)
with open(f"{sys.argv[1]}/world{world}-rank{rank}.json", "w") as f:
    json.dump(result, f)
train.teardown_distributed()
"""


def test_sharded_evaluation_under_torchrun_equals_one_process(tmp_path):
    """Two gloo processes each evaluate their shard of the 7 test pairs (4 + 3) and gather the
    per-image figures: both ranks report exactly what one process reports for all 7."""
    script = tmp_path / "evaluate.py"
    script.write_text(SHARDED_EVALUATION)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for command in ([sys.executable, str(script), str(tmp_path)],
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     str(script), str(tmp_path)]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    one, *two = (json.loads((tmp_path / name).read_text())
                 for name in ("world1-rank0.json", "world2-rank0.json", "world2-rank1.json"))
    assert one["images"] == 7 and two[0] == two[1] == one


def test_extraction_of_a_saliency_sample_stores_no_labels(tmp_path):
    split = _encoded_split(32)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    indices = np.array([0, 2, 4])
    extract(net, split.batches(indices, 2, IDENTITY), indices, {"1": "act"}, tmp_path / "f.h5", {"arch": "x"})
    with FeatureFile(tmp_path / "f.h5") as ff:
        assert ff.n_images == 3
        with pytest.raises(FmpruneError, match="no readable sample labels"):
            ff.labels


def _demo_cfg() -> dict:
    return yaml.safe_load((REPO / "config/saliency-demo.yaml").read_text())


def test_config_refuses_class_documents_and_a_crop_beyond_the_resolution():
    cfg = _demo_cfg()
    cfg["method_params"]["cdp"] = {"documents": "class"}
    with pytest.raises(cfglib.ConfigError, match=r"method_params\.cdp\.documents: .*u2netp is a saliency model"):
        cfglib.validate(cfg)
    cfg = _demo_cfg()
    cfg["method_params"]["cdp"] = {"documents": "image"}
    cfglib.validate(cfg)
    cfg["datasets"]["synthetic"]["crop"] = cfg["datasets"]["synthetic"]["resolution"] + 1
    with pytest.raises(cfglib.ConfigError, match=r"datasets\.synthetic\.crop"):
        cfglib.validate(cfg)


def test_the_jobs_json_config_keeps_small_floats(tmp_path):
    """json.dumps writes 1e-08, which a YAML 1.1 reader takes for a string."""
    cfg = cfglib.validate(_demo_cfg())
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert cfglib.load([tmp_path / "c.json"])["recipes"]["saliency-finetune"]["eps"] == 1e-8


def test_adam_recipe_builds_adam():
    from fmprune.train import _optimizer

    cfg = cfglib.validate(_demo_cfg())
    opt = _optimizer(torch.nn.Linear(2, 2), cfg["recipes"]["saliency-baseline"])
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["eps"] == 1e-8 and opt.defaults["weight_decay"] == 0
    assert isinstance(_optimizer(torch.nn.Linear(2, 2), {"lr": 0.1, "momentum": 0.9, "weight_decay": 0,
                                                        "nesterov": False}), torch.optim.SGD)


def _write(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def test_comparison_of_a_saliency_model_is_on_maxf(tmp_path):
    base = _write(tmp_path / "baseline/acc.json", {"model": "u2netp", "arch": "u2netp", "task": "saliency",
                                                   "maxf": 0.85, "mae": 0.05, "params": 1_131_181, "macs": 100})
    acc, plans = [], []
    for method, maxfs in (("l1", (0.80, 0.82)), ("dct", (0.84, 0.84))):
        plans.append(_write(tmp_path / method / "eq50/plan.json", {"model": "u2netp", "plan": "eq50", "method": method,
                                                                   "definition": {"target_reduction": 0.5},
                                                                   "kept": {"g": [0]}}))
        for seed, maxf in enumerate(maxfs):
            acc.append(_write(tmp_path / method / f"eq50/seed{seed}/acc.json", {
                "model": "u2netp", "arch": "u2netp", "task": "saliency", "method": method, "plan": "eq50",
                "plan_definition": {"target_reduction": 0.5}, "seed": seed, "maxf": maxf, "maxf_best": maxf,
                "mae": 0.1, "maxf_before_finetune": 0.3, "params": 500_000, "macs": 50}))
    table = compare(acc, plans, base, tmp_path / "out")
    assert list(table["method"]) == ["baseline", "dct", "l1"] and "top1_mean" not in table
    assert table.iloc[0]["maxf_mean"] == 0.85 and table.iloc[2]["maxf_mean"] == 0.81
    assert table.iloc[1]["before_ft_mean"] == 0.3 and table.iloc[0]["mae_mean"] == 0.05
    assert "0.810 ± 0.014" in (tmp_path / "out/table.md").read_text()
    assert (tmp_path / "out/pareto.png").stat().st_size > 0


def test_summary_of_saliency_runs(tmp_path):
    base = _write(tmp_path / "b.json", {"model": "u2netp", "maxf": 0.8512, "mae": 0.0543, "params": 10, "macs": 20,
                                        "macs_thop": 21})
    run = _write(tmp_path / "a.json", {"model": "u2netp", "method": "l1", "plan": "p", "epochs": 1, "maxf": 0.7,
                                       "maxf_best": 0.71, "maxf_before_finetune": 0.2, "mae": 0.1,
                                       "params": 5, "params_reduction_pct": 50.0, "macs": 10,
                                       "macs_reduction_pct": 50.0, "macs_thop": 11})
    df = tables.summary([run], [base])
    assert "top1" not in df and df.iloc[0]["maxf"] == 0.851 and df.iloc[1]["maxf_before_finetune"] == 0.2


def test_paper_table_puts_dct_u2net_beside_the_u2net_papers_row(tmp_path):
    cfg = cfglib.validate(yaml.safe_load((REPO / "config/paper-duts.yaml").read_text()), strict=False)
    df = tables.paper_table(cfg, tables.PAPER_RESULTS, tmp_path).set_index("method")
    assert set(df.index) == {"baseline", "dct"} and "paper_top1" not in df
    base, dct = df.loc["baseline"], df.loc["dct"]
    assert (base["paper_maxf"], base["paper_mae"], base["paper_sm"]) == (0.852, 0.054, 0.847)
    assert base["params_m"] == 1.131 and dct["plan"] == "dct-040" and dct["status"] == "not run"
    assert pd.isna(dct["paper_maxf"])
    tables.write_paper(tables.paper_table(cfg, tables.PAPER_RESULTS, tmp_path), tmp_path / "p.csv", tmp_path / "p.md")
    assert "paper_maxf" in (tmp_path / "p.md").read_text()
