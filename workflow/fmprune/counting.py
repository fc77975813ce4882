"""Cost of a model on one input, in the conventions the papers mix.

``macs``      multiply-accumulates of every conv, transposed conv and linear layer (the papers'
              baseline "FLOPs"; grouped and depthwise convs count in/groups inputs per output).
``macs_thop`` the installed thop's count (0.1.1): it also charges BatchNorm, 4 operations per
              output element of an affine BN, and a few other layers.
``macs_seeds`` conv + linear, plus 2 per BatchNorm output element and 1 per output element of a
              conv with bias: the older thop the seeds' pruned rows were counted with
              (ResNet-56's 90.35M, VGG-16's 131.17M).
``flops``     true floating-point operations, 2 × macs.
``params``    every parameter, BatchNorm's gamma and beta included (buffers excluded).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io

import torch
from torch import nn

from .layers import rule_for
from .models import Usage, input_size, usage_of


def module_macs(model: nn.Module, size: int, seeds_convention: bool = False) -> dict[str, int]:
    """MACs of each module with a layer rule (:mod:`fmprune.layers`), summed over its calls.

    Conv, transposed conv and linear layers count their multiply-accumulates; with
    ``seeds_convention`` BatchNorm adds 2 and a conv with bias 1 per output element (the older
    thop); other layers count nothing.
    """
    per_module: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():
        rule = rule_for(m)
        if rule is None:
            continue

        def hook(m, inp, out, name=name, rule=rule):
            per_module[name] = per_module.get(name, 0) + rule.macs(m, inp[0], out, seeds_convention)

        handles.append(m.register_forward_hook(hook))
    try:
        _forward_one(model, size)
    finally:
        for h in handles:
            h.remove()
    return per_module


def conv_linear_macs(model: nn.Module, size: int, seeds_convention: bool = False) -> int:
    """MACs of every conv and linear layer; with ``seeds_convention`` also the older thop's
    BatchNorm (2 per output element) and conv-bias (1 per output element) terms."""
    return sum(module_macs(model, size, seeds_convention).values())


def thop_macs(model: nn.Module, size: int) -> int:
    from thop import profile

    clone = copy.deepcopy(model).cpu()
    with contextlib.redirect_stdout(io.StringIO()):  # thop prints a line per unknown module
        macs, _ = profile(clone, inputs=(torch.zeros(1, 3, size, size),), verbose=False)
    return int(macs)


def _forward_one(model: nn.Module, size: int) -> None:
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype))
    model.train(was_training)


def count(model: nn.Module, arch: str) -> dict[str, int]:
    size = input_size(arch)
    macs = conv_linear_macs(model, size)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs": macs,
        "macs_thop": thop_macs(model, size),
        "macs_seeds": conv_linear_macs(model, size, seeds_convention=True),
        "flops": 2 * macs,
        "input_size": size,
    }


def pruned_sizes(arch: str, widths: dict[str, int]) -> dict[str, int]:
    """params, macs and macs_seeds of ``arch`` with groups cut to ``widths`` (channel counts).

    Sizes depend on widths only, so the first channels are kept; results are cached, since plan
    searches and tables ask for the same widths again and again.
    """
    return dict(_pruned_sizes(arch, usage_of(arch), tuple(sorted(widths.items()))))


@functools.lru_cache(maxsize=1024)
def _pruned_sizes(arch: str, usage: Usage | None, widths: tuple[tuple[str, int], ...]) -> dict[str, int]:
    """``usage`` (a traced architecture's classes and input side) is part of the cache key only."""
    from .models import build
    from .surgery import prune_

    net = prune_(build(arch), {g: torch.arange(w) for g, w in widths})
    size = input_size(arch)
    return {"params": sum(p.numel() for p in net.parameters()), "macs": conv_linear_macs(net, size),
            "macs_seeds": conv_linear_macs(net, size, seeds_convention=True)}
