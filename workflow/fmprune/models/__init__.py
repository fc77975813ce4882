"""Architectures: ``build(arch)`` gives a model whose ``channel_spec()`` says how to prune it.

An architecture string is one of

* a registered id (those of ../shared/docs/paper_results.csv): a model file here with a
  hand-written ``channel_spec`` and the input side the papers count cost on;
* ``torchvision/<builder>``: a classification builder of torchvision.models, randomly
  initialised (a config's ``checkpoint`` gives trained weights; nothing is downloaded here);
* ``path/to/file.py:factory`` or ``package.module:factory``: a user's model, the factory called
  with ``num_classes`` when it takes that argument.

The last two are *traced* (:mod:`.trace`) on an input of their side. How a traced architecture
is used in this process (its class count and input side) is :func:`register`-ed by the config
that names it, or by the model file being read (:func:`fmprune.surgery.load_pruned`); outside
both it has its factory's classes and a 224-pixel side.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass

import torch
from torch import nn

from .. import FmpruneError
from ..io import describe, user_path
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
TORCHVISION = "torchvision/"
DEFAULT_INPUT_SIZE = 224
# Builders whose training-mode output is not one tensor unless told: the auxiliary heads are off.
_TORCHVISION_OPTIONS = {"googlenet": {"aux_logits": False, "init_weights": True},
                        "inception_v3": {"aux_logits": False, "init_weights": True}}


@dataclass(frozen=True)
class Usage:
    """How a traced architecture is used: its outputs (None: the factory's default) and input side."""

    num_classes: int | None = None
    input_size: int = DEFAULT_INPUT_SIZE


_USAGE: dict[str, Usage] = {}


def is_traced(arch: str) -> bool:
    return arch not in _REGISTRY


def register(arch: str, num_classes: int | None = None, input_size: int | None = None) -> None:
    """Use traced ``arch`` with ``num_classes`` outputs on inputs of side ``input_size`` in this
    process: what :func:`build`, :func:`spec_of`, :func:`input_size` and the counters assume."""
    if not is_traced(arch):
        raise FmpruneError(f"{arch} is declared by hand: its input side is fixed ({_REGISTRY[arch][2]})")
    _check_form(arch)
    _USAGE[arch] = Usage(num_classes, input_size or DEFAULT_INPUT_SIZE)


def usage_of(arch: str) -> Usage | None:
    """The registered usage of a traced ``arch`` (None for a registered architecture)."""
    if not is_traced(arch):
        return None
    _check_form(arch)
    return _USAGE.get(arch, Usage())


def build(arch: str, num_classes: int | None = None) -> nn.Module:
    """A freshly initialised ``arch``; ``num_classes`` defaults to its dataset's (registered ids:
    10 or 1000; traced ones: the registered count, else the factory's)."""
    if not is_traced(arch):
        module, factory, _ = _REGISTRY[arch]
        make = getattr(importlib.import_module(f".{module}", __name__), factory)
        return make() if num_classes is None else make(num_classes=num_classes)
    usage = usage_of(arch)
    num_classes = usage.num_classes if num_classes is None else num_classes
    model = _make(arch, num_classes)
    model.channel_spec = functools.partial(_traced_spec, arch, num_classes, usage.input_size)
    return model


def spec_of(arch: str, input_size: int | None = None) -> ArchSpec:
    """The channel spec of ``arch`` (frozen, shared): built once per process, not per question.
    A traced one is traced at ``input_size``, else at its registered side."""
    if not is_traced(arch):
        return _declared_spec(arch)
    usage = usage_of(arch)
    return _traced_spec(arch, usage.num_classes, input_size or usage.input_size)


def input_size(arch: str) -> int:
    """Side of the square input cost is counted on: the papers' (32 for CIFAR, 224 for ImageNet)
    for registered ids, the registered side for traced ones."""
    return _REGISTRY[arch][2] if not is_traced(arch) else usage_of(arch).input_size


@functools.lru_cache(maxsize=None)
def _declared_spec(arch: str) -> ArchSpec:
    return build(arch).channel_spec()


@functools.lru_cache(maxsize=None)
def _traced_spec(arch: str, num_classes: int | None, size: int) -> ArchSpec:
    from .trace import trace

    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    return trace(_make(arch, num_classes), example, arch)


def _check_form(arch: str) -> None:
    if not arch.startswith(TORCHVISION) and not all(arch.rpartition(":")[::2]):
        raise FmpruneError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}, torchvision/<builder>, "
                           f"path/to/file.py:factory or package.module:factory")


def _make(arch: str, num_classes: int | None) -> nn.Module:
    """A traced architecture's model, from torchvision or the user's factory."""
    if arch.startswith(TORCHVISION):
        return _torchvision(arch, num_classes)
    source, _, factory = arch.rpartition(":")
    make = getattr(_user_module(source), factory, None)
    if not callable(make):
        raise FmpruneError(f"{arch}: {source} has no factory {factory!r}")
    try:
        params = inspect.signature(make).parameters.values()
        takes_classes = any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):  # a builtin or C callable: call it plainly
        takes_classes = False
    try:
        model = make(num_classes=num_classes) if takes_classes and num_classes is not None else make()
    except Exception as exc:  # the user's code: whatever it raises is one line
        raise FmpruneError(f"{arch}: the factory fails: {describe(exc)}") from None
    if not isinstance(model, nn.Module):
        raise FmpruneError(f"{arch}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _torchvision(arch: str, num_classes: int | None) -> nn.Module:
    import torchvision

    builder = arch[len(TORCHVISION):]
    if builder not in torchvision.models.list_models(module=torchvision.models):
        raise FmpruneError(f"{arch}: torchvision has no classification builder {builder!r}")
    options = dict(_TORCHVISION_OPTIONS.get(builder, {}))
    if num_classes is not None:
        options["num_classes"] = num_classes
    return torchvision.models.get_model(builder, weights=None, **options)


@functools.lru_cache(maxsize=None)
def _user_module(source: str):
    """The module holding a user's factory: a ``.py`` file (relative to the working directory)
    or an importable module, imported once per process."""
    if source.endswith(".py"):
        path = user_path(source).resolve()
        if not path.is_file():
            raise FmpruneError(f"model file {path} does not exist")
        name = f"fmprune_user_model_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look their module up here
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise FmpruneError(f"model file {path} fails to import: {describe(exc)}") from None
        return module
    try:
        return importlib.import_module(source)
    except Exception as exc:
        raise FmpruneError(f"cannot import model module {source!r}: {describe(exc)}") from None


__all__ = ["ARCHS", "ArchSpec", "ChannelGroup", "ModuleIO", "RateEntry", "Usage", "build", "input_size", "is_traced",
           "register", "spec_of", "usage_of"]
