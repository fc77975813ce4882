"""``fmprune check``: can fmprune prune this model? Trace it, prune a random plan, prove it.

The proof is the one the hand-written specs pass: in float64, the pruned model's output equals
the masked model's (every removed channel silenced in the unpruned model); the pruned model's
parameter count equals the parameters masking leaves nonzero in an all-ones copy; and its MACs
equal each layer's unpruned MACs scaled by the fraction of its weight that masking keeps.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from . import FmpruneError
from .counting import module_macs
from .models import build, input_size, spec_of
from .models.spec import ArchSpec
from .models.trace import trace
from .surgery import mask_, pruned_copy


def random_plan(spec: ArchSpec, seed: int) -> dict[str, torch.Tensor]:
    """Each prunable group keeps a random, non-empty subset of its channels."""
    gen = torch.Generator().manual_seed(seed)
    kept = {}
    for g in spec.prunable_groups():
        c = spec.groups[g].channels
        kept[g] = torch.randperm(c, generator=gen)[: int(torch.randint(1, c + 1, (1,), generator=gen))]
    return kept


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so that masking mistakes show."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model


def expected_sizes(model: nn.Module, spec: ArchSpec, kept: dict[str, torch.Tensor], size: int) -> tuple[int, int]:
    """Params and MACs the pruned model must have, read off the masked all-ones model."""
    ones = copy.deepcopy(model)
    with torch.no_grad():
        for p in ones.parameters():
            p.fill_(1)
    mask_(ones, kept, spec)
    params = sum(int(p.count_nonzero()) for p in ones.parameters())
    named = dict(ones.named_modules())
    macs = 0
    for name, full in module_macs(model, size).items():
        w = getattr(named[name], "weight", None)
        macs += full if w is None else full * int(w.count_nonzero()) // w.numel()
    return params, macs


def check(arch: str, size: int | None = None, seed: int = 0) -> tuple[bool, str]:
    """(passed, one line) for any architecture string (see :mod:`fmprune.models`), traced at
    ``size`` (default: its input side)."""
    return check_model(build(arch), arch, size or input_size(arch), seed)


def check_model(model: nn.Module, arch: str, size: int, seed: int = 0) -> tuple[bool, str]:
    """(passed, one line): trace ``model``, prune a random plan, prove pruned == masked and the counts."""
    start = time.perf_counter()
    model = randomize_norms(model).double().eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    try:
        spec = trace(model, x, arch)
    except FmpruneError as exc:
        return False, f"untraceable {exc}"
    prunable = spec.prunable_groups()
    unsupported = spec.unsupported[0] if spec.unsupported else ""
    kept = random_plan(spec, seed)
    pruned, masked = pruned_copy(model, kept, spec), mask_(copy.deepcopy(model), kept, spec)
    with torch.no_grad():  # outputs may be tuples (a U-Net's side outputs)
        a, b = tree_flatten(pruned(x))[0], tree_flatten(masked(x))[0]
    delta = max(float((p - q).abs().max()) for p, q in zip(a, b))
    params, macs = sum(p.numel() for p in pruned.parameters()), sum(module_macs(pruned, size).values())
    want_params, want_macs = expected_sizes(model, spec, kept, size)
    full_macs = sum(module_macs(model, size).values())
    facts = (f"{len(prunable)}/{len(spec.groups)} groups prunable; MACs {full_macs / 1e6:.1f}M → {macs / 1e6:.1f}M, "
             f"params {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M → {params / 1e6:.2f}M "
             f"at {size}×{size}; {time.perf_counter() - start:.1f} s")
    if delta > 1e-9 * max(1.0, *(float(q.abs().max()) for q in b)):
        return False, f"FAIL {arch}: pruned != masked (max |Δ| {delta:.2e}); {facts}"
    if (params, macs) != (want_params, want_macs):
        return False, f"FAIL {arch}: pruned counts {params} params, {macs} MACs; masking says {want_params}, {want_macs}"
    verdict = f"unsupported {arch}: {unsupported} (its channels kept whole)" if unsupported else f"ok {arch}"
    return True, f"{verdict}; pruned == masked (max |Δ| {delta:.0e}); {facts}"


def layout(arch: str, size: int | None = None) -> list[str]:
    """``fmprune layout``: one line per rate-list entry (its groups, channels and modules), then
    every group kept whole and why. Registered architectures show their declared spec; traced
    ones are traced at ``size`` (default: their input side)."""
    spec = spec_of(arch, size)

    def described(g: str) -> str:
        modules = [m for m, io in spec.modules.items() if g in io.out or g in io.inp]
        modules += [t for t, tensor in spec.tensors.items() if g in tensor.groups]
        return f"{g} ({spec.groups[g].channels} channels: {', '.join(modules)})"

    lines = []
    for i, entry in enumerate(spec.rate_layout):
        groups = ([entry.group] if entry.group else []) + list(entry.also)
        target = "; ".join(described(g) for g in groups) or "unused"
        lines.append(f"[{i}] {entry.label}{' (secondary)' if entry.secondary else ''} -> {target}")
    for g, group in spec.groups.items():
        if not group.prunable:
            lines.append(f"kept whole: {described(g)}" + (f": {group.reason}" if group.reason else ""))
    return lines
