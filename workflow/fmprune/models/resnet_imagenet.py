"""ImageNet ResNet-18 (BasicBlock) and ResNet-50 (Bottleneck, torchvision's v1.5: stride on the 3×3).

Module names and tensor shapes are exactly torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``
…, ``layer1.0.downsample.0/1``, ``fc``), so a torchvision weights file (a bare state_dict) loads
strictly and computes the same outputs. Unlike torchvision, every activation is its own
``nn.ReLU`` module (``relu1``, ``relu2``, ``relu3`` in a block; ``relu`` for the stem), called
once per forward, so each one can be tapped; ReLU holds no state, so the keys do not change.
``width`` scales every stage width (tests use narrow instances); 1.0 is the real network.

Channel groups
--------------
``stem``       ResNet-50 only: the stem conv's 64 outputs (conv1, bn1), read by layer1.0's conv1
               and downsample. Taps: act ``relu``, conv ``conv1``.
``stage{s}``   the residual stream of stage s (256/512/1024/2048 wide in ResNet-50,
               64/128/256/512 in ResNet-18), written by the stage's downsample conv + BN and by
               every block's last conv + BN, so all of them keep one index set. Taps: act = every
               block output after the add and ReLU (``layer{s}.{b}.relu3`` / ``relu2``); conv =
               every block's last conv and the downsample conv. In ResNet-18, stage 1 has no
               downsample and the stem conv writes the stage-1 stream directly (through the max
               pool), so the stem's ``relu``/``conv1`` are taps of ``stage1`` there.
               ``stage4`` feeds the classifier and is not prunable (as in the seeds).
``layer{s}.{b}.conv1``, ``layer{s}.{b}.conv2`` (ResNet-50) / ``layer{s}.{b}.conv1`` (ResNet-18):
               the inner widths of a block, each its own group with its own taps.

Rate layouts (the seeds' ``compress_rate`` lists)
-------------------------------------------------
ResNet-50, 20 entries (HRankPlus ``models/imagenet/resnet.py``)::

    [0]      stem                 -> stem (64)
    [1..3]   stage-1..3 streams   -> stage1, stage2, stage3
    [4..19]  the 16 bottlenecks, layer1.0 … layer4.2, in network order: one rate for both
             inner convs -> layer{s}.{b}.conv1 and layer{s}.{b}.conv2

A bottleneck's conv1 and conv2 outputs are two different channel sets (conv2 mixes all of
conv1's channels), so they are two groups, scored and ranked independently; the one entry sets
both to the same rate (``also=``), which is what the seeds' adapt_channel does (both get
``int(planes/4 · (1 − rate))``). Coupling them into one group would force channel i of conv1
and channel i of conv2 to live or die together, a constraint the network does not have.
Stage-4's stream is never pruned, but the layer4 bottlenecks' inner convs are (entries 17–19).

ResNet-18, 12 entries (same scheme)::

    [0]      stem                 -> stage1 (secondary: it writes the stage-1 stream; 0 or equal to [1])
    [1..3]   stage-1..3 streams   -> stage1, stage2, stage3
    [4..11]  the 8 basic blocks' first convs, layer1.0 … layer4.1 -> layer{s}.{b}.conv1
"""
from __future__ import annotations


import torch
from torch import nn

from .spec import ArchSpec, ChannelGroup, ModuleIO, RateEntry

BASE_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride) if downsample else None
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: bool = False):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = _downsample(inplanes, out, stride) if downsample else None
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


def _downsample(inplanes: int, outplanes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes))


CONFIGS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


class ImageNetResNet(nn.Module):
    def __init__(self, arch: str, num_classes: int = 1000, width: float = 1.0):
        super().__init__()
        block, depths = CONFIGS[arch]
        self.arch, self.depths = arch, depths
        self.widths = tuple(max(1, int(round(w * width))) for w in BASE_WIDTHS)
        stem = self.widths[0]
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem
        for s, (planes, n) in enumerate(zip(self.widths, depths), start=1):
            stride = 1 if s == 1 else 2
            blocks = []
            for b in range(n):
                first = b == 0
                needs_proj = first and (stride != 1 or inplanes != planes * block.expansion)
                blocks.append(block(inplanes, planes, stride if first else 1, needs_proj))
                inplanes = planes * block.expansion
            self.add_module(f"layer{s}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        # torchvision's initialisation (the fc keeps PyTorch's default).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def channel_spec(self) -> ArchSpec:
        bottleneck = self.arch == "resnet50"
        expansion = 4 if bottleneck else 1
        groups: dict[str, ChannelGroup] = {}
        modules: dict[str, ModuleIO] = {}
        # ResNet-50: the stem is its own group. ResNet-18: the stem writes the stage-1 stream.
        stem_group = "stem" if bottleneck else "stage1"
        modules["conv1"] = ModuleIO(out=(stem_group,))
        modules["bn1"] = ModuleIO(out=(stem_group,))
        stem_taps = {"act": ("relu",), "conv": ("conv1",)}
        if bottleneck:
            groups["stem"] = ChannelGroup("stem", self.widths[0], taps=stem_taps)
        mid_entries: list[RateEntry] = []
        previous = stem_group
        for s, (planes, n) in enumerate(zip(self.widths, self.depths), start=1):
            stream = f"stage{s}"
            taps = {"act": [], "conv": []}
            if stream == stem_group:
                for kind, names in stem_taps.items():
                    taps[kind].extend(names)
            # The stream goes before its blocks' inner groups, so listing follows the network.
            groups[stream] = None  # placeholder, filled once its taps are known
            for b in range(n):
                p = f"layer{s}.{b}"
                inner = [f"{p}.conv1", f"{p}.conv2"] if bottleneck else [f"{p}.conv1"]
                last = len(inner) + 1  # conv3 (bottleneck) or conv2 (basic block)
                source = previous
                for i, g in enumerate(inner, start=1):
                    groups[g] = ChannelGroup(g, planes, taps={"act": (f"{p}.relu{i}",), "conv": (g,)})
                    modules[f"{p}.conv{i}"] = ModuleIO(out=(g,), inp=(source,))
                    modules[f"{p}.bn{i}"] = ModuleIO(out=(g,))
                    source = g
                modules[f"{p}.conv{last}"] = ModuleIO(out=(stream,), inp=(source,))
                modules[f"{p}.bn{last}"] = ModuleIO(out=(stream,))
                if previous != stream:  # the stage's projection shortcut
                    modules[f"{p}.downsample.0"] = ModuleIO(out=(stream,), inp=(previous,))
                    modules[f"{p}.downsample.1"] = ModuleIO(out=(stream,))
                    taps["conv"].append(f"{p}.downsample.0")
                taps["act"].append(f"{p}.relu{last}")
                taps["conv"].append(f"{p}.conv{last}")
                if bottleneck:
                    mid_entries.append(RateEntry(f"{p} conv1+conv2", inner[0], also=(inner[1],)))
                else:
                    mid_entries.append(RateEntry(f"{p}.conv1", inner[0]))
                previous = stream
            groups[stream] = ChannelGroup(
                stream,
                planes * expansion,
                prunable=s < 4,  # the last stream feeds the classifier: the seeds keep it whole
                taps={k: tuple(v) for k, v in taps.items()},
            )
        modules["fc"] = ModuleIO(inp=("stage4",))
        stem_entry = RateEntry("stem", "stem") if bottleneck else RateEntry("stem", "stage1", secondary=True)
        layout = (
            stem_entry,
            RateEntry("stage1 stream", "stage1"),
            RateEntry("stage2 stream", "stage2"),
            RateEntry("stage3 stream", "stage3"),
            *mid_entries,
        )
        return ArchSpec(self.arch, groups, modules, layout)


def resnet18(num_classes: int = 1000, width: float = 1.0) -> ImageNetResNet:
    return ImageNetResNet("resnet18", num_classes, width)


def resnet50(num_classes: int = 1000, width: float = 1.0) -> ImageNetResNet:
    return ImageNetResNet("resnet50", num_classes, width)
