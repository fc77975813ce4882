"""Cost of a model on one input, in the conventions the papers mix.

``macs``      multiply-accumulates of every Conv2d and Linear (the papers' baseline "FLOPs").
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

from .models import input_size


def conv_linear_macs(model: nn.Module, size: int, seeds_convention: bool = False) -> int:
    """MACs of every Conv2d and Linear; with ``seeds_convention`` also the older thop's BatchNorm
    (2 per output element) and conv-bias (1 per output element) terms."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        per_output = (m.in_channels // m.groups) * kh * kw + (seeds_convention and m.bias is not None)
        total += out.numel() // out.shape[0] * per_output

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    def bn_hook(_m, _inp, out):
        nonlocal total
        total += 2 * (out.numel() // out.shape[0])

    handles = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and seeds_convention:
            handles.append(m.register_forward_hook(bn_hook))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        _forward_one(model, size)
    finally:
        for h in handles:
            h.remove()
    return total


def thop_macs(model: nn.Module, size: int) -> int:
    from thop import profile

    clone = copy.deepcopy(model).cpu()
    with contextlib.redirect_stdout(io.StringIO()):  # thop prints a line per unknown module
        macs, _ = profile(clone, inputs=(torch.zeros(1, 3, size, size),), verbose=False)
    return int(macs)


def _forward_one(model: nn.Module, size: int) -> None:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size, device=device))
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
    return dict(_pruned_sizes(arch, tuple(sorted(widths.items()))))


@functools.lru_cache(maxsize=1024)
def _pruned_sizes(arch: str, widths: tuple[tuple[str, int], ...]) -> dict[str, int]:
    from .models import build
    from .surgery import prune_

    net = prune_(build(arch), {g: torch.arange(w) for g, w in widths})
    size = input_size(arch)
    return {"params": sum(p.numel() for p in net.parameters()), "macs": conv_linear_macs(net, size),
            "macs_seeds": conv_linear_macs(net, size, seeds_convention=True)}
