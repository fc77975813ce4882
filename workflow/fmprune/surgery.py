"""Physical channel removal and its reference, masking, driven by an :class:`ArchSpec`.

``kept`` maps every group to the sorted channel indices it keeps (groups left out keep all).
Each module listed in the spec has its output axis (conv/linear rows, bias, the four BN
tensors, an index shortcut's map) and input axis (conv/linear columns) gathered at the
concatenated kept indices of the groups that make up that axis, so a residual stream or a
concatenation slice is cut the same way everywhere it appears; so is each bare parameter or
buffer a traced spec declares. How a module of each type is cut or silenced is its rule in
:mod:`fmprune.layers`.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from . import FmpruneError
from .io import atomic_torch_save, describe, load_torch
from .layers import TENSOR_RULE, rule_for
from .models import ArchSpec, build, input_size, is_traced, register


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


def _axis_index(spec: ArchSpec, names: tuple[str, ...], kept: dict[str, torch.Tensor],
                expand: int = 1) -> torch.Tensor | None:
    """Positions of ``kept`` on an axis made of ``names``; each channel owns ``expand`` of them."""
    if not names:
        return None
    channels = torch.cat([start + kept[g] for g, start in zip(names, spec.offsets(names))])
    if expand == 1:
        return channels
    return (channels[:, None] * expand + torch.arange(expand)).flatten()


def _apply(model: nn.Module, spec: ArchSpec, index: dict[str, torch.Tensor], action: str) -> None:
    """Run every declared module's layer rule (``prune`` or ``mask``) on its axes' ``index``,
    then the tensor rule on every declared bare parameter or buffer."""
    modules = dict(model.named_modules())
    for name, io in spec.modules.items():
        m = modules[name]
        rule = rule_for(m)
        if rule is None:
            raise FmpruneError(f"{name}: no surgery rule for {type(m).__name__}")
        out, inp = _axis_index(spec, io.out, index), _axis_index(spec, io.inp, index, io.inp_expand)
        getattr(rule, action)(name, m, out, inp)
    for name, tensor in spec.tensors.items():
        owner, _, attr = name.rpartition(".")
        getattr(TENSOR_RULE, action)(modules[owner], attr, tensor.dim, _axis_index(spec, tensor.groups, index))


@torch.no_grad()
def prune_(model: nn.Module, kept: dict[str, torch.Tensor], spec: ArchSpec | None = None) -> nn.Module:
    """Remove every channel not in ``kept``, in place; returns the model.

    ``spec`` defaults to the model's own ``channel_spec()`` (a traced spec for any other model).
    """
    spec = spec or model.channel_spec()
    kept = full_kept(spec, kept)
    _apply(model, spec, kept, "prune")
    model.kept = {g: idx.tolist() for g, idx in kept.items()}
    return model


@torch.no_grad()
def mask_(model: nn.Module, kept: dict[str, torch.Tensor], spec: ArchSpec | None = None) -> nn.Module:
    """The unpruned model with every removed channel silenced (METHODS.md's ``masked``).

    Producers of a removed channel get their filter, bias and BN gamma/beta zeroed (an index
    shortcut stops copying into it); every consumer gets its input weights for it zeroed.
    """
    spec = spec or model.channel_spec()
    kept = full_kept(spec, kept)
    removed = {}
    for g, idx in kept.items():
        mask = torch.ones(spec.groups[g].channels, dtype=torch.bool)
        mask[idx] = False
        removed[g] = mask.nonzero().flatten()
    _apply(model, spec, removed, "mask")
    return model


def pruned_copy(model: nn.Module, kept: dict[str, torch.Tensor], spec: ArchSpec | None = None) -> nn.Module:
    return prune_(copy.deepcopy(model), kept, spec)


def save_pruned(path: str | Path, model: nn.Module, arch: str, num_classes: int, **extra) -> None:
    """Save what :func:`load_pruned` needs: architecture, kept indices and weights, and the
    input side a traced architecture is traced and counted on."""
    kept = getattr(model, "kept", None)
    if kept is None:
        kept = {g: list(range(s.channels)) for g, s in model.channel_spec().groups.items()}
    payload = {"arch": arch, "num_classes": num_classes, "input_size": input_size(arch), "kept": kept,
               "state_dict": model.state_dict()}
    payload.update(extra)
    atomic_torch_save(payload, path)


def load_pruned(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved (pruned or baseline) model anywhere: ``fmprune.surgery.load_pruned(path)``.

    Extra entries saved with the model (normalisation, provenance) are attached as ``model.meta``.
    """
    path = Path(path)
    payload = load_torch(path, "model file", map_location)
    for key in ("arch", "num_classes", "kept", "state_dict"):
        if not isinstance(payload, dict) or key not in payload:
            raise FmpruneError(f"{path}: not an fmprune model file (missing {key!r})")
    try:
        if is_traced(payload["arch"]) and payload.get("input_size"):
            register(payload["arch"], payload["num_classes"], payload["input_size"])
        model = build(payload["arch"], num_classes=payload["num_classes"])
        prune_(model, {g: torch.tensor(v) for g, v in payload["kept"].items()})
        model.load_state_dict(payload["state_dict"], strict=True)
    except FmpruneError as exc:
        raise FmpruneError(f"{path}: {exc}") from None
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:  # entries of the wrong type or shape
        raise FmpruneError(f"{path}: inconsistent fmprune model file ({describe(exc)})") from None
    model.meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model
