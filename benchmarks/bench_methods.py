"""Scoring speed of every method on ResNet-56's feature maps, next to a straightforward implementation.

What it measures
----------------
ResNet-56 (the shared checkpoint; a seeded random init when it is missing) is run once over
the first ``--images`` images of the pipeline's seeded sample of the flagged (``exact``)
CIFAR-10 training images (seeded Gaussian images when the data folder is missing), storing the
``act`` and ``conv`` taps of every prunable group in a temporary HDF5 file
(``fmprune.features.extract``). Then, each in a fresh process so that timings and memory do not
depend on what ran before:

* ``score_groups`` of every method the generic ``score`` rule scores (all but FP-FMC: hrank,
  cfdp, dct, cdp, rgd, l1, random, apoz, bnscale, chip, fpgm, meanact, taylor) over all groups:
  wall time and peak resident memory (RSS);
* for all of them but l1 and random, a straightforward implementation of the same formula
  (per image and per channel, or per filter: ``benchmarks/naive/``, and for HRank
  ``numpy.linalg.matrix_rank`` of one map at a time; for Taylor, one forward and backward pass
  per image computes the terms that extraction stores), combined over a group's taps or writers
  exactly as ``score_groups`` does. Its
  scores are compared with the fast method's (max relative difference) and so are the kept sets
  at the seeds' rate list ``[0.]+[0.18]*29``. A straightforward run on fewer images
  (``--naive-images``) is compared with the fast method on the same images, and its time is
  extrapolated linearly to ``--images``;
* FP-FMC: the pipeline's three rules (``fpfmc_kselect`` = t-SNE + per-image K selection,
  ``fpfmc_cluster``, ``fpfmc_sort``) for all of ResNet-56's ``act`` taps with ``--fpfmc-workers``
  processes, and on a subset of taps the scikit-learn implementation
  (``benchmarks/naive/fpfmc.py``, per image): agreement of the layer K, of the per-image K and
  the overlap (Jaccard) of the kept sets at rate 0.18.
* Taylor's terms cost one backward pass at extraction: the extraction is timed with and without
  them.

Peak memory: the kernel's peak-RSS mark (VmHWM) of the measuring process is reset just before
the measured call (``/proc/self/clear_refs``, Linux) and read afterwards from
``/proc/self/status``; the table gives it with its increase over the RSS at the start of the
call. RSS covers torch and numpy buffers alike (tracemalloc would miss torch's); VmHWM rather
than ``resource.getrusage``, whose ru_maxrss in a spawned process also remembers the forked copy
of the parent from before the exec. FP-FMC's worker processes are not included.

How to run (from the repository root; the full run takes several minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_methods.py                 # 128 images -> results/bench/methods.md
    .venv/bin/python benchmarks/bench_methods.py --quick         # smoke run on a few images
    .venv/bin/python benchmarks/bench_methods.py --methods chip,taylor --no-fpfmc  # a subset
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from joblib.externals.loky import get_reusable_executor
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # ``benchmarks.common``, ``benchmarks.naive`` when run as a script

from benchmarks.common import (CONFIG, MODEL, in_fresh_process, load_images, load_model, machine,  # noqa: E402
                               markdown_table, measured, resnet56_parser, write_report)
from benchmarks.naive import apoz as naive_apoz  # noqa: E402
from benchmarks.naive import bnscale as naive_bnscale  # noqa: E402
from benchmarks.naive import cdp as naive_cdp  # noqa: E402
from benchmarks.naive import cfdp as naive_cfdp  # noqa: E402
from benchmarks.naive import chip as naive_chip  # noqa: E402
from benchmarks.naive import dct as naive_dct  # noqa: E402
from benchmarks.naive import fpfmc as naive_fpfmc  # noqa: E402
from benchmarks.naive import fpgm as naive_fpgm  # noqa: E402
from benchmarks.naive import meanact as naive_meanact  # noqa: E402
from benchmarks.naive import rgd as naive_rgd  # noqa: E402
from benchmarks.naive import taylor as naive_taylor  # noqa: E402
from fmprune import config as cfglib  # noqa: E402
from fmprune.features import FeatureFile, extract, taps_for, taylor_taps_for  # noqa: E402
from fmprune.methods import (ORDER, GroupInputs, combine, fpfmc, resolved_params, rgd, rule_logs,  # noqa: E402
                             score_groups, tap_kind)
from fmprune.models import build  # noqa: E402
from fmprune.pipeline import fpfmc_cluster, fpfmc_kselect, fpfmc_sort  # noqa: E402
from fmprune.plan import group_rates, keep_count, kept_from_scores  # noqa: E402
from fmprune.tasks import CLASSIFICATION  # noqa: E402

RATES = "[0.]+[0.18]*29"  # the seeds' operating point (config plan seeds018)
FPFMC_RATE = 0.18
DIRECT_METHODS = tuple(m for m in ORDER if not rule_logs(m))  # those the generic score rule scores
DIRECT_TARGET_S = 30.0
KINDS = {"act", "conv", "act_grad"}  # every tap kind and the Taylor terms
NAIVE_ALL = ["hrank", "dct", "cdp", "rgd", "apoz", "meanact", "taylor", "fpgm", "bnscale"]
KSELECT_TARGET_S = 600.0


# --------------------------------------------------------------------------------------------
# straightforward implementations
# --------------------------------------------------------------------------------------------
def hrank_naive(batches) -> np.ndarray:
    """HRank the straightforward way: ``numpy.linalg.matrix_rank`` of one map at a time."""
    total, n = None, 0
    for batch in batches:
        for image in batch.numpy():
            ranks = np.array([np.linalg.matrix_rank(fmap) for fmap in image], dtype=np.float64)
            total = ranks if total is None else total + ranks
            n += 1
    return total / n


NAIVE_TAP_SCORES = {
    "hrank": hrank_naive,
    "cfdp": naive_cfdp.channel_scores,
    "dct": naive_dct.channel_scores,
    "cdp": lambda batches: naive_cdp.tfidf_scores(naive_cdp.document_activations(batches)),
    "chip": naive_chip.channel_scores,
    "apoz": naive_apoz.channel_scores,
    "meanact": naive_meanact.channel_scores,
}
NAIVE_METHODS = (*NAIVE_TAP_SCORES, "rgd", "taylor", "fpgm", "bnscale")


def naive_scores(method: str, spec, model: nn.Module, ff: "FirstImages", batch_size: int,
                 images: tuple[torch.Tensor, torch.Tensor]) -> dict[str, np.ndarray]:
    """Scores of every prunable group with the straightforward per-map (per-filter) code, taps
    (writers) combined as ``score_groups`` combines them. RGD: the similarity is naive, the
    decomposition shared; Taylor: the terms come from one backward pass per image of ``images``
    (the first ``ff.first``), not from the feature file."""
    kind = tap_kind(method)

    def maps(group: str, tap: str, n: int | None = None):
        return ff.batches(tap, batch_size, images=n, channels=spec.groups[group].tap_slices.get(tap))

    if method == "taylor":
        x, y = images[0][: ff.first], images[1][: ff.first]
        terms = naive_taylor.terms(model, x, y, CLASSIFICATION.loss, list(taylor_taps_for(spec, {"act_grad"})))
    scores = {}
    for g in spec.prunable_groups():
        taps = spec.groups[g].taps[kind] if kind else ()
        group = GroupInputs(g, spec, model, kind)
        if method == "rgd":
            p = resolved_params("rgd")
            sim = rgd.group_similarity([naive_rgd.similarity(maps(g, t, p["images"]), hash_size=p["hash_size"])
                                        for t in taps])
            norms = np.sum([f.abs().sum(1).double().numpy() for f in group.filters()], axis=0)
            scores[g] = rgd.ranking_scores(rgd.decompose(sim, norms, p["threshold"])[1], norms)
        elif method == "taylor":
            part = spec.groups[g].tap_slices
            scores[g] = combine([naive_taylor.channel_scores(terms[t][:, slice(*part[t]) if t in part else slice(None)])
                                 for t in taps])
        elif method == "fpgm":
            scores[g] = np.sum([naive_fpgm.distance_sums(f.numpy()) for f in group.filters()], axis=0)
        elif method == "bnscale":
            scores[g] = naive_bnscale.channel_scores([bn.weight.detach()[part].numpy()
                                                      for bn, part in group.batch_norms()])
        else:
            scores[g] = combine([NAIVE_TAP_SCORES[method](maps(g, t)) for t in taps])
    return scores


# --------------------------------------------------------------------------------------------
# measurements, each run by in_fresh_process
# --------------------------------------------------------------------------------------------
class FirstImages(FeatureFile):
    """A feature file seen through its first ``first`` images."""

    def __init__(self, path: Path, n: int):
        super().__init__(path)
        self.first = min(n, self.n_images)

    def batches(self, tap: str, batch_size: int = 64, images: int | None = None, channels=None):
        return super().batches(tap, batch_size, min(images or self.first, self.first), channels)

    def taylor_terms(self, tap: str, channels=None) -> np.ndarray:
        return super().taylor_terms(tap, channels)[: self.first]

    @property
    def labels(self) -> np.ndarray:
        return super().labels[: self.first]


def _load_weights(path: Path) -> nn.Module:
    model = build("resnet56")
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def run_scoring(job: dict) -> dict:
    """Score all groups with the fast method (``score_groups``) or the straightforward code."""
    model = _load_weights(job["weights"])
    spec = model.channel_spec()
    with FirstImages(job["features"], job["images"]) as ff:
        with measured() as m:
            if job["naive"]:
                scores = naive_scores(job["method"], spec, model, ff, job["batch_size"], job["sample"])
            else:
                scores = score_groups(job["method"], spec, model, ff, batch_size=job["batch_size"]).scores
    return {**m, "scores": scores}


def _stop_joblib_workers() -> None:
    """Shut down joblib's worker processes, which otherwise idle for 300 s and keep this process
    from exiting (a multiprocessing child joins its children)."""
    get_reusable_executor().shutdown(wait=True)


def run_fpfmc_pipeline(job: dict) -> dict:
    """The pipeline's FP-FMC rules over all act taps: kselect, cluster, sort, each timed."""
    cfg = cfglib.load([CONFIG])
    work = Path(job["workdir"])
    with measured() as kselect:
        fpfmc_kselect(cfg, MODEL, job["features"], work / "kselect.h5", workers=job["workers"])
    with measured() as clustering:
        fpfmc_cluster(cfg, work / "kselect.h5", work / "labels.h5")
    with measured() as sort:
        fpfmc_sort(cfg, MODEL, work / "labels.h5", work / "scores.npz")
    _stop_joblib_workers()
    return {"kselect": kselect, "cluster": clustering, "sort": sort}


def run_fpfmc_compare(job: dict) -> dict:
    """One tap: FP-FMC fast (all steps) against scikit-learn per image, plus scikit-learn's
    KMeans/silhouette on the fast embedding (to tell t-SNE differences from K-selection ones)."""
    params, workers = resolved_params("fpfmc"), job["workers"]
    seed = params["seed"]
    with FeatureFile(job["features"]) as ff:
        n = min(params["images"], ff.n_images)
        maps = torch.cat(list(ff.batches(job["tap"], images=n, channels=job["channels"]))).numpy()
    with measured() as fast:
        coords, inlier = fpfmc.embed(maps, seed=seed, workers=workers)
        k, per_image = fpfmc.select_k(coords, inlier, seed=seed, workers=workers)
        ri = fpfmc.redundancy_index(fpfmc.cluster(coords, inlier, k, seed=seed))
    with measured() as sk:
        sk_coords, sk_inlier = naive_fpfmc.embed(maps, seed)
        sk_k, sk_per_image = naive_fpfmc.select_k(sk_coords, sk_inlier, seed)
        sk_ri = naive_fpfmc.redundancy_index(naive_fpfmc.cluster(sk_coords, sk_inlier, sk_k, seed))
    same_k, same_per_image = naive_fpfmc.select_k(coords, inlier, seed)
    _stop_joblib_workers()
    keep = keep_count(maps.shape[1], FPFMC_RATE)
    kept, sk_kept = set(fpfmc.keep_order(ri)[:keep].tolist()), set(np.argsort(sk_ri, kind="stable")[:keep].tolist())
    return {
        "channels": maps.shape[1], "images": n, "fast_s": fast["seconds"], "sklearn_s": sk["seconds"],
        "k": k, "sk_k": sk_k, "same_k": same_k,
        "per_image_agree": float(np.mean(per_image == sk_per_image)),
        "same_per_image_agree": float(np.mean(per_image == same_per_image)),
        "jaccard": len(kept & sk_kept) / len(kept | sk_kept),
    }


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------
def max_rel_diff(fast: dict[str, np.ndarray], naive: dict[str, np.ndarray]) -> float:
    """max over groups of max_c |fast − naive| / max_c |naive| (relative to the group's scale)."""
    worst = 0.0
    for g, ref in naive.items():
        scale = float(np.max(np.abs(ref))) or 1.0
        worst = max(worst, float(np.max(np.abs(np.asarray(fast[g]) - ref))) / scale)
    return worst


def speedup(ratio: float) -> str:
    return f"{ratio:.1f}×" if ratio < 10 else f"{ratio:.0f}×"


def memory_cell(m: dict) -> str:
    return f"{m['peak_rss_mib']:.0f} (+{m['peak_rss_mib'] - m['rss_start_mib']:.0f})"


def target_line(what: str, seconds: float, limit: float, images: int, detail: str = "") -> str:
    """The targets are stated for 128 images on 2 CPU cores."""
    if images != 128:
        return f"Target ({what}, 128 images): not checked at {images} images"
    verdict = "met" if seconds < limit else "**not met**"
    return f"Target ({what}, 128 images): {verdict} ({detail}{seconds:.1f} s)"


def bench_direct(args, spec, features: Path, weights: Path, batch_size: int,
                 images: tuple[torch.Tensor, torch.Tensor]) -> tuple[list, dict]:
    """Rows of the direct-method table, and each method's fast time."""
    rates = group_rates(spec, RATES)
    job = {"features": features, "weights": weights, "batch_size": batch_size, "sample": images}
    rows, fast_times = [], {}
    for method in args.methods:
        fast = in_fresh_process(run_scoring, {**job, "method": method, "naive": False, "images": args.images})
        fast_times[method] = fast["seconds"]
        print(f"{method}: fast {fast['seconds']:.2f} s", flush=True)
        if method not in NAIVE_METHODS:
            rows.append([method, f"{fast['seconds']:.2f}", "—", "—", "—", "—", "—", memory_cell(fast)])
            continue
        n = args.images if method in args.naive_all else min(args.naive_images, args.images)
        naive = in_fresh_process(run_scoring, {**job, "method": method, "naive": True, "images": n})
        reference = fast if n == args.images else in_fresh_process(
            run_scoring, {**job, "method": method, "naive": False, "images": n})
        naive_s = naive["seconds"] * args.images / n
        naive_cell = f"{naive_s:.1f}" if n == args.images else f"{naive_s:.1f} (extrapolated from {n})"
        same = (kept_from_scores(spec, reference["scores"], rates) == kept_from_scores(spec, naive["scores"], rates))
        diff = max_rel_diff(reference["scores"], naive["scores"])
        print(f"{method}: straightforward {naive['seconds']:.2f} s on {n} images; "
              f"max rel. diff {diff:.1e}; kept sets equal: {same}", flush=True)
        rows.append([method, f"{fast['seconds']:.2f}", naive_cell, speedup(naive_s / fast["seconds"]),
                     f"{diff:.1e}", "yes" if same else "**no**", n, memory_cell(fast)])
    return rows, fast_times


def bench_fpfmc(args, spec, features: Path, workdir: Path) -> tuple[dict, list]:
    """FP-FMC pipeline timings, and the rows of the fast-vs-scikit-learn table."""
    pipeline = in_fresh_process(run_fpfmc_pipeline, {"features": features, "workdir": workdir,
                                                     "workers": args.fpfmc_workers})
    print("fpfmc: kselect {:.1f} s, cluster {:.1f} s, sort {:.1f} s".format(
        *(pipeline[s]["seconds"] for s in ("kselect", "cluster", "sort"))), flush=True)
    taps = [(g, t) for g, ts in spec.taps("act").items() for t in ts]
    picks = np.unique(np.linspace(0, len(taps) - 1, args.fpfmc_subset_layers).round().astype(int))
    rows = []
    for group, tap in (taps[i] for i in picks):
        r = in_fresh_process(run_fpfmc_compare, {"features": features, "tap": tap, "workers": args.fpfmc_workers,
                                                 "channels": spec.groups[group].tap_slices.get(tap)})
        print(f"fpfmc {tap}: fast {r['fast_s']:.1f} s, scikit-learn {r['sklearn_s']:.1f} s, "
              f"K {r['k']}/{r['sk_k']}, Jaccard {r['jaccard']:.2f}", flush=True)
        rows.append([tap, r["channels"], r["images"], f"{r['fast_s']:.1f}", f"{r['sklearn_s']:.1f}",
                     speedup(r["sklearn_s"] / r["fast_s"]), f"{r['k']} / {r['sk_k']} / {r['same_k']}",
                     f"{r['per_image_agree']:.0%}", f"{r['same_per_image_agree']:.0%}", f"{r['jaccard']:.2f}"])
    return pipeline, rows


def main() -> None:
    parser = resnet56_parser(__doc__)
    parser.add_argument("--images", type=int, default=128, help="images scored (default 128)")
    parser.add_argument("--naive-images", type=int, default=8,
                        help="images for the slow straightforward runs (those not in --naive-all); "
                             "their time is extrapolated linearly to --images (default 8)")
    parser.add_argument("--naive-all", type=lambda s: s.split(","), default=NAIVE_ALL,
                        help=f"comma-separated methods whose straightforward run uses all --images "
                             f"(default {','.join(NAIVE_ALL)}; cfdp's takes ~4 s per image, chip's ~1 s)")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(DIRECT_METHODS),
                        help=f"comma-separated methods to time (default all but FP-FMC: {','.join(DIRECT_METHODS)})")
    parser.add_argument("--no-fpfmc", action="store_true", help="leave out FP-FMC's rules and its comparison")
    parser.add_argument("--fpfmc-subset-layers", type=int, default=3,
                        help="act taps (evenly spread over the network) compared with scikit-learn (default 3)")
    parser.add_argument("--fpfmc-workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results/bench/methods.md")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 8 images, 2 for the slow straightforward runs, 2 FP-FMC taps")
    args = parser.parse_args()
    unknown = sorted(set(args.methods) - set(DIRECT_METHODS))
    if unknown:
        parser.error(f"--methods: {unknown[0]!r} is not one of {', '.join(DIRECT_METHODS)}")
    if args.quick:
        args.images, args.naive_images, args.fpfmc_subset_layers = 8, 2, 2

    host = machine()
    cfg = cfglib.load([CONFIG])
    model, model_source = load_model(args.checkpoint.resolve())
    images = load_images(cfg, args.data_root.expanduser(), args.images)
    spec = model.channel_spec()
    batch_size = cfg["features"]["batch_size"]
    with tempfile.TemporaryDirectory(prefix="bench-methods-") as tmp:
        work = Path(tmp)
        weights, features = work / "weights.pt", work / "features.h5"
        torch.save(model.state_dict(), weights)
        attrs = {"arch": "resnet56", "model": MODEL, "dataset": "cifar10", "seed": cfg["features"]["seed"]}
        start = time.perf_counter()
        extract(model, images.batches(batch_size), images.indices, taps_for(spec, KINDS), work / "maps.h5", attrs)
        maps_s = time.perf_counter() - start
        (work / "maps.h5").unlink()
        start = time.perf_counter()
        extract(model, images.batches(batch_size), images.indices, taps_for(spec, KINDS), features, attrs,
                taylor_taps=taylor_taps_for(spec, KINDS), loss=CLASSIFICATION.loss)
        extract_s = time.perf_counter() - start
        size_mib = features.stat().st_size / 2**20
        print(f"extracted act+conv taps of {args.images} images in {maps_s:.1f} s, with Taylor terms in "
              f"{extract_s:.1f} s ({size_mib:.0f} MiB)", flush=True)
        tensors = tuple(map(torch.cat, zip(*images.batches(batch_size))))
        direct_rows, fast_times = bench_direct(args, spec, features, weights, batch_size, tensors)
        pipeline, fpfmc_rows = (None, []) if args.no_fpfmc else bench_fpfmc(args, spec, features, work)

    slowest = max(fast_times, key=fast_times.get)
    n_act_taps = sum(len(t) for t in spec.taps("act").values())
    report = "\n".join([
        f"# Method scoring benchmark: ResNet-56, {args.images} images",
        "",
        f"- machine: {host}",
        f"- model: {model_source}",
        f"- images: {images.source}",
        f"- features: act + conv taps of all {len(spec.prunable_groups())} prunable groups, float32, "
        f"and the Taylor terms of the act taps: {size_mib:.0f} MiB, extracted in {extract_s:.1f} s "
        f"({maps_s:.1f} s without the Taylor terms' backward pass)",
        "- every measurement runs in a fresh process; times are wall-clock seconds of the whole "
        "network's scoring (reading the HDF5 file included)",
        "",
        "## Direct methods",
        "",
        markdown_table(["method", "fast time (s)", "straightforward time (s)", "speed-up", "max rel. score diff",
                        f"kept sets equal at {RATES}", "images compared", "peak RSS MiB (+ during scoring)"],
                       direct_rows),
        "",
        "Max rel. score diff: over groups, max |fast − straightforward| / max |straightforward|, on the "
        "images compared (the fast method is re-run on them when the straightforward run used fewer). "
        "Straightforward: benchmarks/naive/ (HRank: numpy.linalg.matrix_rank per map), taps combined "
        "as score_groups does; RGD's decomposition is shared, only its similarity is naive; Taylor's fast "
        "time scores the stored terms (their backward pass is in the extraction time above), its "
        "straightforward time includes one forward and backward pass per image.",
        "",
        target_line(f"every direct method under {DIRECT_TARGET_S:.0f} s", fast_times[slowest], DIRECT_TARGET_S,
                    args.images, f"slowest: {slowest}, "),
        "",
    ])
    if pipeline is not None:
        report += "\n" + fpfmc_section(args, pipeline, fpfmc_rows, n_act_taps)
    write_report(report, args.out)


def fpfmc_section(args, pipeline: dict, fpfmc_rows: list, n_act_taps: int) -> str:
    """The report's FP-FMC part: its rules' times and the comparison with scikit-learn."""
    return "\n".join([
        "## FP-FMC",
        "",
        markdown_table(["pipeline rule", "time (s)", "peak RSS MiB (+ during the rule), main process"],
                       [[f"{s} ({n_act_taps} act taps, {args.fpfmc_workers} workers)" if s == "kselect" else s,
                         f"{pipeline[s]['seconds']:.1f}", memory_cell(pipeline[s])]
                        for s in ("kselect", "cluster", "sort")]),
        "",
        target_line(f"kselect of all layers under {KSELECT_TARGET_S / 60:.0f} min", pipeline["kselect"]["seconds"],
                    KSELECT_TARGET_S, args.images),
        "",
        markdown_table(["tap", "C", "images", "fast, all steps (s)", "scikit-learn, all steps (s)", "speed-up",
                        "layer K: fast / sklearn / sklearn on fast t-SNE", "per-image K agree",
                        "per-image K agree, same t-SNE", f"kept-set Jaccard at {FPFMC_RATE}"], fpfmc_rows),
        "",
        "Fast: fmprune.methods.fpfmc (embed, select_k with the workers above, cluster, redundancy_index); "
        "scikit-learn: benchmarks/naive/fpfmc.py per image (TSNE, KMeans, silhouette_score, set-based "
        "redundancy index). \"same t-SNE\" runs scikit-learn's KMeans/silhouette on the fast embedding, "
        "separating K-selection agreement from t-SNE differences (float64 vs sklearn's float32).",
        "",
    ])


if __name__ == "__main__":
    main()
