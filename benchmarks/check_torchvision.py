"""``fmprune check`` on every torchvision classification builder: verdict and time, as a Markdown table.

Each builder (random weights; nothing is downloaded) is checked in this process, one after the
other, at ``--input-size`` (inception_v3, which needs 75, at the larger of the two): traced,
pruned by a random plan, and proved pruned(x) == masked(x) in float64 with the params and MACs
against masking (:func:`fmprune.check.check`). The time is the whole check's wall time. The
check holds four float64 copies of the model, so builders above ``--max-params`` (the parameter
count torchvision's weight metadata gives) are listed as not checked.

    .venv/bin/python benchmarks/check_torchvision.py --input-size 64 > table.md
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ``benchmarks.common`` when run as a script

from benchmarks.common import machine, markdown_table  # noqa: E402
from fmprune.check import check  # noqa: E402

MIN_SIDE = {"inception_v3": 75}


def num_params(builder: str) -> int:
    """Parameters of ``builder`` from its weights' metadata (no model is built)."""
    return next(iter(torchvision.models.get_model_weights(builder))).meta["num_params"]


def verdict(line: str) -> str:
    """The check line's verdict: ``ok``, or what stopped it (the op and module, or the failure)."""
    status, _, rest = line.split(";")[0].partition(" ")  # "<status> <arch>: <reason>"
    reason = rest.partition(": ")[2]
    return status if status == "ok" else reason if reason.startswith(status) else f"{status}: {reason}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--max-params", type=float, default=150e6)
    parser.add_argument("builders", nargs="*", help="builders to check (default: every classification builder)")
    args = parser.parse_args()
    header = f"`fmprune check` at {args.input_size}×{args.input_size}; {machine()}"
    rows = []
    for builder in args.builders or torchvision.models.list_models(module=torchvision.models):
        params = num_params(builder)
        if params > args.max_params:
            rows.append([builder, f"not checked: {params / 1e6:.0f}M parameters", "", ""])
            continue
        start = time.perf_counter()
        _, line = check(f"torchvision/{builder}", max(args.input_size, MIN_SIDE.get(builder, 0)))
        seconds = time.perf_counter() - start
        groups = line.split(" groups prunable")[0].rsplit(" ", 1)[1] if " groups prunable" in line else ""
        rows.append([builder, verdict(line).replace("|", "/"), groups, f"{seconds:.1f}"])
        print(f"{builder}: {line}", file=sys.stderr, flush=True)  # progress: the run takes minutes
        gc.collect()
    print(header + "\n\n" + markdown_table(["builder", "verdict", "prunable / groups", "check (s)"], rows))


if __name__ == "__main__":
    main()
