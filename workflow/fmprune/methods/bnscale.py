"""BN scale: network slimming's criterion (Liu, Li, Shen, Huang, Yan, Zhang, "Learning Efficient
Convolutional Networks through Network Slimming", ICCV 2017). Weights only.

Score of channel c = |γ_c| of the BatchNorm after the producing conv. A group whose channels
several BNs scale sums their |γ|: a residual stream's writers' BNs (METHODS.md), and in DenseNet
(pre-activation) every consumer's BN of the concatenation that holds the group's channels. A
model with a prunable group that no affine BN scales is refused at config validation
(``check_setting``) and when scoring.

Follows the paper's criterion. Differs from the paper and its public code
(Eric-mingjie/network-slimming), which train with an L1 penalty on γ first and then prune all
layers by one global |γ| percentile: here γ of the given checkpoint is read as it is (no
sparsity training), and the plan decides each group's width, like every criterion of the
pipeline (a global threshold is what CDP's ``sparsity`` form does for CDP).
"""
from __future__ import annotations

import numpy as np
from torch import nn

from .. import FmpruneError
from .params import ParamError

READS = "weights"
PARAMS: dict = {}  # keyword arguments of score, with their checks (see .params)


def scales(group) -> list[np.ndarray]:
    """|γ| of the group's channels in every affine BN that scales them."""
    return [bn.weight.detach()[part].abs().double().numpy() for bn, part in group.batch_norms() if bn.affine]


def unscaled_group(spec, model: nn.Module) -> str | None:
    """A prunable group of ``spec`` that no affine BN scales, or None."""
    from . import GroupInputs

    for name in spec.prunable_groups():
        if not scales(GroupInputs(name, spec, model, None)):
            return name
    return None


def check_setting(setting) -> None:
    group = unscaled_group(setting.spec, setting.model)
    if group is not None:
        raise ParamError(setting.methods_key, f"bnscale ranks channels by their BN scale, but {setting.arch}'s "
                                              f"group {group} has no BatchNorm with an affine scale")


def score(group) -> np.ndarray:
    found = scales(group)
    if not found:
        raise FmpruneError(f"bnscale: group {group.name} has no BatchNorm with an affine scale")
    return np.sum(found, axis=0)
