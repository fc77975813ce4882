"""Checks every architecture must pass; each architecture's test module calls them."""
from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import torch

from fmprune.counting import count
from fmprune.features import FeatureFile, extract, taps_for, taylor_taps_for
from fmprune.methods import METHODS, ParamError, Setting, check_setting, score_groups
from fmprune.plan import group_rates, keep_counts, kept_from_scores, uniform_rates
from fmprune.surgery import mask_, pruned_copy

from .conftest import SHARED

PAPER_RESULTS = SHARED / "docs" / "paper_results.csv"


def paper_rows(arch: str) -> list[dict]:
    """Rows of ../shared/docs/paper_results.csv for ``arch``; skips the test when it is absent."""
    if not PAPER_RESULTS.is_file():
        import pytest

        pytest.skip(f"needs {PAPER_RESULTS} (the project's shared docs), which is absent here")
    with open(PAPER_RESULTS, newline="") as f:
        return [r for r in csv.DictReader(f) if r["arch"] == arch]


def params_without_bn(model: torch.nn.Module) -> int:
    """Parameters outside BatchNorm: how the papers count their baselines (VGG-16's 14.98M)."""
    return sum(p.numel() for m in model.modules() if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
               for p in m.parameters(recurse=False))


def bn_elements(model: torch.nn.Module, size: int) -> int:
    """BatchNorm output elements on one size × size input: the seeds' thop charged 2 operations for each."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        total += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return total


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and affine terms, so that masking mistakes show."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


def random_plan(spec, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    kept = {}
    for g in spec.prunable_groups():
        c = spec.groups[g].channels
        k = int(torch.randint(1, c + 1, (1,), generator=gen))
        kept[g] = torch.randperm(c, generator=gen)[:k]
    return kept


def assert_pruned_equals_masked(model: torch.nn.Module, x: torch.Tensor, plans: int = 2) -> None:
    model = randomize_bn(model)
    for seed in range(plans):
        kept = random_plan(model.channel_spec(), seed)
        pruned, masked = pruned_copy(model, kept), mask_(copy.deepcopy(model), kept)
        with torch.no_grad():
            outputs = pruned(x), masked(x)
        for a, b in zip(*(o if isinstance(o, tuple) else (o,) for o in outputs)):  # several outputs: each
            tol = 1e-4 * max(1.0, b.abs().max().item())
            assert torch.allclose(a, b, rtol=1e-4, atol=tol), (a - b).abs().max()


def sizes_for_rates(model: torch.nn.Module, arch: str, rates: str) -> dict:
    """Params and MACs of ``arch`` pruned by a rate list (which channels does not matter)."""
    spec = model.channel_spec()
    kept = {g: torch.arange(k) for g, k in keep_counts(spec, group_rates(spec, rates)).items()}
    return count(pruned_copy(model, kept), arch)


def assert_every_method_runs(model: torch.nn.Module, x: torch.Tensor, tmp_path: Path) -> None:
    """Extraction, every method's scores and a pruned forward pass, on a few inputs (FP-FMC, whose
    t-SNE and K selection dominate, on two of them)."""
    few_images = {"rgd": {"images": len(x)}, "fpfmc": {"images": 2}}
    spec = model.channel_spec()
    model.eval()
    kinds = {"act", "conv", "act_grad"}
    labels = torch.arange(len(x)) % 2

    def loss(out, _y, reduction):  # any differentiable loss of the (first) output gives Taylor terms
        return (out[0] if isinstance(out, tuple) else out).square().sum()

    extract(model, [(x, labels)], np.arange(len(x)), taps_for(spec, kinds), tmp_path / "f.h5", {},
            taylor_taps=taylor_taps_for(spec, kinds), loss=loss)
    setting = Setting(type(model).__name__, "methods", "float32", given=model)
    with FeatureFile(tmp_path / "f.h5") as ff:
        for method in METHODS:
            try:
                check_setting(method, setting)
            except ParamError:  # config validation refuses the method for this model
                continue
            scores = score_groups(method, spec, model, ff, few_images.get(method, {})).scores
            assert set(scores) == set(spec.prunable_groups()), method
            for g, s in scores.items():
                assert len(s) == spec.groups[g].channels and np.all(np.isfinite(s)), (method, g)
            kept = kept_from_scores(spec, scores, uniform_rates(spec, 0.5))
            with torch.no_grad():
                out = pruned_copy(model, {g: torch.tensor(k) for g, k in kept.items()})(x)
            out = out[0] if isinstance(out, tuple) else out  # several outputs (U²-Net-P): the first
            assert out.shape[0] == len(x) and torch.isfinite(out).all(), method
