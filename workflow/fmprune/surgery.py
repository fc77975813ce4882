"""Physical channel removal and its reference, masking, driven by an :class:`ArchSpec`.

``kept`` maps every group to the sorted channel indices it keeps (groups left out keep all).
Each module listed in the spec has its output axis (conv/linear rows, bias, the four BN
tensors, an index shortcut's map) and input axis (conv/linear columns) gathered at the
concatenated kept indices of the groups that make up that axis, so a residual stream or a
concatenation slice is cut the same way everywhere it appears.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from . import FmpruneError
from .io import atomic_torch_save
from .models import ArchSpec, build
from .models.resnet_cifar import IndexShortcut


def full_kept(spec: ArchSpec, kept: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``kept`` completed with every group, each as a sorted, validated LongTensor."""
    kept = dict(kept or {})
    unknown = set(kept) - set(spec.groups)
    if unknown:
        raise FmpruneError(f"kept indices name unknown groups: {', '.join(sorted(unknown))}")
    out = {}
    for name, group in spec.groups.items():
        idx = torch.as_tensor(kept.get(name, range(group.channels)), dtype=torch.long).sort().values
        if idx.numel() == 0 or idx[0] < 0 or idx[-1] >= group.channels or idx.unique().numel() != idx.numel():
            raise FmpruneError(f"group {name}: kept indices must be distinct, in [0, {group.channels}) and non-empty")
        if not group.prunable and idx.numel() != group.channels:
            raise FmpruneError(f"group {name} is not prunable but the plan removes channels from it")
        out[name] = idx
    return out


def _axis_index(spec: ArchSpec, names: tuple[str, ...], kept: dict[str, torch.Tensor]) -> torch.Tensor | None:
    if not names:
        return None
    return torch.cat([start + kept[g] for g, start in zip(names, spec.offsets(names))])


def _remap_shortcut(src: torch.Tensor, out_idx: torch.Tensor, in_idx: torch.Tensor) -> torch.Tensor:
    """New source map: kept output i reads the position of its old source among kept inputs."""
    position = torch.full((max(int(src.max()), int(in_idx.max())) + 1,), -1, dtype=torch.long)
    position[in_idx] = torch.arange(in_idx.numel())
    old = src[out_idx]
    return torch.where(old >= 0, position[old.clamp(min=0)], -1)


def _slice_weight(name: str, m: nn.Conv2d | nn.Linear, out_idx, in_idx) -> None:
    if isinstance(m, nn.Conv2d) and m.groups != 1:
        raise FmpruneError(f"{name}: grouped convolutions are not supported")
    out_attr, in_attr = ("out_channels", "in_channels") if isinstance(m, nn.Conv2d) else ("out_features", "in_features")
    w = m.weight
    if out_idx is not None:
        w = w[out_idx]
        if m.bias is not None:
            m.bias = nn.Parameter(m.bias[out_idx].clone())
        setattr(m, out_attr, out_idx.numel())
    if in_idx is not None:
        w = w[:, in_idx]
        setattr(m, in_attr, in_idx.numel())
    m.weight = nn.Parameter(w.clone())


@torch.no_grad()
def prune_(model: nn.Module, kept: dict[str, torch.Tensor]) -> nn.Module:
    """Remove every channel not in ``kept``, in place; returns the model."""
    spec = model.channel_spec()
    kept = full_kept(spec, kept)
    modules = dict(model.named_modules())
    for name, io in spec.modules.items():
        m = modules[name]
        out_idx, in_idx = _axis_index(spec, io.out, kept), _axis_index(spec, io.inp, kept)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _slice_weight(name, m, out_idx, in_idx)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight = nn.Parameter(m.weight[out_idx].clone())
            m.bias = nn.Parameter(m.bias[out_idx].clone())
            m.running_mean = m.running_mean[out_idx].clone()
            m.running_var = m.running_var[out_idx].clone()
            m.num_features = out_idx.numel()
        elif isinstance(m, IndexShortcut):
            m.src = _remap_shortcut(m.src, out_idx, in_idx)
        else:
            raise FmpruneError(f"{name}: no surgery rule for {type(m).__name__}")
    model.kept = {g: idx.tolist() for g, idx in kept.items()}
    return model


@torch.no_grad()
def mask_(model: nn.Module, kept: dict[str, torch.Tensor]) -> nn.Module:
    """The unpruned model with every removed channel silenced (METHODS.md's ``masked``).

    Producers of a removed channel get their filter, bias and BN gamma/beta zeroed (an index
    shortcut stops copying into it); every consumer gets its input weights for it zeroed.
    """
    spec = model.channel_spec()
    kept = full_kept(spec, kept)
    removed = {}
    for g, idx in kept.items():
        mask = torch.ones(spec.groups[g].channels, dtype=torch.bool)
        mask[idx] = False
        removed[g] = mask.nonzero().flatten()
    modules = dict(model.named_modules())
    for name, io in spec.modules.items():
        m = modules[name]
        out_idx, in_idx = _axis_index(spec, io.out, removed), _axis_index(spec, io.inp, removed)
        if isinstance(m, IndexShortcut):
            if out_idx is not None:
                m.src[out_idx] = -1
            if in_idx is not None:
                m.src[torch.isin(m.src, in_idx)] = -1
            continue
        if out_idx is not None:
            m.weight[out_idx] = 0
            if m.bias is not None:
                m.bias[out_idx] = 0
        if in_idx is not None and not isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight[:, in_idx] = 0
    return model


def pruned_copy(model: nn.Module, kept: dict[str, torch.Tensor]) -> nn.Module:
    return prune_(copy.deepcopy(model), kept)


def save_pruned(path: str | Path, model: nn.Module, arch: str, num_classes: int, **extra) -> None:
    """Save what :func:`load_pruned` needs: architecture, kept indices and weights."""
    kept = getattr(model, "kept", None)
    if kept is None:
        kept = {g: list(range(s.channels)) for g, s in model.channel_spec().groups.items()}
    payload = {"arch": arch, "num_classes": num_classes, "kept": kept, "state_dict": model.state_dict()}
    payload.update(extra)
    atomic_torch_save(payload, path)


def load_pruned(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved (pruned or baseline) model anywhere: ``fmprune.surgery.load_pruned(path)``.

    Extra entries saved with the model (normalisation, provenance) are attached as ``model.meta``.
    """
    path = Path(path)
    if not path.is_file():
        raise FmpruneError(f"model file not found: {path}")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    for key in ("arch", "num_classes", "kept", "state_dict"):
        if key not in payload:
            raise FmpruneError(f"{path}: not an fmprune model file (missing {key!r})")
    model = build(payload["arch"], num_classes=payload["num_classes"])
    prune_(model, {g: torch.tensor(v) for g, v in payload["kept"].items()})
    model.load_state_dict(payload["state_dict"], strict=True)
    model.meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model
