"""One rule per layer type: how a module's channel axes are cut (prune), silenced (mask) and counted.

Surgery, masking, the MAC counter and the tracer all read this table, so a layer type is
supported everywhere or nowhere. ``out`` and ``inp`` are the channel indices to keep (prune) or
to silence (mask) on the module's output and input axes, None where the axis is not declared.
A module class may carry its own rule as the class attribute ``fmprune_rule`` (the option-A
``IndexShortcut`` does), so this table names no model family.

``role(module)`` tells the tracer what the module does to channels:

``producer``   writes new channels, each reading every input channel (conv, linear, index map)
``depthwise``  one filter per channel: its output channels are its input's
``follower``   one parameter set per channel: output channels are its input's (BN, PReLU)
``pointwise``  no per-channel parameters (a single-parameter PReLU)
``norm``       normalises across channels (LayerNorm, GroupNorm): removing a channel changes
               every other channel's output, so its channels are kept whole
``grouped``    a grouped, not depthwise, conv: fmprune keeps its channels whole

A bare parameter or buffer that the forward pass adds to, subtracts from or multiplies with
channels (ConvNeXt's layer_scale) is a follower no module owns as a layer: ``TENSOR_RULE`` cuts
or silences it along its channel axis, as an attribute of the module that holds it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import FmpruneError

Index = torch.Tensor | None


@dataclass(frozen=True)
class Rule:
    role: Callable[[nn.Module], str]
    prune: Callable[[str, nn.Module, Index, Index], None]
    mask: Callable[[str, nn.Module, Index, Index], None]
    # MACs per sample of one call, from its input and output tensors; ``seeds`` adds the older
    # thop's BatchNorm and conv-bias terms (see :mod:`fmprune.counting`).
    macs: Callable[[nn.Module, torch.Tensor, torch.Tensor, bool], int]
    channel_dim: int = 1  # channel axis of the input and output (-1: the last, as for Linear)


def _per_sample(t: torch.Tensor) -> int:
    return t.numel() // t.shape[0]


def _is_identity(idx: Index, n: int) -> bool:
    return idx is None or (idx.numel() == n and bool((idx == torch.arange(n)).all()))


def _keep(t: torch.Tensor | None, idx: Index, dim: int = 0):
    return t if t is None or idx is None else t.index_select(dim, idx).clone()


def _conv_role(m: nn.Module) -> str:
    if m.groups == 1:
        return "producer"
    return "depthwise" if m.groups == m.in_channels == m.out_channels else "grouped"


def _prune_conv(name: str, m: nn.Module, out: Index, inp: Index) -> None:
    # Conv2d weight is [out, in/groups, …]; ConvTranspose2d's is [in, out/groups, …].
    out_dim, in_dim = (1, 0) if m.transposed else (0, 1)
    role = _conv_role(m)
    if role == "grouped":
        if not (_is_identity(out, m.out_channels) and _is_identity(inp, m.in_channels)):
            raise FmpruneError(f"{name}: grouped conv (groups={m.groups}) keeps all its channels")
        return
    if role == "depthwise":
        idx = out if out is not None else inp
        m.weight = nn.Parameter(_keep(m.weight, idx, 0))
        m.in_channels = m.out_channels = m.groups = m.weight.shape[0]
    else:
        w = _keep(_keep(m.weight, out, out_dim), inp, in_dim)
        m.weight = nn.Parameter(w)
        m.out_channels, m.in_channels = (w.shape[1], w.shape[0]) if m.transposed else (w.shape[0], w.shape[1])
        idx = out
    if m.bias is not None and idx is not None:
        m.bias = nn.Parameter(_keep(m.bias, idx))


def _mask_conv(name: str, m: nn.Module, out: Index, inp: Index) -> None:
    out_dim, in_dim = (1, 0) if m.transposed else (0, 1)
    role = _conv_role(m)
    if role == "grouped":
        if (out is not None and out.numel()) or (inp is not None and inp.numel()):
            raise FmpruneError(f"{name}: grouped conv (groups={m.groups}) keeps all its channels")
        return
    if role == "depthwise":
        out = out if out is not None else inp
        inp = None
        out_dim = 0
    if out is not None:
        m.weight.index_fill_(out_dim, out, 0)
        if m.bias is not None:
            m.bias[out] = 0
    if inp is not None:
        m.weight.index_fill_(in_dim, inp, 0)


def _conv_macs(m: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: bool) -> int:
    k = m.weight[0, 0].numel()
    bias = seeds and m.bias is not None
    if m.transposed:  # every input element scatters into out/groups × k outputs
        return _per_sample(x) * (m.out_channels // m.groups) * k + bias * _per_sample(y)
    return _per_sample(y) * ((m.in_channels // m.groups) * k + bias)


def _prune_linear(name: str, m: nn.Linear, out: Index, inp: Index) -> None:
    m.weight = nn.Parameter(_keep(_keep(m.weight, out, 0), inp, 1))
    m.bias = None if m.bias is None else nn.Parameter(_keep(m.bias, out))
    m.out_features, m.in_features = m.weight.shape


def _mask_linear(name: str, m: nn.Linear, out: Index, inp: Index) -> None:
    if out is not None:
        m.weight[out] = 0
        if m.bias is not None:
            m.bias[out] = 0
    if inp is not None:
        m.weight[:, inp] = 0


def _linear_macs(m: nn.Linear, x: torch.Tensor, y: torch.Tensor, seeds: bool) -> int:
    return _per_sample(y) * m.in_features


def _prune_bn(name: str, m: nn.Module, out: Index, inp: Index) -> None:
    if out is None:
        return
    for attr in ("weight", "bias"):
        if getattr(m, attr) is not None:
            setattr(m, attr, nn.Parameter(_keep(getattr(m, attr), out)))
    for attr in ("running_mean", "running_var"):
        if getattr(m, attr) is not None:
            setattr(m, attr, _keep(getattr(m, attr), out))
    m.num_features = out.numel()


def _mask_per_channel(name: str, m: nn.Module, out: Index, inp: Index) -> None:
    """Zero the per-channel parameters of removed channels (their input is zero already)."""
    if out is not None:
        for p in (m.weight, getattr(m, "bias", None)):
            if p is not None:
                p[out] = 0


def _bn_macs(m: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: bool) -> int:
    return 2 * _per_sample(y) if seeds else 0


def _norm_refusal(name: str, m: nn.Module) -> FmpruneError:
    return FmpruneError(f"{name}: {type(m).__name__} normalises across channels, so they are kept whole")


def _prune_norm(name: str, m: nn.Module, out: Index, inp: Index) -> None:
    if not _is_identity(out, m.weight.shape[0] if m.weight is not None else 0):
        raise _norm_refusal(name, m)


def _mask_norm(name: str, m: nn.Module, out: Index, inp: Index) -> None:
    if out is not None and out.numel():
        raise _norm_refusal(name, m)


def _prune_prelu(name: str, m: nn.PReLU, out: Index, inp: Index) -> None:
    if out is not None:
        m.weight = nn.Parameter(_keep(m.weight, out))
        m.num_parameters = out.numel()


def _no_macs(m: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: bool) -> int:
    return 0


RULES: dict[type, Rule] = {
    nn.Conv2d: Rule(_conv_role, _prune_conv, _mask_conv, _conv_macs),
    nn.ConvTranspose2d: Rule(_conv_role, _prune_conv, _mask_conv, _conv_macs),
    nn.Linear: Rule(lambda m: "producer", _prune_linear, _mask_linear, _linear_macs, channel_dim=-1),
    nn.modules.batchnorm._BatchNorm: Rule(lambda m: "follower", _prune_bn, _mask_per_channel, _bn_macs),
    nn.LayerNorm: Rule(lambda m: "norm", _prune_norm, _mask_norm, _no_macs, channel_dim=-1),
    nn.GroupNorm: Rule(lambda m: "norm", _prune_norm, _mask_norm, _no_macs),
    nn.PReLU: Rule(lambda m: "follower" if m.num_parameters > 1 else "pointwise", _prune_prelu,
                   _mask_per_channel, _no_macs),
}


@dataclass(frozen=True)
class TensorRule:
    """How the tensor ``owner.<attr>`` is cut (prune) or silenced (mask) along its axis ``dim``."""

    prune: Callable[[nn.Module, str, int, Index], None]
    mask: Callable[[nn.Module, str, int, Index], None]


def _prune_tensor(owner: nn.Module, attr: str, dim: int, out: Index) -> None:
    """A parameter stays a parameter (trainable as before), a buffer a buffer."""
    t = getattr(owner, attr)
    kept = _keep(t, out, dim)
    setattr(owner, attr, nn.Parameter(kept, t.requires_grad) if isinstance(t, nn.Parameter) else kept)


def _mask_tensor(owner: nn.Module, attr: str, dim: int, out: Index) -> None:
    """Zero the removed channels' entries, so that masking leaves nonzero the entries pruning
    keeps (no kept channel reads a removed one either way). A division by a zeroed entry would
    spread inf and NaN, so the tracer keeps channels that a tensor divides whole."""
    if out is not None:
        getattr(owner, attr).index_fill_(dim, out, 0)


TENSOR_RULE = TensorRule(_prune_tensor, _mask_tensor)


def rule_for(module: nn.Module) -> Rule | None:
    """The module's own ``fmprune_rule``, else the table's rule for its most specific type."""
    own = getattr(type(module), "fmprune_rule", None)
    if own is not None:
        return own
    for cls in type(module).__mro__:
        if cls in RULES:
            return RULES[cls]
    return None
