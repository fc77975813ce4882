"""CIFAR ResNet-20/32/44/56/110 (He et al. 2016) with the option-A zero-pad shortcut.

Module names match the akamaster checkpoints (``conv1``, ``bn1``, ``layer{s}.{b}.conv1`` …,
``linear``), so those load strictly. The option-A shortcut (subsample by 2, zero-pad channels
on both sides) is written as :class:`IndexShortcut`, an index map from input to output
channels: the unpruned model keeps exactly the original arithmetic, and after pruning the map
says which kept input channel (if any) lands on each kept output channel, so residual
channels stay aligned whatever index sets the two streams keep.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers import Rule
from .spec import ArchSpec, ChannelGroup, ModuleIO, RateEntry

DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
WIDTHS = (16, 32, 64)


def _prune_shortcut(name: str, m: "IndexShortcut", out: torch.Tensor, inp: torch.Tensor) -> None:
    """New source map: kept output i reads the position of its old source among kept inputs."""
    position = torch.full((max(int(m.src.max()), int(inp.max())) + 1,), -1, dtype=torch.long)
    position[inp] = torch.arange(inp.numel())
    old = m.src[out]
    m.src = torch.where(old >= 0, position[old.clamp(min=0)], -1)


def _mask_shortcut(name: str, m: "IndexShortcut", out: torch.Tensor, inp: torch.Tensor) -> None:
    """Removed outputs and outputs reading a removed input copy nothing."""
    m.src[out] = -1
    m.src[torch.isin(m.src, inp)] = -1


class IndexShortcut(nn.Module):
    """out[:, i] = x[:, src[i], ::stride, ::stride], or 0 where src[i] == -1."""

    # An index map: a producer of its output channels from its input channels, with no MACs.
    fmprune_rule = Rule(lambda m: "producer", _prune_shortcut, _mask_shortcut, lambda m, x, y, seeds: 0)

    def __init__(self, src: torch.Tensor, stride: int):
        super().__init__()
        self.stride = stride
        # Not in the state_dict: derived from the kept indices, and absent from the seeds' checkpoints.
        self.register_buffer("src", src.long(), persistent=False)

    @classmethod
    def option_a(cls, in_planes: int, planes: int, stride: int) -> "IndexShortcut":
        pad = planes // 4
        src = torch.full((planes,), -1, dtype=torch.long)
        src[pad : pad + in_planes] = torch.arange(in_planes)
        return cls(src, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        zero = x.new_zeros(x.shape[0], 1, x.shape[2], x.shape[3])
        return torch.cat([x, zero], 1)[:, self.src]  # -1 picks the appended zero channel


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut = IndexShortcut.option_a(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, arch: str, num_classes: int = 10):
        super().__init__()
        self.arch = arch
        self.blocks_per_stage = DEPTHS[arch]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        in_planes = 16
        for s, planes in enumerate(WIDTHS, start=1):
            blocks = []
            for b in range(self.blocks_per_stage):
                stride = 2 if (s > 1 and b == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            self.add_module(f"layer{s}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.pool(x), 1))

    def channel_spec(self) -> ArchSpec:
        n = self.blocks_per_stage
        groups: dict[str, ChannelGroup] = {}
        modules: dict[str, ModuleIO] = {"conv1": ModuleIO(out=("stage1",)), "bn1": ModuleIO(out=("stage1",))}
        stream_taps = {s: {"act": [], "conv": []} for s in (1, 2, 3)}
        stream_taps[1]["act"].append("relu")
        stream_taps[1]["conv"].append("conv1")
        previous = "stage1"
        for s, planes in enumerate(WIDTHS, start=1):
            stream = f"stage{s}"
            for b in range(n):
                p = f"layer{s}.{b}"
                mid = f"{p}.conv1"
                groups[mid] = ChannelGroup(
                    mid, planes, taps={"act": (f"{p}.relu1",), "conv": (mid,)}
                )
                modules[f"{p}.conv1"] = ModuleIO(out=(mid,), inp=(previous,))
                modules[f"{p}.bn1"] = ModuleIO(out=(mid,))
                modules[f"{p}.conv2"] = ModuleIO(out=(stream,), inp=(mid,))
                modules[f"{p}.bn2"] = ModuleIO(out=(stream,))
                if previous != stream:
                    modules[f"{p}.shortcut"] = ModuleIO(out=(stream,), inp=(previous,))
                stream_taps[s]["act"].append(f"{p}.relu2")
                stream_taps[s]["conv"].append(f"{p}.conv2")
                previous = stream
            groups[stream] = ChannelGroup(
                stream,
                planes,
                prunable=s < 3,  # the last stream feeds the classifier: the seeds keep it whole
                taps={k: tuple(v) for k, v in stream_taps[s].items()},
            )
        modules["linear"] = ModuleIO(inp=("stage3",))
        layout = (
            RateEntry("stem", "stage1", secondary=True),
            RateEntry("stage1 stream", "stage1"),
            RateEntry("stage2 stream", "stage2"),
        ) + tuple(
            RateEntry(f"layer{s}.{b}.conv1", f"layer{s}.{b}.conv1")
            for s in (1, 2, 3)
            for b in range(n)
        )
        # Streams first, so listing order follows the network.
        ordered = {g: groups[g] for g in sorted(groups, key=_network_order)}
        return ArchSpec(self.arch, ordered, modules, layout)


def _network_order(group: str) -> tuple[int, int, int]:
    if group.startswith("stage"):
        return (int(group[5]), -1, 0)
    stage, block = group[len("layer") :].split(".")[:2]
    return (int(stage), int(block), 1)


def resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet("resnet20", num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    return CifarResNet("resnet32", num_classes)


def resnet44(num_classes: int = 10) -> CifarResNet:
    return CifarResNet("resnet44", num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet("resnet56", num_classes)


def resnet110(num_classes: int = 10) -> CifarResNet:
    return CifarResNet("resnet110", num_classes)
