"""The pipeline's steps, one function per Snakemake rule (the CLI calls these)."""
from __future__ import annotations

import copy
import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import torch

from . import FmpruneError, __version__
from . import config as cfglib
from . import data as datalib
from .counting import count
from .features import FeatureFile, contents_for, extract, sample_indices, taps_for, taylor_taps_for
from .latency import device_name, measure as measure_latency, timer_for
from .io import (atomic_path, atomic_write_json, cache_dir, check_sha256, describe, download, load_torch, read_json,
                 sha256_file, sha256_json, user_path)
from .methods import Scored, fpfmc, reads, resolved_params, score_groups
from .models import ArchSpec, build, spec_of
from .plan import TIME_FORMS, plan_form, plan_kept
from .surgery import load_pruned, prune_, save_pruned
from .tasks import of_model
from .train import fit, is_main_process, resolve_device, setup_distributed, teardown_distributed

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
    payload = load_torch(path, "checkpoint")
    if isinstance(payload, dict) and "kept" in payload:
        return load_pruned(path)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise FmpruneError(f"{path}: no state_dict found in the checkpoint")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = build(arch, num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise FmpruneError(f"{path} does not fit {arch}: {first[:200]}") from None
    return model


def baseline(cfg: dict, model: str, out: Path, workdir: Path) -> None:
    """Import the given checkpoint (hash-checked) or train the baseline by its recipe."""
    m = cfg["models"][model]
    data = _dataset(cfg, model)
    ckpt = m.get("checkpoint")
    extra = {"normalize": cfglib.normalization(cfg, model), "model_name": model}
    if ckpt:
        path = user_path(ckpt["path"])
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
    """The task's metrics (classification: top-1) and the cost of a saved model (baseline or
    pruned, before fine-tuning).

    With ``bn_reestimation`` (pruned models) also the metrics after re-estimating BN statistics
    (``top1_bn``, ``maxf_bn``, …): removing channels shifts the statistics every later BN sees, and
    the plain figure mixes that shift with what the criterion removed.
    """
    m = cfg["models"][model]
    data = _dataset(cfg, model)
    net = load_pruned(model_file)
    result = {"model": model, "arch": m["arch"], "task": data.task.name, **count(net, m["arch"])}
    device = resolve_device(cfg["device"])
    batch = cfg["evaluation"]["batch_size"]
    result.update(data.task.evaluate(net, data.test, data.norm, device, batch_size=batch))
    if bn_reestimation and cfg["evaluation"]["bn_images"]:
        result.update(_after_bn_reestimation(cfg["evaluation"], net, data, device))
    result.update(_speed(cfg, net, _eval_size(cfg, model, data), device))
    result["model_sha256"] = sha256_file(model_file)
    atomic_write_json(out, result)
    return result


def _speed(cfg: dict, net: torch.nn.Module, size: int, device: torch.device) -> dict:
    """Latency and throughput of ``net`` on ``device``; with the config's ``runtimes``, also
    under each of them (:func:`fmprune.export.runtime_speeds`)."""
    speed = measure_latency(net, size, device)
    if cfg.get("runtimes"):
        from .export import runtime_speeds

        speed["runtimes"] = runtime_speeds(net, size, cfg["runtimes"], device)
    return speed


SPEED_KEYS = ("latency_ms_b1", "latency_ms_b1_iqr", "throughput_ips", "throughput_batch", "latency_device", "runtimes")


def _reused_speed(pruned_report: dict, device: torch.device) -> dict | None:
    """The pruned model's timings from its prune report when they were measured on the device
    (and thread count) fine-tuning ran on: fine-tuning changes weights, not widths, so timing
    it again would measure the same network. None when the devices differ (e.g. pruned on a
    CPU node, fine-tuned on a GPU)."""
    if pruned_report.get("latency_device") != device_name(device):
        return None
    return {k: pruned_report[k] for k in SPEED_KEYS if k in pruned_report}


def _eval_size(cfg: dict, model: str, data: datalib.Data) -> int:
    """Side of the input a model is evaluated on, and its latency measured on."""
    m = cfg["models"][model]
    return data.task.eval_size(m["arch"], cfg["datasets"][m["dataset"]])


def _after_bn_reestimation(ev: dict, net: torch.nn.Module, data: datalib.Data, device: torch.device) -> dict:
    """The task's metrics of a copy whose BN running statistics are re-estimated on seeded training images.

    torch's ``update_bn`` resets the statistics and averages them over the batches (momentum
    None). Images come unaugmented in seeded random order: batches of one class would bias the
    variances.
    """
    from torch.optim.swa_utils import update_bn

    n = min(ev["bn_images"], len(data.train))
    order = np.random.default_rng(ev["bn_seed"]).choice(len(data.train), n, replace=False)
    net = copy.deepcopy(net).to(device)
    update_bn(data.train.batches(order, ev["batch_size"], data.norm, device=device), net, device)
    after = data.task.evaluate(net, data.test, data.norm, device, batch_size=ev["batch_size"])
    return {f"{k}_bn": after[k] for k in data.task.metrics if k in after} | {"bn_images": n}


def extract_features(cfg: dict, model: str, model_file: Path, out: Path) -> None:
    m = cfg["models"][model]
    data = _dataset(cfg, model)
    net = load_pruned(model_file)
    f = cfg["features"]
    contents = contents_for(net.channel_spec(),
                            {x: cfg["method_params"].get(x, {}) for x in cfglib.model_methods(cfg, model)}, f["store"])
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
    extract(net, batches, indices, contents.taps, out, attrs, dtype=f["dtype"], taylor_taps=contents.taylor_taps,
            loss=data.task.loss, statistics=contents.statistics, map_images=contents.map_images, axes=contents.axes)


def save_scores(path: Path, scored: Scored, meta: dict) -> None:
    """Scores file: ``scores/<group>`` arrays (+ a method's extra arrays) and JSON ``meta``."""
    arrays = {f"scores/{g}": np.asarray(v) for g, v in scored.scores.items()}
    for kind, per_group in scored.extra.items():
        arrays.update({f"{kind}/{g}": np.asarray(v) for g, v in per_group.items()})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def load_scores(path: Path, spec: ArchSpec | None = None) -> tuple[Scored, dict]:
    """Read a scores file (see :func:`save_scores`); with ``spec``, its groups and widths must match.

    A truncated or foreign file, or non-finite scores, is a one-line error naming the file.
    """
    import zipfile

    if not Path(path).is_file():
        raise FmpruneError(f"scores file {path} does not exist")
    try:
        with np.load(path) as z:  # object arrays (pickles) are refused: allow_pickle is False
            meta = json.loads(str(z["meta"]))
            arrays = {key: z[key] for key in z.files if key != "meta"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as exc:
        raise FmpruneError(f"scores file {path} is truncated or not a scores file ({describe(exc)})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("method"), str) or "sample_sha256" not in meta:
        raise FmpruneError(f"scores file {path}: its meta lacks the method or the sample hash")
    scored = Scored({}, {})
    for key, value in arrays.items():
        kind, _, group = key.partition("/")
        if not group or not np.issubdtype(value.dtype, np.number):
            raise FmpruneError(f"scores file {path}: unexpected entry {key!r}")
        if not np.all(np.isfinite(value)):
            raise FmpruneError(f"scores file {path}: {key} holds non-finite values (NaN or inf)")
        if kind == "scores":
            scored.scores[group] = value
        else:
            scored.extra.setdefault(kind, {})[group] = value
    if spec is not None:
        widths = {g: spec.groups[g].channels for g in spec.prunable_groups()}
        missing = [g for g in widths if g not in scored.scores]
        unknown = [g for g in scored.scores if g not in widths]
        wrong = [g for g in widths if g in scored.scores and scored.scores[g].shape != (widths[g],)]
        if missing or unknown or wrong:
            what = (f"no scores for group {missing[0]}" if missing else f"unknown group {unknown[0]}" if unknown
                    else f"group {wrong[0]} has {scored.scores[wrong[0]].size} scores for {widths[wrong[0]]} channels")
            raise FmpruneError(f"scores file {path} does not fit {spec.arch}: {what}")
    return scored, meta


def score(cfg: dict, model: str, method: str, model_file: Path, features: Path | None, out: Path) -> None:
    net = load_pruned(model_file)
    spec = net.channel_spec()
    params = cfg["method_params"].get(method, {})
    if features is not None:
        kinds = {reads(method)} - {None}
        with FeatureFile(features) as ff:
            ff.check_source(net.meta["arch"], sha256_file(model_file), taps_for(spec, kinds), taylor_taps_for(spec, kinds),
                            statistics_of=method)
            scored = score_groups(method, spec, net, ff, params, cfg["features"]["batch_size"])
            sample = ff.attrs["sample_sha256"]
    else:
        scored, sample = score_groups(method, spec, net, None, params), None
    for group, values in scored.scores.items():
        if not np.all(np.isfinite(values)):
            raise FmpruneError(f"{method} gave non-finite scores for group {group} "
                               f"(from {features or model_file}); nothing written to {out}")
    save_scores(out, scored, {"method": method, "model": model, "params": params, "sample_sha256": sample})


def _fpfmc_params(cfg: dict) -> dict:
    return resolved_params("fpfmc", cfg["method_params"].get("fpfmc", {}))


def fpfmc_kselect(cfg: dict, model: str, features: Path, out: Path, workers: int) -> None:
    """FP-FMC step 0 per tap: t-SNE embedding, IQR outliers, per-image K, the layer's K."""
    import h5py
    from tqdm import tqdm

    p = _fpfmc_params(cfg)
    spec = spec_of(cfg["models"][model]["arch"])
    with FeatureFile(features) as ff, atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        ff.check_source(spec.arch, None, taps_for(spec, {"act"}))
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


def _open_h5(path: Path, what: str):
    """An intermediate HDF5 file opened for reading; a truncated or missing one is one line."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FmpruneError(f"{what} {path} is missing, truncated or not HDF5 ({describe(exc)})") from None


def fpfmc_cluster(cfg: dict, kselect_file: Path, out: Path) -> None:
    """FP-FMC step 1: KMeans with the layer's K on every image's embedding -> labels [N, C]."""
    import h5py

    p = _fpfmc_params(cfg)
    with _open_h5(kselect_file, "FP-FMC K-selection file") as src, atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update(dict(src.attrs))
        for group in src:
            for tap, g in src[group].items():
                h5[f"{group}/{tap}"] = fpfmc.cluster(g["coords"][()], g["inlier"][()], int(g.attrs["k"]), seed=p["seed"])


def fpfmc_sort(cfg: dict, model: str, labels_file: Path, out: Path) -> None:
    """FP-FMC step 2: redundancy index per group (summed over its taps); low RI is kept."""
    with _open_h5(labels_file, "FP-FMC labels file") as h5:
        ri = {group: np.sum([fpfmc.redundancy_index(h5[group][tap][()]) for tap in h5[group]], axis=0)
              for group in h5}
        sample = h5.attrs["sample_sha256"]
    scored = Scored({g: fpfmc.channel_scores_from_ri(v) for g, v in ri.items()}, {"redundancy_index": ri})
    save_scores(out, scored, {"method": "fpfmc", "model": model, "params": _fpfmc_params(cfg), "sample_sha256": sample})


def make_plan(cfg: dict, model: str, plan: str, scores_file: Path, out: Path) -> None:
    spec = spec_of(cfg["models"][model]["arch"])
    plan_cfg = cfg["models"][model]["plans"][plan]
    scored, meta = load_scores(scores_file, spec)
    method = meta["method"]
    timer = None
    if plan_form(plan_cfg) in TIME_FORMS:  # timed on this job's device, once per width set
        size = of_model(cfg, model).eval_size(spec.arch, cfg["datasets"][cfg["models"][model]["dataset"]])
        timer = timer_for(plan_cfg, spec.arch, size, resolve_device(cfg["device"]), cache_dir() / "latency")
    kept, info = plan_kept(spec, method, plan_cfg, scored.scores, scored.extra, timer)
    atomic_write_json(out, {"model": model, "plan": plan, "method": method, "definition": plan_cfg, **info,
                            "sample_sha256": meta["sample_sha256"],
                            "widths": {g: len(k) for g, k in kept.items()}, "kept": kept})


def _read_plan(path: Path, model: str) -> dict:
    """A plan.json of ``model`` written by :func:`make_plan`: plan, method and kept channel indices."""
    plan = read_json(path, "plan file")
    kept = plan.get("kept") if isinstance(plan, dict) else None
    indices_ok = isinstance(kept, dict) and all(
        isinstance(v, list) and all(type(i) is int and 0 <= i < 1 << 31 for i in v) for v in kept.values())
    if not indices_ok or not isinstance(plan.get("plan"), str) or not isinstance(plan.get("method"), str):
        raise FmpruneError(f"plan file {path} is not a plan (needs plan, method and kept: group -> channel indices)")
    if plan.get("model") != model:
        raise FmpruneError(f"plan file {path} is a plan of model {plan.get('model')!r}, not {model!r}")
    return plan


def _read_report(path: Path, keys: tuple[str, ...]) -> dict:
    """An evaluation report (JSON) that must hold ``keys``."""
    report = read_json(path, "report")
    missing = [k for k in keys if not isinstance(report, dict) or k not in report]
    if missing:
        raise FmpruneError(f"report {path} lacks {missing[0]!r} (re-run the step that writes it)")
    return report


def prune(cfg: dict, model: str, model_file: Path, plan_file: Path, out: Path, report: Path) -> None:
    net = load_pruned(model_file)
    plan = _read_plan(plan_file, model)
    try:
        prune_(net, {g: torch.tensor(k) for g, k in plan["kept"].items()})
    except FmpruneError as exc:
        raise FmpruneError(f"plan file {plan_file} does not fit {model_file}: {exc}") from None
    meta = dict(net.meta)
    meta.pop("kept", None)
    save_pruned(out, net, meta.pop("arch"), meta.pop("num_classes"), **meta, plan=plan["plan"], method=plan["method"])
    evaluate_model(cfg, model, out, report, bn_reestimation=True)


def finetune(cfg: dict, model: str, method: str, plan: str, seed: int, pruned_file: Path,
             pruned_report: Path, baseline_report: Path, features: Path | None, out_dir: Path) -> None:
    m = cfg["models"][model]
    data = _dataset(cfg, model)
    net = load_pruned(pruned_file)
    # every input is read before fine-tuning: a damaged one fails in seconds, not after the epochs
    task = data.task
    pruned = _read_report(pruned_report, (task.headline, "params", "macs", "macs_thop", "flops"))
    base = _read_report(baseline_report, ("params", "macs"))
    sample = None
    if features is not None:
        with FeatureFile(features) as ff:
            sample = ff.attrs["sample_sha256"]
    recipe_name = cfglib.finetune_recipe(cfg, model, plan)
    recipe = cfg["recipes"][recipe_name]
    device = setup_distributed(cfg["device"])  # joins the process group under torchrun
    summary = fit(net, data, recipe, seed, out_dir, device, out_dir / "log.csv")
    if not is_main_process():  # under torchrun, rank 0 writes the outputs
        teardown_distributed()
        return
    if summary["epochs_run"] == 0:  # the pruned model's figures
        summary.update({k: pruned[k] for k in task.metrics if k in pruned}, best_epoch=0)
        summary.update({f"{k}_best": pruned[k] for k in task.best if k in pruned})
    meta = dict(net.meta)
    save_pruned(out_dir / "model.pt", net.cpu(), meta.pop("arch"), meta.pop("num_classes"),
                **{k: v for k, v in meta.items() if k != "kept"})
    speed = _reused_speed(pruned, device) or _speed(cfg, net, _eval_size(cfg, model, data), device)
    acc = {
        "model": model, "arch": m["arch"], "task": task.name, "method": method, "plan": plan,
        "plan_definition": m["plans"][plan],
        "seed": seed, "epochs": recipe["epochs"], "recipe": recipe_name, **summary, **speed,
        **{f"{k}_before_finetune{bn}": pruned[f"{k}{bn}"] for k in task.before for bn in ("", "_bn")
           if f"{k}{bn}" in pruned},
        "params": pruned["params"], "macs": pruned["macs"], "macs_thop": pruned["macs_thop"], "flops": pruned["flops"],
        "baseline": {k: base[k] for k in ("params", "macs", "macs_thop", "flops", *task.metrics, *SPEED_KEYS)
                     if k in base},
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
        "checkpoint_sha256": sha256_file(user_path(ckpt["path"])) if ckpt else None,
        "sample_sha256": sample_sha256, "config_sha256": sha256_json(resolved),
    }

