"""``fmprune``: every pipeline step as a command, so each can run without Snakemake.

Bad input ends with one line, ``fmprune: error: …``, and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import FmpruneError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fmprune", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def step(name: str, help: str, *args: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        s.add_argument("--config", nargs="+", required=True, type=Path, help="config file(s), merged in order")
        s.add_argument("--model", required=True, help="a model name under models:")
        for a in args:
            kind = {"method": str, "plan": str, "seed": int, "threads": int}.get(a, Path)
            s.add_argument(f"--{a}", required=a not in ("features", "threads"), type=kind)
        return s

    c = sub.add_parser("count", help="params and MACs (both conventions) of an architecture, as JSON")
    c.add_argument("arch", nargs="?", help="a registered architecture, torchvision/<builder>, file.py:factory or "
                   "module:factory (not with --model-file)")
    c.add_argument("--input-size", type=int, help="traced architectures: side of the input to count on (default 224)")
    c.add_argument("--rates", help="prune first by this rate list (the seeds' syntax), keeping the first channels")
    c.add_argument("--model-file", type=Path, help="count a saved model instead")
    ck = sub.add_parser("check", help="can fmprune prune this model? trace, prune a random plan, prove pruned == masked")
    ck.add_argument("arch", nargs="+", help="a registered architecture, torchvision/<builder> (random weights), "
                    "path/to/file.py:factory or package.module:factory")
    ck.add_argument("--input-size", type=int, help="side of the square test input (default: the architecture's, 224)")
    ex = sub.add_parser("export", help="a saved model as TorchScript and ONNX (checked against PyTorch), timed per "
                                       "runtime on the CPU; writes model.ts, model.onnx, export.json")
    ex.add_argument("--model-file", required=True, type=Path, help="a model file the pipeline saved (e.g. pruned.pt)")
    ex.add_argument("--out-dir", required=True, type=Path)
    ex.add_argument("--runtimes", nargs="*", default=None,
                    help="runtimes to time (default: eager channels_last compile torchscript onnxruntime; none: only export)")
    ex.add_argument("--threads", type=int, help="CPU threads, pinned while timing (default: torch's)")
    ex.add_argument("--batch", type=int, default=64, help="batch of the throughput figure (default 64)")
    ex.add_argument("--repeats", type=int, default=10, help="timed passes per figure (default 10)")
    lay = sub.add_parser("layout", help="the rate-list layout of an architecture: entry -> groups -> channels, modules")
    lay.add_argument("arch", help="a registered architecture, torchvision/<builder>, file.py:factory or module:factory")
    lay.add_argument("--input-size", type=int, help="traced architectures: side of the input to trace on (default 224)")

    step("baseline", "import or train the baseline model", "out", "workdir")
    step("evaluate", "accuracy and cost of a saved model", "model-file", "out")
    step("extract", "feature maps of the fixed sample to HDF5", "model-file", "out")
    step("score", "channel scores of one method", "method", "model-file", "features", "out")
    step("fpfmc-kselect", "FP-FMC step 0: embeddings and K per layer", "features", "out", "threads")
    step("fpfmc-cluster", "FP-FMC step 1: cluster labels per image", "kselect", "out")
    step("fpfmc-sort", "FP-FMC step 2: redundancy index -> scores", "labels", "out")
    step("plan", "kept channel indices of one operating point", "plan", "scores", "out")
    step("prune", "physical pruning + evaluation before fine-tuning", "model-file", "plan-file", "out", "report")
    step("finetune", "resumable fine-tuning, writes acc.json", "method", "plan", "seed", "pruned", "pruned-report",
         "baseline-report", "features", "out-dir")
    v = sub.add_parser("validate", help="check a config and print it with defaults filled in")
    v.add_argument("--config", nargs="+", required=True, type=Path)
    t = sub.add_parser("table", help="summary table of finished runs")
    t.add_argument("--acc", nargs="*", type=Path, default=[])
    t.add_argument("--baselines", nargs="*", type=Path, default=[])
    t.add_argument("--csv", required=True, type=Path)
    t.add_argument("--md", required=True, type=Path)
    cmp = sub.add_parser("compare", help="equal-cost comparison of methods on one model: table, Pareto plot, kept-set overlap")
    cmp.add_argument("--acc", nargs="*", type=Path, default=[], help="acc.json of every run")
    cmp.add_argument("--plans", nargs="*", type=Path, default=[], help="plan.json of every (method, plan)")
    cmp.add_argument("--baseline", required=True, type=Path, help="the model's baseline acc.json")
    cmp.add_argument("--out-dir", required=True, type=Path)
    pt = sub.add_parser("paper-table", help="the published rows beside this config's results (nothing needs to have run)")
    pt.add_argument("--config", nargs="+", required=True, type=Path)
    pt.add_argument("--paper", type=Path, help="published figures (default: workflow/resources/paper_results.csv)")
    pt.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    pt.add_argument("--csv", required=True, type=Path)
    pt.add_argument("--md", required=True, type=Path)
    return p


def _count(args) -> dict:
    import torch

    from .counting import count
    from .models import build, register
    from .plan import group_rates, keep_count
    from .surgery import load_pruned, prune_

    if args.model_file:
        net = load_pruned(args.model_file)
        return count(net, net.meta["arch"])
    if args.arch is None:
        raise FmpruneError("count needs an architecture or --model-file")
    if args.input_size:
        register(args.arch, input_size=args.input_size)
    net = build(args.arch)
    if args.rates is not None:  # "" is a malformed rate list, not "no rates"
        spec = net.channel_spec()
        rates = group_rates(spec, args.rates)
        prune_(net, {g: torch.arange(keep_count(spec.groups[g].channels, r)) for g, r in rates.items()})
    return {"arch": args.arch, **count(net, args.arch)}


def _relaunch_distributed(cfg: dict, model: str, command: str, argv: list[str], plan: str | None = None) -> None:
    """A training step whose recipe says ``gpus: N`` (N > 1) replaces this process by
    ``torchrun --standalone --nproc_per_node N -m fmprune.cli <the same arguments>`` (one node,
    N processes: DistributedDataParallel over N GPUs with nccl, or N CPU processes with gloo).
    torchrun also forwards SIGUSR1 (SLURM's warning signal) to the workers, not only SIGTERM."""
    import os

    m = cfg["models"][model]
    if command == "baseline" and m.get("checkpoint"):
        return
    from .config import finetune_recipe

    recipe = finetune_recipe(cfg, model, plan) if command == "finetune" else m["baseline_recipe"]
    n = cfg["recipes"][recipe].get("gpus", 1)
    if n <= 1 or "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", "-m", "fmprune.cli", *argv]
    print(f"fmprune: {command} on {n} processes: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="fmprune: %(levelname)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    from .train import Preempted

    try:
        return _run(args, argv)
    except FmpruneError as exc:
        print(f"fmprune: error: {exc}", file=sys.stderr)
        return 2
    except Preempted as exc:  # checkpoint written: a retry (Snakemake's retries) resumes from it
        print(f"fmprune: {exc}", file=sys.stderr)
        return exc.code


def _run(args, argv: list[str]) -> int:
    from . import config as cfglib
    from . import pipeline

    if args.command == "count":
        print(json.dumps(_count(args), indent=2))
        return 0
    if args.command == "check":
        from .check import check

        passed = True
        for arch in args.arch:
            ok, line = check(arch, args.input_size)
            print(line, flush=True)
            passed &= ok
        return 0 if passed else 1
    if args.command == "export":
        from .export import RUNTIMES, export_model

        runtimes = RUNTIMES if args.runtimes is None else args.runtimes
        print(json.dumps(export_model(args.model_file, args.out_dir, runtimes, args.threads, args.batch, args.repeats),
                         indent=2))
        return 0
    if args.command == "layout":
        from .check import layout

        print("\n".join(layout(args.arch, args.input_size)))
        return 0
    if args.command == "table":
        from . import tables

        tables.write(tables.summary(args.acc, args.baselines), args.csv, args.md)
        return 0
    if args.command == "compare":
        from .compare import compare

        compare(args.acc, args.plans, args.baseline, args.out_dir)
        return 0
    cfg = cfglib.load(args.config, strict=args.command == "validate")  # jobs: a missing data root fails on reading
    if args.command == "validate":
        print(json.dumps(cfg, indent=2))
        return 0
    if args.command == "paper-table":
        from . import tables

        paper = args.paper or tables.PAPER_RESULTS
        tables.write_paper(tables.paper_table(cfg, paper, args.results), args.csv, args.md)
        return 0
    if args.model not in cfg["models"]:
        raise FmpruneError(f"no model named {args.model!r} under models: in {', '.join(map(str, args.config))}")
    m = args.model
    if args.command in ("baseline", "finetune"):
        _relaunch_distributed(cfg, m, args.command, argv, getattr(args, "plan", None))
    if args.command == "baseline":
        pipeline.baseline(cfg, m, args.out, args.workdir)
    elif args.command == "evaluate":
        pipeline.evaluate_model(cfg, m, args.model_file, args.out)
    elif args.command == "extract":
        pipeline.extract_features(cfg, m, args.model_file, args.out)
    elif args.command == "score":
        pipeline.score(cfg, m, args.method, args.model_file, args.features, args.out)
    elif args.command == "fpfmc-kselect":
        if args.features is None:
            raise FmpruneError("fpfmc-kselect needs --features")
        pipeline.fpfmc_kselect(cfg, m, args.features, args.out, args.threads or 1)
    elif args.command == "fpfmc-cluster":
        pipeline.fpfmc_cluster(cfg, args.kselect, args.out)
    elif args.command == "fpfmc-sort":
        pipeline.fpfmc_sort(cfg, m, args.labels, args.out)
    elif args.command == "plan":
        pipeline.make_plan(cfg, m, args.plan, args.scores, args.out)
    elif args.command == "prune":
        pipeline.prune(cfg, m, args.model_file, args.plan_file, args.out, args.report)
    elif args.command == "finetune":
        pipeline.finetune(cfg, m, args.method, args.plan, args.seed, args.pruned, args.pruned_report,
                          args.baseline_report, args.features, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
