"""CIFAR DenseNet-40 (Huang et al. 2017): growth 12, three dense blocks of 12 layers, no bottleneck.

Layout as the pruning seeds (HRank/HRankPlus ``densenet_40``) build it: a 3×3 stem conv 3→24;
pre-activation dense layers BN-ReLU-3×3 conv producing 12 channels, concatenated after their
input; transitions *without* compression (BN-ReLU-1×1 conv keeping the width, then 2×2 average
pooling); a final BN-ReLU, global average pooling and the linear classifier. Module names match
the seeds' (``conv1``, ``dense{b}.{i}.bn1/relu/conv1``, ``trans{b}.bn1/relu/conv1``, ``bn``,
``relu``, ``fc``), so their unpruned checkpoints load strictly.

Channel groups: the stem's 24 channels (kept whole), each dense layer's 12 output channels and
each transition conv's output. Every consumer of a concatenation (a dense layer's BN and conv, a
transition's BN and conv, the final BN and the classifier) lists the groups that make up its
input in concatenation order, so surgery slices each of them at the right offsets.

Each ReLU is its own module, called once per forward. A dense layer's ``act`` tap is the ReLU of
its next consumer (the next dense layer, the transition, or the final BN-ReLU), restricted to
that layer's channels by ``tap_slices``; a transition's ``act`` tap is the first dense layer of
the next block, restricted to the leading slice. ``conv`` taps are the raw conv outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import ArchSpec, ChannelGroup, ModuleIO, RateEntry

GROWTH = 12
BLOCKS = 3


class DenseLayer(nn.Module):
    """BN-ReLU-3×3 conv; its ``growth`` output channels are appended to the input."""

    def __init__(self, in_planes: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv1(self.relu(self.bn1(x)))), 1)


class Transition(nn.Module):
    """BN-ReLU-1×1 conv (width kept: no compression), then 2×2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Functional pooling, as the seeds wrote it (thop charges nothing for it).
        return F.avg_pool2d(self.conv1(self.relu(self.bn1(x))), 2)


class CifarDenseNet(nn.Module):
    def __init__(self, arch: str = "densenet40", depth: int = 40, growth: int = GROWTH, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 3:
            raise ValueError(f"DenseNet depth must be 3n + 4, got {depth}")
        self.arch = arch
        self.layers_per_block = (depth - 4) // 3
        self.growth = growth
        self.stem_planes = 2 * growth
        self.conv1 = nn.Conv2d(3, self.stem_planes, 3, padding=1, bias=False)
        planes = self.stem_planes
        for b in range(1, BLOCKS + 1):
            layers = []
            for _ in range(self.layers_per_block):
                layers.append(DenseLayer(planes, growth))
                planes += growth
            self.add_module(f"dense{b}", nn.Sequential(*layers))
            if b < BLOCKS:
                self.add_module(f"trans{b}", Transition(planes, planes))
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dense1(self.conv1(x))
        x = self.dense2(self.trans1(x))
        x = self.dense3(self.trans2(x))
        x = self.relu(self.bn(x))
        # Global average (the seeds' AvgPool2d(8) at 32×32), functional so any input side works.
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def channel_spec(self) -> ArchSpec:
        n, growth = self.layers_per_block, self.growth
        widths: dict[str, int] = {"conv1": self.stem_planes}
        prunable: dict[str, bool] = {"conv1": False}
        act: dict[str, tuple[str, tuple[int, int]]] = {}  # group -> (tap module, slice)
        conv: dict[str, str] = {}
        modules: dict[str, ModuleIO] = {"conv1": ModuleIO(out=("conv1",))}
        layout = [RateEntry("stem (unused)", None)]
        concat = ["conv1"]  # groups of the current concatenation, in order
        awaiting: list[str] = []  # groups whose act tap is the next consumer's ReLU
        width_of: dict[str, tuple[str, ...]] = {}  # transitions: rated on their pruned input width

        def consume(prefix: str, bn: str, relu: str) -> tuple[str, ...]:
            """Register a BN-ReLU consumer of the whole current concatenation."""
            inputs = tuple(concat)
            modules[f"{prefix}{bn}"] = ModuleIO(out=inputs)
            starts = dict(zip(inputs, _offsets(inputs, widths)))
            for g in awaiting:
                act[g] = (f"{prefix}{relu}", (starts[g], starts[g] + widths[g]))
            awaiting.clear()
            return inputs

        for b in range(1, BLOCKS + 1):
            for i in range(n):
                p = f"dense{b}.{i}."
                g = f"{p}conv1"
                inputs = consume(p, "bn1", "relu")
                modules[g] = ModuleIO(out=(g,), inp=inputs)
                widths[g], prunable[g], conv[g] = growth, True, g
                layout.append(RateEntry(g, g))
                concat.append(g)
                awaiting.append(g)
            if b < BLOCKS:
                p = f"trans{b}."
                g = f"{p}conv1"
                inputs = consume(p, "bn1", "relu")
                modules[g] = ModuleIO(out=(g,), inp=inputs)
                widths[g], prunable[g], conv[g] = sum(widths[x] for x in inputs), True, g
                width_of[g] = inputs
                layout.append(RateEntry(g, g))
                concat[:] = [g]
                awaiting.append(g)
        inputs = consume("", "bn", "relu")
        modules["fc"] = ModuleIO(inp=inputs)

        groups = {}
        for g, c in widths.items():
            if not prunable[g]:
                groups[g] = ChannelGroup(g, c, prunable=False)
                continue
            tap, sl = act[g]
            groups[g] = ChannelGroup(g, c, taps={"act": (tap,), "conv": (conv[g],)}, tap_slices={tap: sl},
                                     width_of=width_of.get(g, ()))
        return ArchSpec(self.arch, groups, modules, tuple(layout))


def _offsets(names: tuple[str, ...], widths: dict[str, int]) -> list[int]:
    starts, pos = [], 0
    for name in names:
        starts.append(pos)
        pos += widths[name]
    return starts


def densenet40(num_classes: int = 10) -> CifarDenseNet:
    return CifarDenseNet("densenet40", 40, GROWTH, num_classes)
