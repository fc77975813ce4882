"""Bad input of every kind ends as one line, ``fmprune: error: …``, with exit status 2.

Each case runs one CLI step (in-process through ``cli.main``; a few in a subprocess, as
Snakemake runs them) on a malformed config, rate list, checkpoint, image folder or archive,
feature file, scores file, plan or report, and checks: status 2, exactly one error line naming
the problem, no traceback, and the step's output (a finished result of an earlier run) neither
changed nor lost, with no temporary file left beside it. The leftovers of killed writers and
unpacks are removed by the next run of the same job, never those of a live one.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fmprune import cli
from fmprune import config as cfglib
from fmprune import pipeline
from fmprune.io import atomic_write_text, writer_tag
from fmprune.models import build
from fmprune.surgery import save_pruned

REPO = Path(__file__).resolve().parent.parent
MODEL = "resnet20"
FINISHED = b"a finished result of an earlier run\n"


def base_config() -> dict:
    """The default config, made small: few samples, three cheap methods, one plan, on the CPU."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    model = cfg["models"][MODEL]
    model["plans"] = {"rates30": model["plans"]["rates30"]}
    model["default_plan"] = "rates30"
    for key in [k for k in model if k not in ("arch", "dataset", "plans", "default_plan", "baseline_recipe",
                                               "finetune_recipe")]:
        del model[key]
    cfg["models"] = {MODEL: model}
    cfg.update(methods=["hrank", "l1", "random"], method_params={}, device="cpu")
    cfg["features"].update(samples=8, batch_size=8)
    return cfg


def write_config(path: Path, cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Good inputs built once: config, baseline model file, features.h5, scores and plan."""
    root = tmp_path_factory.mktemp("bad_input")
    config = write_config(root / "config.yaml", base_config())
    cfg = cfglib.load([config])
    torch.manual_seed(0)
    baseline = root / "baseline.pt"
    save_pruned(baseline, build(MODEL, 10), MODEL, 10)
    features = root / "features.h5"
    pipeline.extract_features(cfg, MODEL, baseline, features)
    scores = root / "scores.npz"
    pipeline.score(cfg, MODEL, "l1", baseline, None, scores)
    plan = root / "plan.json"
    pipeline.make_plan(cfg, MODEL, "rates30", scores, plan)
    report = root / "report.json"
    report.write_text(json.dumps({"top1": 10.0, "top5": 50.0, "params": 1, "macs": 1, "macs_thop": 1, "flops": 2}))
    return SimpleNamespace(root=root, config=config, cfg=cfg, baseline=baseline, features=features, scores=scores,
                           plan=plan, report=report)


def expect_error(capsys, argv, out: Path, *expected: str) -> str:
    """Run ``fmprune argv`` in-process over a finished ``out``: status 2, one error line holding
    every ``expected``, no traceback, ``out`` unchanged and no temporary file beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(FINISHED)
    status = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fmprune: error:")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]
    assert out.read_bytes() == FINISHED
    assert not [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    return lines[0]


def expect_error_in_subprocess(argv, out: Path, *expected: str) -> str:
    """As :func:`expect_error`, in a fresh interpreter: the exit status the shell (Snakemake) sees."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(FINISHED)
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    result = subprocess.run([sys.executable, "-m", "fmprune.cli", *map(str, argv)], capture_output=True, text=True,
                            env=env, cwd=out.parent)
    lines = [line for line in result.stderr.splitlines() if line.startswith("fmprune: error:")]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert out.read_bytes() == FINISHED
    return lines[0]


# --- config --------------------------------------------------------------------------------

def _set(path: str, value):
    """A mutation of the base config: set the dotted key ``path`` to ``value``."""
    def mutate(cfg):
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return mutate


CONFIG_CASES = {
    "negative features.seed": (_set("features.seed", -1), "features.seed"),
    "negative seeds": (_set("seeds", [0, -2]), "seeds.1"),
    "negative plan seeds": (_set(f"models.{MODEL}.plans.rates30.seeds", [-3]), f"models.{MODEL}.plans.rates30.seeds"),
    "negative split_seed": (_set("datasets.digits.split_seed", -1), "datasets.digits.split_seed"),
    "negative bn_seed": (_set("evaluation.bn_seed", -5), "evaluation.bn_seed"),
    "random.seed abc": (_set("method_params.random.seed", "abc"), "method_params.random.seed"),
    "negative random.seed": (_set("method_params.random.seed", -1), "method_params.random.seed"),
    "negative fpfmc.seed": (_set("method_params.fpfmc.seed", -2), "method_params.fpfmc.seed"),
    "fpfmc.images 0": (_set("method_params.fpfmc.images", 0), "method_params.fpfmc.images"),
    "dct.band bogus": (_set("method_params.dct.band", "bogus"), "method_params.dct.band"),
    "cfdp.block 0": (_set("method_params.cfdp.block", 0), "method_params.cfdp.block"),
    "cfdp.block 1.5": (_set("method_params.cfdp.block", 1.5), "method_params.cfdp.block"),
    "cfdp.sigma text": (_set("method_params.cfdp.sigma", "wide"), "method_params.cfdp.sigma"),
    "rgd.hash_size 0": (_set("method_params.rgd.hash_size", 0), "method_params.rgd.hash_size"),
    "rgd.threshold 1.5": (_set("method_params.rgd.threshold", 1.5), "method_params.rgd.threshold"),
    "cdp.documents words": (_set("method_params.cdp.documents", "words"), "method_params.cdp.documents"),
    "unknown parameter": (_set("method_params.hrank.tolerance", 1e-3), "unknown parameter 'tolerance'"),
    "unknown method's parameters": (_set("method_params.magic", {}), "unknown method 'magic'"),
    "hrank with float16 taps": (_set("features.dtype", "float16"), "features.dtype"),
    "unknown runtime": (_set("runtimes", ["bogus"]), "runtimes.0"),
    "unknown features.store": (_set("features.store", "everything"), "features.store"),
}


@pytest.mark.parametrize("mutate,expected", CONFIG_CASES.values(), ids=CONFIG_CASES)
def test_bad_config_value(capsys, tmp_path, mutate, expected):
    cfg = base_config()
    mutate(cfg)
    config = write_config(tmp_path / "c.yaml", cfg)
    expect_error(capsys, ["validate", "--config", config], tmp_path / "acc.json", "config error at", expected)


@pytest.mark.parametrize("text,expected", [
    ("- datasets\n- models\n", "found a list"),
    ("42\n", "found the scalar 42"),
    ("datasets: {digits: {kind: digits}\n", "not valid YAML"),
], ids=["top-level list", "top-level scalar", "broken YAML"])
def test_config_file_that_is_not_a_mapping(capsys, tmp_path, text, expected):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    expect_error(capsys, ["validate", "--config", config], tmp_path / "acc.json", str(config), expected)


def test_config_file_that_is_not_text(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"\xff\xfe\x00binary")
    expect_error(capsys, ["validate", "--config", config], tmp_path / "acc.json", str(config))


def test_top_level_list_in_a_subprocess(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("[1, 2]\n")
    expect_error_in_subprocess(["validate", "--config", config], tmp_path / "acc.json", "top level must be a mapping")


# --- rate lists ------------------------------------------------------------------------------

@pytest.mark.parametrize("rates,expected", [
    ("", "empty"),
    ("[0.1]*99999999999999", "expands to more than"),
    ("[0.5]*2", "resnet20 expects 12 entries"),
    ("__import__('os').system('true')", "unexpected"),
    ("[0.]+[1.5]*11", "rates must lie in [0, 1)"),
], ids=["empty", "repeat bomb", "too short", "code", "rate above 1"])
def test_bad_rate_list(capsys, tmp_path, rates, expected):
    expect_error(capsys, ["count", MODEL, "--rates", rates], tmp_path / "acc.json", "rate list", expected)


# --- checkpoints and model files -------------------------------------------------------------

class _Payload:
    """Unpickling this runs ``open(marker, "w")``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _checkpoint_bytes(kind: str, made, tmp_path: Path) -> bytes:
    good = made.baseline.read_bytes()
    buf = io.BytesIO()
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "empty":
        return b""
    if kind == "garbage":
        return b"not a checkpoint at all " * 8
    if kind == "hostile":
        torch.save({"state_dict": _Payload(tmp_path / "pwned")}, buf)
    elif kind == "other arch":
        torch.save({"state_dict": build("resnet32", 10).state_dict()}, buf)
    elif kind == "no state_dict":
        torch.save([torch.zeros(3)], buf)
    return buf.getvalue()


@pytest.mark.parametrize("kind,expected", [
    ("truncated", "truncated or not a PyTorch file"),
    ("empty", "truncated or not a PyTorch file"),
    ("garbage", "truncated or not a PyTorch file"),
    ("hostile", "weights_only=True"),
    ("other arch", "does not fit resnet20"),
    ("no state_dict", "no state_dict"),
])
def test_bad_given_checkpoint(capsys, tmp_path, made, kind, expected):
    checkpoint = tmp_path / "given.th"
    checkpoint.write_bytes(_checkpoint_bytes(kind, made, tmp_path))
    cfg = base_config()
    cfg["models"][MODEL]["checkpoint"] = {"path": str(checkpoint)}
    config = write_config(tmp_path / "c.yaml", cfg)
    expect_error(capsys, ["baseline", "--config", config, "--model", MODEL, "--out", tmp_path / "out" / "baseline.pt",
                          "--workdir", tmp_path / "work"], tmp_path / "out" / "baseline.pt", str(checkpoint), expected)
    assert not (tmp_path / "pwned").exists()


def test_hostile_checkpoint_in_a_subprocess(tmp_path, made):
    checkpoint = tmp_path / "given.th"
    checkpoint.write_bytes(_checkpoint_bytes("hostile", made, tmp_path))
    cfg = base_config()
    cfg["models"][MODEL]["checkpoint"] = {"path": str(checkpoint)}
    config = write_config(tmp_path / "c.yaml", cfg)
    out = tmp_path / "out" / "baseline.pt"
    expect_error_in_subprocess(["baseline", "--config", config, "--model", MODEL, "--out", out, "--workdir",
                                tmp_path / "work"], out, "refused")
    assert not (tmp_path / "pwned").exists()


def _model_file(kind: str, made, path: Path) -> None:
    if kind in ("truncated", "hostile"):
        path.write_bytes(_checkpoint_bytes(kind, made, path.parent))
        return
    payload = torch.load(made.baseline, weights_only=True)
    if kind == "bare state_dict":
        payload = payload["state_dict"]
    elif kind == "unknown arch":
        payload["arch"] = "resnet999"
    elif kind == "kept out of range":
        group = next(iter(payload["kept"]))
        payload["kept"][group] = [0, 10_000]
    elif kind == "wrong weights":
        payload["state_dict"] = build("resnet32", 10).state_dict()
    torch.save(payload, path)


@pytest.mark.parametrize("kind,expected", [
    ("truncated", "truncated or not a PyTorch file"),
    ("hostile", "refused"),
    ("bare state_dict", "not an fmprune model file"),
    ("unknown arch", "unknown architecture"),
    ("kept out of range", "kept indices"),
    ("wrong weights", "inconsistent fmprune model file"),
])
def test_bad_model_file(capsys, tmp_path, made, kind, expected):
    model_file = tmp_path / "model.pt"
    _model_file(kind, made, model_file)
    out = tmp_path / "scores.npz"
    expect_error(capsys, ["score", "--config", made.config, "--model", MODEL, "--method", "l1", "--model-file",
                          model_file, "--out", out], out, str(model_file), expected)


def test_bad_model_file_to_export(capsys, tmp_path, made):
    model_file = tmp_path / "model.pt"
    _model_file("truncated", made, model_file)
    out = tmp_path / "export" / "export.json"
    expect_error(capsys, ["export", "--model-file", model_file, "--out-dir", out.parent], out, str(model_file),
                 "truncated or not a PyTorch file")


# --- image folders and archives ----------------------------------------------------------------

def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 2 * value % 256, 3 * value % 256)).save(path)


def _image_tree(root: Path, kind: str = "good") -> Path:
    """``root/{train,test}/{a,b}/*.png``, spoilt as ``kind`` says."""
    for split in ("train", "test"):
        for i, cls in enumerate(("a", "b")):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            if kind != "no images":
                _png(root / split / cls / "0.png", 40 * i + 1)
                _png(root / split / cls / "1.png", 40 * i + 2)
    bad = root / "train" / "b" / "2.png"
    if kind == "not an image":
        bad.write_text("this is a text file named like an image\n")
    elif kind == "truncated image":  # cut inside its pixel data (a missing end chunk alone decodes)
        noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(noise).save(bad)
        bad.write_bytes(bad.read_bytes()[:1500])
    elif kind == "no class folders":
        for split in ("train", "test"):
            for cls in ("a", "b"):
                for f in (root / split / cls).iterdir():
                    f.unlink()
                (root / split / cls).rmdir()
    return root


def _folder_config(tmp_path: Path, root: Path, **dataset) -> Path:
    cfg = base_config()
    cfg["datasets"]["folder"] = {"kind": "imagefolder", "root": str(root), "workers": 0, **dataset}
    cfg["models"][MODEL]["dataset"] = "folder"
    cfg["features"]["samples"] = 5  # every training image of the tree, the spoilt one included
    return write_config(tmp_path / "c.yaml", cfg)


@pytest.mark.parametrize("kind,in_memory,workers,expected", [
    ("no images", True, 0, "holds no class folders with images"),
    ("no class folders", True, 0, "holds no class folders with images"),
    ("not an image", True, 0, "2.png does not decode"),
    ("truncated image", True, 0, "2.png does not decode"),
    ("not an image", False, 0, "2.png does not decode"),
    ("not an image", False, 1, "2.png does not decode"),  # raised in a DataLoader worker
], ids=["no images", "no class folders", "not an image", "truncated image", "streamed", "streamed by a worker"])
def test_bad_image_folder(capsys, tmp_path, monkeypatch, made, kind, in_memory, workers, expected):
    monkeypatch.setenv("FMPRUNE_CACHE", str(tmp_path / "cache"))
    root = _image_tree(tmp_path / "images", kind)
    config = _folder_config(tmp_path, root, in_memory=in_memory, workers=workers)
    out = tmp_path / "out" / "features.h5"
    expect_error(capsys, ["extract", "--config", config, "--model", MODEL, "--model-file", made.baseline, "--out", out],
                 out, expected)


def _archive(path: Path, top: str, spoil: str | None) -> Path:
    """A .tar.gz of a good image tree under ``top/``, plus one member as ``spoil`` says."""
    tree = _image_tree(path.parent / "tree" / top)
    with tarfile.open(path, "w:gz") as tar:
        if spoil == "top folder is a link":
            link = tarfile.TarInfo(top)
            link.type, link.linkname = tarfile.SYMTYPE, "."
            tar.addfile(link)
        else:
            tar.add(tree, arcname=top)
        if spoil == "parent path":
            data = b"outside"
            member = tarfile.TarInfo(f"{top}/../../escaped.txt")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        elif spoil in ("absolute link", "link out of the top folder"):
            member = tarfile.TarInfo(f"{top}/train/a/link.png")
            member.type = tarfile.SYMTYPE
            member.linkname = "/etc/hostname" if spoil == "absolute link" else "../../../other.png"
            tar.addfile(member)
    return path


@pytest.mark.parametrize("spoil,expected", [
    ("parent path", "outside the destination"),
    ("absolute link", "link"),
    ("link out of the top folder", "links outside folder/"),
    ("top folder is a link", "is not a folder"),
    ("truncated", "cannot be unpacked"),
    ("not an archive", "cannot be unpacked"),
])
def test_archive_refused_installs_nothing(capsys, tmp_path, monkeypatch, made, spoil, expected):
    monkeypatch.setenv("FMPRUNE_CACHE", str(tmp_path / "cache"))
    archive = _archive(tmp_path / "src" / "data.tar.gz", "folder", spoil)
    if spoil == "truncated":
        archive.write_bytes(archive.read_bytes()[:200])
    elif spoil == "not an archive":
        archive.write_bytes(b"plain text, no tar inside\n" * 20)
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    config = _folder_config(tmp_path, datasets / "folder", archive=str(archive))
    out = tmp_path / "out" / "features.h5"
    expect_error(capsys, ["extract", "--config", config, "--model", MODEL, "--model-file", made.baseline, "--out", out],
                 out, str(archive), expected)
    assert sorted(os.listdir(datasets)) == []  # neither the dataset nor a staging folder
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "src" / "escaped.txt").exists()


# --- feature files ---------------------------------------------------------------------------

def _act_tap(path: Path) -> str:
    with h5py.File(path, "r") as h5:
        return sorted(json.loads(h5.attrs["tap_kinds"]))[0]


def _spoil_features(made, path: Path, kind: str) -> None:
    good = made.features.read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
        return
    if kind == "not HDF5":
        path.write_bytes(b"\x89HDF but not really" * 10)
        return
    path.write_bytes(good)
    tap = _act_tap(path)
    if kind == "corrupt bytes":
        with h5py.File(path, "r") as h5:
            offset = h5["taps"][tap].id.get_chunk_info(0).byte_offset
        with open(path, "r+b") as f:
            f.seek(offset + 16)
            f.write(b"\x7f\x7f\x7f\x7f" * 8)
        return
    with h5py.File(path, "r+") as h5:
        if kind == "other model":
            h5.attrs["model_sha256"] = "0" * 64
        elif kind == "other arch":
            h5.attrs["arch"] = "resnet32"
        elif kind == "NaN":
            h5["taps"][tap][1, 0, 0, 0] = np.nan
        elif kind == "inf":
            h5["taps"][tap][0, 2, 1, 1] = np.inf
        elif kind == "missing tap":
            del h5["taps"][tap]
        elif kind == "no sample":
            del h5["sample_indices"]


@pytest.mark.parametrize("kind,expected", [
    ("truncated", "truncated or not HDF5"),
    ("not HDF5", "truncated or not HDF5"),
    ("corrupt bytes", "unreadable"),
    ("other model", "another model file"),
    ("other arch", "from a resnet32 model, not resnet20"),
    ("NaN", "non-finite"),
    ("inf", "non-finite"),
    ("missing tap", "has no tap"),
    ("no sample", "not a complete extraction"),
])
def test_bad_feature_file(capsys, tmp_path, made, kind, expected):
    features = tmp_path / "features.h5"
    _spoil_features(made, features, kind)
    out = tmp_path / "scores.npz"
    expect_error(capsys, ["score", "--config", made.config, "--model", MODEL, "--method", "hrank", "--model-file",
                          made.baseline, "--features", features, "--out", out], out, str(features), expected)


def test_feature_file_of_another_arch_for_fpfmc(capsys, tmp_path, made):
    features = tmp_path / "features.h5"
    _spoil_features(made, features, "other arch")
    out = tmp_path / "kselect.h5"
    expect_error(capsys, ["fpfmc-kselect", "--config", made.config, "--model", MODEL, "--features", features,
                          "--out", out], out, "from a resnet32 model")


def test_truncated_feature_file_in_a_subprocess(tmp_path, made):
    features = tmp_path / "features.h5"
    _spoil_features(made, features, "truncated")
    out = tmp_path / "scores.npz"
    expect_error_in_subprocess(["score", "--config", made.config, "--model", MODEL, "--method", "hrank",
                                "--model-file", made.baseline, "--features", features, "--out", out], out, "truncated")


def test_non_finite_scores_are_not_written(capsys, tmp_path, made, monkeypatch):
    def nan_scores(method, spec, *args, **kwargs):
        return pipeline.Scored({g: np.full(spec.groups[g].channels, np.nan) for g in spec.prunable_groups()})

    monkeypatch.setattr(pipeline, "score_groups", nan_scores)
    out = tmp_path / "scores.npz"
    expect_error(capsys, ["score", "--config", made.config, "--model", MODEL, "--method", "l1", "--model-file",
                          made.baseline, "--out", out], out, "non-finite scores")


# --- scores, plans and reports -----------------------------------------------------------------

def _spoil_scores(made, path: Path, kind: str) -> None:
    good = made.scores.read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
        return
    with np.load(made.scores) as z:
        arrays = {k: z[k] for k in z.files}
    first = next(k for k in arrays if k.startswith("scores/"))
    if kind == "NaN":
        arrays[first] = arrays[first].copy()
        arrays[first][0] = np.nan
    elif kind == "another model's groups":
        arrays = {"meta": arrays["meta"], "scores/layer9.conv1": np.ones(4)}
    elif kind == "object array":
        arrays[first] = np.array([{"a": 1}], dtype=object)
    elif kind == "no meta":
        del arrays["meta"]
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("kind,expected", [
    ("truncated", "truncated or not a scores file"),
    ("NaN", "non-finite"),
    ("another model's groups", "does not fit resnet20"),
    ("object array", "truncated or not a scores file"),
    ("no meta", "truncated or not a scores file"),
])
def test_bad_scores_file(capsys, tmp_path, made, kind, expected):
    scores = tmp_path / "scores.npz"
    _spoil_scores(made, scores, kind)
    out = tmp_path / "plan.json"
    expect_error(capsys, ["plan", "--config", made.config, "--model", MODEL, "--plan", "rates30", "--scores", scores,
                          "--out", out], out, str(scores), expected)


def _spoil_plan(made, path: Path, kind: str) -> None:
    text = made.plan.read_text()
    plan = json.loads(text)
    if kind == "truncated":
        path.write_text(text[: len(text) // 2])
        return
    if kind == "a list":
        plan = [plan]
    elif kind == "index out of range":
        group = next(iter(plan["kept"]))
        plan["kept"][group] = [0, 1, 999]
    elif kind == "unknown group":
        plan["kept"]["layer9.conv9"] = [0]
    elif kind == "another model":
        plan["model"] = "resnet56"
    path.write_text(json.dumps(plan))


@pytest.mark.parametrize("kind,expected", [
    ("truncated", "truncated or not JSON"),
    ("a list", "is not a plan"),
    ("index out of range", "kept indices"),
    ("unknown group", "unknown groups"),
    ("another model", "a plan of model 'resnet56'"),
])
def test_bad_plan_file(capsys, tmp_path, made, kind, expected):
    plan = tmp_path / "plan.json"
    _spoil_plan(made, plan, kind)
    out = tmp_path / "pruned.pt"
    expect_error(capsys, ["prune", "--config", made.config, "--model", MODEL, "--model-file", made.baseline,
                          "--plan-file", plan, "--out", out, "--report", tmp_path / "pruned.json"],
                 out, str(plan), expected)


@pytest.mark.parametrize("kind", ["truncated", "lacks top1"])
def test_bad_report_fails_before_fine_tuning(capsys, tmp_path, made, kind):
    report = tmp_path / "pruned.json"
    text = made.report.read_text()
    report.write_text(text[:20] if kind == "truncated" else json.dumps({"params": 1}))
    out = tmp_path / "run" / "acc.json"
    expect_error(capsys, ["finetune", "--config", made.config, "--model", MODEL, "--method", "l1", "--plan", "rates30",
                          "--seed", "0", "--pruned", made.baseline, "--pruned-report", report, "--baseline-report",
                          made.report, "--out-dir", out.parent], out, str(report))
    assert sorted(p.name for p in out.parent.iterdir()) == ["acc.json"]  # no epoch was run


def test_truncated_result_in_the_summary_table(capsys, tmp_path, made):
    acc = tmp_path / "acc.json"
    acc.write_text('{"model": "resnet20", "top1": 9')
    out = tmp_path / "summary.csv"
    expect_error(capsys, ["table", "--acc", acc, "--csv", out, "--md", tmp_path / "summary.md"], out, str(acc),
                 "truncated or not JSON")


# --- leftovers of interrupted runs ---------------------------------------------------------------

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_writers_temp_file_is_removed_by_the_next_run(capsys, tmp_path, made):
    out = tmp_path / "plan.json"
    killer = ("import os, signal, sys\nfrom fmprune.io import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half' * 1000)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    result = subprocess.run([sys.executable, "-c", killer, str(out)], env=env)
    assert result.returncode == -9
    left = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".plan.json.") and not out.exists()
    assert cli.main(["plan", "--config", str(made.config), "--model", MODEL, "--plan", "rates30", "--scores",
                     str(made.scores), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["plan"] == "rates30"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_temp_files_of_live_writers_and_other_hosts_are_kept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = writer_tag().rsplit("-", 1)[0]
        live = tmp_path / f".acc.json.{host}-{sleeper.pid}.abcd1234.tmp"
        elsewhere = tmp_path / f".acc.json.{host}x-{_dead_pid()}.abcd1234.tmp"
        dead = tmp_path / f".acc.json.{host}-{_dead_pid()}.abcd1234.tmp"
        other_target = tmp_path / f".acc.json.bak.{host}-{_dead_pid()}.abcd1234.tmp"
        for p in (live, elsewhere, dead, other_target):
            p.write_text("partial")
        atomic_write_text(tmp_path / "acc.json", "{}\n")
        assert live.exists() and elsewhere.exists() and other_target.exists() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_killed_unpacks_staging_folder_is_removed_by_the_next_unpack(tmp_path):
    from fmprune.data import unpack

    archive = _archive(tmp_path / "src" / "data.tar.gz", "folder", None)
    datasets = tmp_path / "datasets"
    host = writer_tag().rsplit("-", 1)[0]
    stale = datasets / f".folder.unpacking-{host}-{_dead_pid()}"
    (stale / "folder" / "train").mkdir(parents=True)
    (stale / "folder" / "train" / "half.png").write_bytes(b"\x89PNG")
    unpack(archive, datasets / "folder")
    assert sorted(os.listdir(datasets)) == ["folder"]
    assert sorted(os.listdir(datasets / "folder" / "train")) == ["a", "b"]


# --- the decoded-image cache ---------------------------------------------------------------------

def test_image_cache_serves_edited_and_swapped_images_afresh(tmp_path, monkeypatch):
    from fmprune.data import _cached_folder

    monkeypatch.setenv("FMPRUNE_CACHE", str(tmp_path / "cache"))
    root = _image_tree(tmp_path / "images")
    split = root / "train"
    first, _, files, _ = _cached_folder(split, 8)
    assert files[0] == os.path.join("a", "0.png") and int(first[0, 0, 0, 0]) == 1
    _png(split / "a" / "0.png", 99)  # edited in place: same name, same size
    second, _, _, _ = _cached_folder(split, 8)
    assert int(second[0, 0, 0, 0]) == 99
    (split / "a" / "0.png").rename(tmp_path / "swap.png")  # swapped with another image of the tree
    (split / "a" / "1.png").rename(split / "a" / "0.png")
    (tmp_path / "swap.png").rename(split / "a" / "1.png")
    third, _, _, _ = _cached_folder(split, 8)
    assert int(third[0, 0, 0, 0]) == 2 and int(third[1, 0, 0, 0]) == 99
    assert len(list((tmp_path / "cache").glob("folder-*.npz"))) == 3
    again, _, _, _ = _cached_folder(split, 8)  # unchanged tree: served from the cache
    assert torch.equal(again, third) and len(list((tmp_path / "cache").glob("folder-*.npz"))) == 3
