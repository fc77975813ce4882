"""Does pruning make inference faster? Measured speed-up against the MAC reduction, per runtime.

What it measures
----------------
For each architecture (ResNet-56 by default; ``torchvision/resnet18`` or
``torchvision/mobilenet_v2`` where ``fmprune.models.build`` traces them), seeded random weights
(timing does not depend on the values) are pruned to each ``--cuts`` fraction of the conv +
linear MACs by a ``target_reduction`` plan (one scale factor over a uniform shape: the equal-widths
series, whose widths are those of every method; the random criterion picks which channels),
without and with ``round_to: 8``. Each model, the baseline included, is timed under each runtime
of :mod:`fmprune.export` (eager, channels_last, torch.compile when it works, TorchScript,
onnxruntime) at ``--threads`` pinned threads on the CPU:

* throughput at ``--batch`` images per pass, and batch-1 latency: medians of ``--repeats``
  timed passes after ``--warmup`` untimed ones, with the interquartile range (IQR);
* speed-up = baseline time / pruned time under the same runtime, and its efficiency =
  speed-up / MAC reduction factor (baseline MACs / pruned MACs): 1.0 means time fell as much as
  the MACs did. The baseline is timed before and after the pruned models; the table uses their
  mean and states the drift between the two (a shared machine's noise).

How to run (from the repository root)::

    .venv/bin/python benchmarks/bench_speedup.py            # full: 3 cuts × 2 roundings × 5 runtimes
    .venv/bin/python benchmarks/bench_speedup.py --cuts 0.5 --runtimes eager onnxruntime --repeats 2   # smoke
    .venv/bin/python benchmarks/bench_speedup.py --archs torchvision/resnet18 torchvision/mobilenet_v2 \
        --size 112 --batch 16 --out results/bench/speedup-torchvision.md   # traced models, at a CPU-sized side

Writes results/bench/speedup.md (and .json beside it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # ``benchmarks.common`` when run as a script

from benchmarks.common import machine, markdown_table, write_report  # noqa: E402
from fmprune.export import RUNTIMES, runtime_speeds  # noqa: E402
from fmprune.models import build, input_size, is_traced, register  # noqa: E402
from fmprune.plan import macs_of, plan_kept  # noqa: E402
from fmprune.surgery import pruned_copy  # noqa: E402

ROUNDINGS = (1, 8)


def pruned_models(arch: str, cuts: list[float]):
    """(cut, round_to, model, MAC reduction factor) for every cut and rounding, the baseline first."""
    torch.manual_seed(0)
    net = build(arch).eval()
    spec = net.channel_spec()
    rng = np.random.default_rng(0)
    scores = {g: rng.random(spec.groups[g].channels) for g in spec.prunable_groups()}
    base = macs_of(arch, {})
    yield 0.0, 1, net, 1.0
    for cut in cuts:
        for multiple in ROUNDINGS:
            definition = {"target_reduction": cut, **({"round_to": multiple} if multiple > 1 else {})}
            kept, info = plan_kept(spec, "random", definition, scores, {})
            yield cut, multiple, pruned_copy(net, {g: torch.tensor(k) for g, k in kept.items()}), base / info["reached_macs"]


def measure_arch(arch: str, args) -> list[dict]:
    """One row per (model, runtime); the baseline's figures are the mean of a run before and after."""
    size = input_size(arch)

    def speeds(model):
        return runtime_speeds(model, size, args.runtimes, "cpu", args.threads, args.batch, args.repeats, args.warmup)

    models = list(pruned_models(arch, args.cuts))
    first = speeds(models[0][2])
    measured = [(cut, multiple, factor, speeds(model)) for cut, multiple, model, factor in models[1:]]
    last = speeds(models[0][2])
    rows = []
    for runtime in args.runtimes:
        if "error" in first[runtime]:
            rows.append({"arch": arch, "runtime": runtime, "error": first[runtime]["error"]})
            continue
        base = {k: (first[runtime][k] + last[runtime][k]) / 2 for k in ("throughput_ips", "latency_ms_b1")}
        drift = 100 * (last[runtime]["throughput_ips"] / first[runtime]["throughput_ips"] - 1)
        rows.append({"arch": arch, "runtime": runtime, "cut": 0.0, "round_to": 1, "mac_factor": 1.0,
                     **base, "throughput_iqr_ms": first[runtime]["throughput_iqr_ms"],
                     "latency_ms_b1_iqr": first[runtime]["latency_ms_b1_iqr"], "baseline_drift_pct": drift})
        for cut, multiple, factor, figures in measured:
            f = figures[runtime]
            if "error" in f:
                rows.append({"arch": arch, "runtime": runtime, "cut": cut, "round_to": multiple, "error": f["error"]})
                continue
            thr_speedup = f["throughput_ips"] / base["throughput_ips"]
            lat_speedup = base["latency_ms_b1"] / f["latency_ms_b1"]
            rows.append({"arch": arch, "runtime": runtime, "cut": cut, "round_to": multiple, "mac_factor": factor,
                         "throughput_ips": f["throughput_ips"], "throughput_iqr_ms": f["throughput_iqr_ms"],
                         "latency_ms_b1": f["latency_ms_b1"], "latency_ms_b1_iqr": f["latency_ms_b1_iqr"],
                         "throughput_speedup": thr_speedup, "throughput_efficiency": thr_speedup / factor,
                         "latency_speedup": lat_speedup, "latency_efficiency": lat_speedup / factor})
    return rows


def table(rows: list[dict], batch: int) -> str:
    header = ["arch", "runtime", "MAC cut", "round_to", "MAC ×", f"img/s (b{batch})", "IQR ms", "thr speed-up",
              "÷ MAC ×", "b1 ms", "IQR ms", "lat speed-up", "÷ MAC ×"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["arch"], r["runtime"], f"{100 * r.get('cut', 0):.0f}%", r.get("round_to", ""),
                         f"failed: {r['error']}", *[""] * 8])
            continue
        name = f"{100 * r['cut']:.0f}%" if r["cut"] else "baseline"
        ratios = ([f"{r['throughput_speedup']:.2f}", f"{r['throughput_efficiency']:.2f}"] if r["cut"]
                  else [f"drift {r['baseline_drift_pct']:+.1f}%", ""])
        lat = [f"{r['latency_speedup']:.2f}", f"{r['latency_efficiency']:.2f}"] if r["cut"] else ["", ""]
        body.append([r["arch"], r["runtime"], name, r["round_to"], f"{r['mac_factor']:.2f}", f"{r['throughput_ips']:.0f}",
                     f"{r['throughput_iqr_ms']:.2f}", *ratios, f"{r['latency_ms_b1']:.2f}",
                     f"{r['latency_ms_b1_iqr']:.3f}", *lat])
    return markdown_table(header, body)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["resnet56"],
                        help="architectures (e.g. torchvision/resnet18 torchvision/mobilenet_v2)")
    parser.add_argument("--cuts", nargs="+", type=float, default=[0.3, 0.5, 0.7], help="MAC reductions")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--size", type=int, help="input side of the traced (torchvision/…) architectures, "
                        "counted and timed at it (default: theirs, 224); hand-declared ones keep their papers' side")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads, pinned while timing")
    parser.add_argument("--batch", type=int, default=64, help="batch of the throughput figure")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per figure")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes before them")
    parser.add_argument("--out", type=Path, default=ROOT / "results/bench/speedup.md")
    args = parser.parse_args(argv)
    host = machine()
    for arch in args.archs:
        if args.size and is_traced(arch):
            register(arch, input_size=args.size)
    rows = [row for arch in args.archs for row in measure_arch(arch, args)]
    report = "\n\n".join([
        "# Measured speed-up of pruned models against their MAC reduction",
        f"{host}; timed at {args.threads} pinned threads on the CPU, throughput at batch {args.batch}, "
        f"inputs of side {', '.join(f'{input_size(a)} ({a})' for a in args.archs)}, "
        f"medians of {args.repeats} passes after {args.warmup} warm-up passes (IQR beside them); seeded random "
        "weights; `target_reduction` plans (equal widths), with and without `round_to: 8`.",
        table(rows, args.batch),
        "MAC × = baseline MACs / pruned MACs (after rounding); speed-up = baseline time / pruned time under "
        "the same runtime; ÷ MAC × = speed-up / MAC × (1.0: time fell as much as MACs). The baseline row's "
        "drift compares its runs before and after the pruned models.",
    ]) + "\n"
    write_report(report, args.out)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": host, "args": {k: str(v) for k, v in vars(args).items()},
                                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
