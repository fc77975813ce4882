"""Architecture registry: ``build(arch)`` gives a model whose ``channel_spec()`` says how to prune it.

Architecture ids are the ones of ../shared/docs/paper_results.csv. Each entry names the module
that defines it, the factory in that module, and the input side the papers count cost on.
"""
from __future__ import annotations

import functools
import importlib

from torch import nn

from .. import FmpruneError
from .spec import ArchSpec, ChannelGroup, ModuleIO, RateEntry

# arch id -> (module, factory, input side for cost counting)
_REGISTRY: dict[str, tuple[str, str, int]] = {
    "resnet20": ("resnet_cifar", "resnet20", 32),
    "resnet32": ("resnet_cifar", "resnet32", 32),
    "resnet44": ("resnet_cifar", "resnet44", 32),
    "resnet56": ("resnet_cifar", "resnet56", 32),
    "resnet110": ("resnet_cifar", "resnet110", 32),
    "vgg16_bn": ("vgg", "vgg16_bn", 32),
    "googlenet": ("googlenet", "googlenet", 32),
    "densenet40": ("densenet", "densenet40", 32),
    "resnet50": ("resnet_imagenet", "resnet50", 224),
    "resnet18": ("resnet_imagenet", "resnet18", 224),
    "u2netp": ("u2net", "u2netp", 320),
}

ARCHS = tuple(_REGISTRY)


def build(arch: str, num_classes: int | None = None) -> nn.Module:
    """A freshly initialised ``arch``; ``num_classes`` defaults to its dataset's (10 or 1000)."""
    if arch not in _REGISTRY:
        raise FmpruneError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    module, factory, _ = _REGISTRY[arch]
    make = getattr(importlib.import_module(f".{module}", __name__), factory)
    return make() if num_classes is None else make(num_classes=num_classes)


@functools.lru_cache(maxsize=None)
def spec_of(arch: str) -> ArchSpec:
    """The channel spec of ``arch`` (frozen, shared): built once per process, not per question."""
    return build(arch).channel_spec()


def input_size(arch: str) -> int:
    """Side of the square input the papers count cost on (32 for CIFAR, 224 for ImageNet)."""
    if arch not in _REGISTRY:
        build(arch)  # raises the one-line error
    return _REGISTRY[arch][2]


__all__ = ["ARCHS", "ArchSpec", "ChannelGroup", "ModuleIO", "RateEntry", "build", "input_size", "spec_of"]
