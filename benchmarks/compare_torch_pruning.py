"""fmprune's traced channel groups next to Torch-Pruning's dependency groups, per torchvision model.

A group is compared by the set of weighted layers (conv, transposed conv, linear) whose output
channels it cuts: fmprune's producers of one prunable group (a residual stream: every conv
writing it; a depthwise conv: the group it follows), Torch-Pruning's out-channel pruning
functions of one group of ``DependencyGraph.get_all_groups`` (rooted at every conv and linear
layer; the layers writing the model's output ignored). Counted per model: groups both form
alike, fmprune's only (groups Torch-Pruning merges otherwise or does not form) and Torch-Pruning's
only (usually what fmprune keeps whole on purpose: channels normalised by LayerNorm or GroupNorm,
grouped convs; the first few are named with fmprune's reason).

Torch-Pruning is not a dependency of fmprune (nothing in the pipeline imports it); install it
beside the environment to run this comparison::

    .venv/bin/pip install torch-pruning      # or pip install --target DIR and PYTHONPATH=DIR
    .venv/bin/python benchmarks/compare_torch_pruning.py --input-size 64 > results/bench/torch_pruning.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ``benchmarks.common`` when run as a script

from benchmarks.common import machine, markdown_table  # noqa: E402
from fmprune.methods import WEIGHTED_WRITERS  # noqa: E402
from fmprune.models import build, register  # noqa: E402

# The models issue 10's tests prune (tests/test_trace.py), at their smallest side of 64
MODELS = ["resnet18", "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn", "densenet121", "googlenet", "inception_v3",
          "mobilenet_v2", "mobilenet_v3_large", "mnasnet1_0", "efficientnet_b0", "regnet_y_400mf", "squeezenet1_1",
          "convnext_tiny", "alexnet"]
MIN_SIDE = {"inception_v3": 75}


def fmprune_groups(model: nn.Module) -> tuple[dict[frozenset, str], dict[frozenset, str]]:
    """(prunable, kept whole): writer set -> group name (kept whole: -> its reason)."""
    spec, weighted = model.channel_spec(), {n for n, m in model.named_modules() if isinstance(m, WEIGHTED_WRITERS)}
    prunable, whole = {}, {}
    for g, group in spec.groups.items():
        writers = frozenset(m for m in spec.producers(g) if m in weighted)
        if writers:
            (prunable if group.prunable else whole)[writers] = g if group.prunable else group.reason
    return prunable, whole


def torch_pruning_groups(tp, model: nn.Module, example: torch.Tensor, ignored: list[nn.Module]) -> set[frozenset]:
    names = {m: n for n, m in model.named_modules()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    groups = set()
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=WEIGHTED_WRITERS):
        writers = {names[dep.target.module] for dep, _ in group
                   if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, WEIGHTED_WRITERS)}
        if writers:
            groups.add(frozenset(writers))
    return groups


def compare(tp, builder: str, side: int) -> list:
    arch = f"torchvision/{builder}"
    register(arch, num_classes=1000, input_size=side)
    torch.manual_seed(0)
    model = build(arch).eval()
    ours, whole = fmprune_groups(model)
    output = [m for m, reason in whole.items() if reason == "it reaches the model's output"]
    modules = dict(model.named_modules())
    try:
        theirs = torch_pruning_groups(tp, model, torch.randn(1, 3, side, side), [modules[n] for w in output for n in w])
    except Exception as exc:  # noqa: BLE001 - Torch-Pruning's failure is a result of the comparison
        return [builder, len(ours), f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}", "", "", "", ""]
    both, only_ours, only_theirs = set(ours) & theirs, set(ours) - theirs, theirs - set(ours)
    why = sorted({whole.get(w, "not a group of fmprune's (its writers are split or merged otherwise)").split(" (")[0]
                  for w in only_theirs})
    return [builder, len(ours), len(theirs), len(both), len(only_ours), len(only_theirs),
            "; ".join(why[:3]).replace("|", "/")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("builders", nargs="*", default=MODELS)
    args = parser.parse_args()
    try:
        import torch_pruning as tp
    except ImportError:
        sys.exit("compare_torch_pruning: torch_pruning is not installed (pip install torch-pruning; see the docstring)")
    rows = []
    for builder in args.builders:
        rows.append(compare(tp, builder, max(args.input_size, MIN_SIDE.get(builder, 0))))
        print(f"{builder}: {rows[-1][1:6]}", file=sys.stderr, flush=True)
    print(f"Traced groups vs Torch-Pruning {tp.__version__} at {args.input_size}×{args.input_size}; {machine()}\n")
    print(markdown_table(["model", "fmprune groups", "TP groups", "alike", "fmprune only", "TP only",
                          "TP only: fmprune keeps them whole because"], rows))


if __name__ == "__main__":
    main()
