"""Architecture registry: ``build(arch)`` gives a model whose ``channel_spec()`` says how to prune it."""
from __future__ import annotations

from torch import nn

from .. import FmpruneError
from .resnet_cifar import DEPTHS, CifarResNet
from .spec import ArchSpec, ChannelGroup, ModuleIO, RateEntry

# arch id -> (constructor, input resolution used for cost counting)
_REGISTRY = {name: (lambda n=name, **kw: CifarResNet(n, **kw), 32) for name in DEPTHS}

ARCHS = tuple(_REGISTRY)


def build(arch: str, num_classes: int = 10) -> nn.Module:
    if arch not in _REGISTRY:
        raise FmpruneError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return _REGISTRY[arch][0](num_classes=num_classes)


def input_size(arch: str) -> int:
    """Side of the square input the papers count cost on (32 for CIFAR, 224 for ImageNet)."""
    if arch not in _REGISTRY:
        build(arch)  # raises the one-line error
    return _REGISTRY[arch][1]


__all__ = ["ARCHS", "ArchSpec", "ChannelGroup", "ModuleIO", "RateEntry", "build", "input_size"]
