"""The pipeline's steps, one function per Snakemake rule (the CLI calls these)."""
from __future__ import annotations

import copy
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from . import FmpruneError, __version__
from . import config as cfglib
from . import data as datalib
from .counting import count
from .features import FeatureFile, extract, sample_indices, taps_for
from .latency import measure as measure_latency
from .io import atomic_path, atomic_write_json, check_sha256, download, sha256_file, sha256_json
from .methods import FPFMC_DEFAULTS, Scored, fpfmc, score_groups, tap_kind
from .models import build, input_size, spec_of
from .plan import NATIVE_FORMS, group_rates, group_shape, kept_from_scores, macs_of, native_kept, reach_macs, shaped_rates, uniform_rates
from .surgery import load_pruned, prune_, save_pruned
from .train import evaluate, fit, is_main_process, resolve_device, setup_distributed, teardown_distributed

log = logging.getLogger("fmprune")


def _dataset(cfg: dict, model: str) -> datalib.Data:
    m = cfg["models"][model]
    ds_cfg = dict(cfg["datasets"][m["dataset"]])
    ds_cfg["normalize"] = cfglib.normalization(cfg, model)
    return datalib.load(m["dataset"], ds_cfg)


def _read_checkpoint(path: Path, arch: str, num_classes: int) -> torch.nn.Module:
    """A given checkpoint: an fmprune model file, a dict with ``state_dict``, or a bare state_dict.

    DataParallel's ``module.`` prefixes are stripped; the load is strict.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and "kept" in payload:
        return load_pruned(path)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise FmpruneError(f"{path}: no state_dict found in the checkpoint")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = build(arch, num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise FmpruneError(f"{path} does not fit {arch}: {first}") from None
    return model


def baseline(cfg: dict, model: str, out: Path, workdir: Path) -> None:
    """Import the given checkpoint (hash-checked) or train the baseline by its recipe."""
    m = cfg["models"][model]
    data = _dataset(cfg, model)
    ckpt = m.get("checkpoint")
    extra = {"normalize": cfglib.normalization(cfg, model), "model_name": model}
    if ckpt:
        path = Path(ckpt["path"]).expanduser()
        if not path.is_file():
            if not (ckpt["download"] and "url" in ckpt):
                raise FmpruneError(f"checkpoint file {path} does not exist")
            download(ckpt["url"], path, ckpt["sha256"])
        digest = check_sha256(path, ckpt["sha256"]) if "sha256" in ckpt else sha256_file(path)
        net = _read_checkpoint(path, m["arch"], data.num_classes)
        extra["source"] = {"checkpoint": str(path), "sha256": digest}
    else:
        torch.manual_seed(0)  # the initialisation is part of the baseline's recipe
        net = build(m["arch"], data.num_classes)
        recipe = cfg["recipes"][m["baseline_recipe"]]
        device = setup_distributed(cfg["device"])  # joins the process group under torchrun
        summary = fit(net, data, recipe, seed=0, workdir=workdir, device=device, log_csv=workdir / "log.csv")
        extra["source"] = {"trained": m["baseline_recipe"], "recipe": recipe, **summary}
    if is_main_process():  # under torchrun, rank 0 writes the outputs
        save_pruned(out, net.cpu(), m["arch"], data.num_classes, **extra)
    teardown_distributed()


def evaluate_model(cfg: dict, model: str, model_file: Path, out: Path, bn_reestimation: bool = False) -> dict:
    """Accuracy and cost of a saved model (baseline or pruned, before fine-tuning).

    With ``bn_reestimation`` (pruned models) also the accuracy after re-estimating BN statistics
    (``top1_bn``): removing channels shifts the statistics every later BN sees, and the plain figure
    mixes that shift with what the criterion removed.
    """
    m = cfg["models"][model]
    data = _dataset(cfg, model)
    net = load_pruned(model_file)
    result = {"model": model, "arch": m["arch"], **count(net, m["arch"])}
    device = resolve_device(cfg["device"])
    batch = cfg["evaluation"]["batch_size"]
    result.update(evaluate(net, data.test, data.norm, device, batch_size=batch))
    if bn_reestimation and cfg["evaluation"]["bn_images"]:
        result.update(_after_bn_reestimation(cfg["evaluation"], net, data, device))
    result.update(measure_latency(net, input_size(m["arch"]), device))
    result["model_sha256"] = sha256_file(model_file)
    atomic_write_json(out, result)
    return result


def _after_bn_reestimation(ev: dict, net: torch.nn.Module, data: datalib.Data, device: torch.device) -> dict:
    """Accuracy of a copy whose BN running statistics are re-estimated on seeded training images.

    torch's ``update_bn`` resets the statistics and averages them over the batches (momentum
    None). Images come unaugmented in seeded random order: batches of one class would bias the
    variances.
    """
    from torch.optim.swa_utils import update_bn

    n = min(ev["bn_images"], len(data.train))
    order = np.random.default_rng(ev["bn_seed"]).choice(len(data.train), n, replace=False)
    net = copy.deepcopy(net).to(device)
    update_bn(data.train.batches(order, ev["batch_size"], data.norm, device=device), net, device)
    after = evaluate(net, data.test, data.norm, device, batch_size=ev["batch_size"])
    keys = ("top1", "top5", "top1_flagged")
    return {f"{k}_bn": after[k] for k in keys if k in after} | {"bn_images": n}


def extract_features(cfg: dict, model: str, model_file: Path, out: Path) -> None:
    m = cfg["models"][model]
    data = _dataset(cfg, model)
    net = load_pruned(model_file)
    kinds = {tap_kind(x) for x in cfglib.model_methods(cfg, model)} - {None}
    taps = taps_for(net.channel_spec(), kinds)
    f = cfg["features"]
    ds_cfg = cfg["datasets"][m["dataset"]]
    pool = None
    if ds_cfg.get("sample_flagged_only"):
        flags = getattr(data.train, "flags", None)
        if flags is None:
            raise FmpruneError(f"datasets.{m['dataset']}.sample_flagged_only needs a flag_column")
        pool = np.flatnonzero(flags)
    indices = sample_indices(len(data.train), f["samples"], f["seed"], pool)
    device = resolve_device(cfg["device"])
    net.to(device)
    attrs = {"arch": m["arch"], "model": model, "model_sha256": sha256_file(model_file),
             "dataset": m["dataset"], "seed": f["seed"]}
    batches = data.train.batches(indices, f["batch_size"], data.norm, device=device)
    extract(net, batches, indices, taps, out, attrs, dtype=f["dtype"])


def save_scores(path: Path, scored: Scored, meta: dict) -> None:
    """Scores file: ``scores/<group>`` arrays (+ a method's extra arrays) and JSON ``meta``."""
    arrays = {f"scores/{g}": np.asarray(v) for g, v in scored.scores.items()}
    for kind, per_group in scored.extra.items():
        arrays.update({f"{kind}/{g}": np.asarray(v) for g, v in per_group.items()})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def load_scores(path: Path) -> tuple[Scored, dict]:
    if not Path(path).is_file():
        raise FmpruneError(f"scores file {path} does not exist")
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        scored = Scored({}, {})
        for key in z.files:
            if key == "meta":
                continue
            kind, group = key.split("/", 1)
            if kind == "scores":
                scored.scores[group] = z[key]
            else:
                scored.extra.setdefault(kind, {})[group] = z[key]
    return scored, meta


def score(cfg: dict, model: str, method: str, model_file: Path, features: Path | None, out: Path) -> None:
    net = load_pruned(model_file)
    spec = net.channel_spec()
    params = cfg["method_params"].get(method, {})
    if features is not None:
        with FeatureFile(features) as ff:
            scored = score_groups(method, spec, net, ff, params, cfg["features"]["batch_size"])
            sample = ff.attrs["sample_sha256"]
    else:
        scored, sample = score_groups(method, spec, net, None, params), None
    save_scores(out, scored, {"method": method, "model": model, "params": params, "sample_sha256": sample})


def _fpfmc_params(cfg: dict) -> dict:
    return {**FPFMC_DEFAULTS, **cfg["method_params"].get("fpfmc", {})}


def fpfmc_kselect(cfg: dict, model: str, features: Path, out: Path, workers: int) -> None:
    """FP-FMC step 0 per tap: t-SNE embedding, IQR outliers, per-image K, the layer's K."""
    import h5py
    from tqdm import tqdm

    p = _fpfmc_params(cfg)
    spec = spec_of(cfg["models"][model]["arch"])
    with FeatureFile(features) as ff, atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update({"images": min(p["images"], ff.n_images), "seed": p["seed"],
                         "sample_sha256": ff.attrs["sample_sha256"]})
        for group, taps in tqdm(list(spec.taps("act").items()), desc="fpfmc kselect", mininterval=10):
            for tap in taps:
                channels = spec.groups[group].tap_slices.get(tap)
                maps = torch.cat(list(ff.batches(tap, images=p["images"], channels=channels))).numpy()
                coords, inlier = fpfmc.embed(maps, seed=p["seed"], workers=workers)
                k, per_image = fpfmc.select_k(coords, inlier, seed=p["seed"], workers=workers)
                g = h5.create_group(f"{group}/{tap}")
                g["coords"], g["inlier"], g["per_image_k"] = coords, inlier, per_image
                g.attrs["k"] = k


def fpfmc_cluster(cfg: dict, kselect_file: Path, out: Path) -> None:
    """FP-FMC step 1: KMeans with the layer's K on every image's embedding -> labels [N, C]."""
    import h5py

    p = _fpfmc_params(cfg)
    with h5py.File(kselect_file, "r") as src, atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update(dict(src.attrs))
        for group in src:
            for tap, g in src[group].items():
                h5[f"{group}/{tap}"] = fpfmc.cluster(g["coords"][()], g["inlier"][()], int(g.attrs["k"]), seed=p["seed"])


def fpfmc_sort(cfg: dict, model: str, labels_file: Path, out: Path) -> None:
    """FP-FMC step 2: redundancy index per group (summed over its taps); low RI is kept."""
    import h5py

    with h5py.File(labels_file, "r") as h5:
        ri = {group: np.sum([fpfmc.redundancy_index(h5[group][tap][()]) for tap in h5[group]], axis=0)
              for group in h5}
        sample = h5.attrs["sample_sha256"]
    scored = Scored({g: fpfmc.channel_scores_from_ri(v) for g, v in ri.items()}, {"redundancy_index": ri})
    save_scores(out, scored, {"method": "fpfmc", "model": model, "params": _fpfmc_params(cfg), "sample_sha256": sample})


def make_plan(cfg: dict, model: str, plan: str, scores_file: Path, out: Path) -> None:
    arch = cfg["models"][model]["arch"]
    spec = spec_of(arch)
    plan_cfg = cfg["models"][model]["plans"][plan]
    scored, meta = load_scores(scores_file)
    method, scores = meta["method"], scored.scores
    min_channels = plan_cfg.get("min_channels", 1)
    info: dict = {}
    if "rates" in plan_cfg:
        kept = kept_from_scores(spec, scores, group_rates(spec, plan_cfg["rates"]))
    elif "uniform" in plan_cfg:
        kept = kept_from_scores(spec, scores, uniform_rates(spec, plan_cfg["uniform"]))
    elif "sparsity" in plan_cfg or "threshold" in plan_cfg:
        form = "sparsity" if "sparsity" in plan_cfg else "threshold"
        kept = native_kept(method, spec, form, plan_cfg[form], scores, scored.extra, min_channels)
    else:
        full = {g: list(range(s.channels)) for g, s in spec.groups.items() if s.prunable}
        baseline_macs = macs_of(arch, full)
        target = plan_cfg.get("target_macs") or int(baseline_macs * (1 - plan_cfg["target_reduction"]))
        if method in NATIVE_FORMS and "shape" not in plan_cfg:
            form = NATIVE_FORMS[method]

            def kept_at(value):
                return native_kept(method, spec, form, value, scores, scored.extra, min_channels)

            lo, hi, higher_prunes_more = (0.0, 0.999, True) if form == "sparsity" else (0.0, 1.0, False)
        else:
            form = "scale"
            shape = group_shape(spec, plan_cfg["shape"]) if "shape" in plan_cfg else None
            if shape is not None and max(shape.values()) <= 0:
                raise FmpruneError(f"models.{model}.plans.{plan}.shape: all rates are 0, nothing to scale")

            def kept_at(value):
                return kept_from_scores(spec, scores, shaped_rates(spec, shape, value))

            lo, hi, higher_prunes_more = 0.0, 0.999 / (max(shape.values()) if shape else 1.0), True
        kept, knob, macs = reach_macs(arch, target, kept_at, lo, hi, higher_prunes_more)
        info = {"target_macs": target, "reached_macs": macs, "knob": form, "knob_value": knob}
    atomic_write_json(out, {"model": model, "plan": plan, "method": method, "definition": plan_cfg, **info,
                            "sample_sha256": meta["sample_sha256"],
                            "widths": {g: len(k) for g, k in kept.items()}, "kept": kept})


def prune(cfg: dict, model: str, model_file: Path, plan_file: Path, out: Path, report: Path) -> None:
    net = load_pruned(model_file)
    plan = json.loads(Path(plan_file).read_text())
    prune_(net, {g: torch.tensor(k) for g, k in plan["kept"].items()})
    meta = dict(net.meta)
    meta.pop("kept", None)
    save_pruned(out, net, meta.pop("arch"), meta.pop("num_classes"), **meta, plan=plan["plan"], method=plan["method"])
    evaluate_model(cfg, model, out, report, bn_reestimation=True)


def finetune(cfg: dict, model: str, method: str, plan: str, seed: int, pruned_file: Path,
             pruned_report: Path, baseline_report: Path, features: Path | None, out_dir: Path) -> None:
    m = cfg["models"][model]
    data = _dataset(cfg, model)
    net = load_pruned(pruned_file)
    recipe_name = cfglib.finetune_recipe(cfg, model, plan)
    recipe = cfg["recipes"][recipe_name]
    device = setup_distributed(cfg["device"])  # joins the process group under torchrun
    summary = fit(net, data, recipe, seed, out_dir, device, out_dir / "log.csv")
    if not is_main_process():  # under torchrun, rank 0 writes the outputs
        teardown_distributed()
        return
    if summary["epochs_run"] == 0:
        before = json.loads(Path(pruned_report).read_text())
        summary.update({"top1": before["top1"], "top5": before["top5"], "top1_best": before["top1"], "best_epoch": 0})
    meta = dict(net.meta)
    save_pruned(out_dir / "model.pt", net.cpu(), meta.pop("arch"), meta.pop("num_classes"),
                **{k: v for k, v in meta.items() if k != "kept"})
    speed = measure_latency(net, input_size(m["arch"]), device)  # on the device it was fine-tuned on
    pruned, base = json.loads(Path(pruned_report).read_text()), json.loads(Path(baseline_report).read_text())
    sample = None
    if features is not None:
        with FeatureFile(features) as ff:
            sample = ff.attrs["sample_sha256"]
    acc = {
        "model": model, "arch": m["arch"], "method": method, "plan": plan, "plan_definition": m["plans"][plan],
        "seed": seed, "epochs": recipe["epochs"], "recipe": recipe_name, **summary, **speed,
        "top1_before_finetune": pruned["top1"],
        **({"top1_before_finetune_bn": pruned["top1_bn"]} if "top1_bn" in pruned else {}),
        "params": pruned["params"], "macs": pruned["macs"], "macs_thop": pruned["macs_thop"], "flops": pruned["flops"],
        "baseline": {k: base[k] for k in ("params", "macs", "macs_thop", "flops", "top1", "top5",
                                          "latency_ms_b1", "throughput_ips", "latency_device") if k in base}
        | ({"top1_flagged": base["top1_flagged"]} if "top1_flagged" in base else {}),
        "params_reduction_pct": 100.0 * (1 - pruned["params"] / base["params"]),
        "macs_reduction_pct": 100.0 * (1 - pruned["macs"] / base["macs"]),
        "provenance": provenance(cfg, model, method, plan, sample),
    }
    atomic_write_json(out_dir / "acc.json", acc)
    teardown_distributed()


def provenance(cfg: dict, model: str, method: str, plan: str, sample_sha256: str | None) -> dict:
    import h5py
    import sklearn
    import snakemake
    import torchvision

    m = cfg["models"][model]
    resolved = {"model": m, "dataset": cfg["datasets"][m["dataset"]], "features": cfg["features"],
                "method_params": cfg["method_params"].get(method, {}), "plan": m["plans"][plan],
                "recipe": cfg["recipes"][cfglib.finetune_recipe(cfg, model, plan)]}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    ckpt = m.get("checkpoint")
    return {
        "fmprune": __version__, "git_commit": commit, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": np.__version__, "h5py": h5py.__version__, "scikit-learn": sklearn.__version__,
        "snakemake": snakemake.__version__,
        "checkpoint_sha256": sha256_file(Path(ckpt["path"]).expanduser()) if ckpt else None,
        "sample_sha256": sample_sha256, "config_sha256": sha256_json(resolved),
    }


def publish_default(src: Path, dest: Path) -> None:
    """``results/{model}/{method}/acc.json``: the default plan and seed, copied atomically."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
