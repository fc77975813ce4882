"""CIFAR VGG-16-BN as the HRank family trains it (HRank, HRankPlus, CFDP, DCT, FP-FMC).

cfg 64,64,M,128,128,M,256,256,256,M,512,512,512,M,512,512,512: 3×3 convs (padding 1, with
bias) each followed by BatchNorm and ReLU, 2×2 max-pools, a 2×2 average pool down to 1×1, and
the classifier linear1 512→512, BatchNorm1d, ReLU, linear2 512→classes. Module names follow
the seeds' checkpoints (``features.conv{i}``, ``features.norm{i}``, ``features.relu{i}``,
``features.pool{i}`` with i the cfg position; ``classifier.linear1`` …), so those load strictly.

Each conv's output is one channel group. Convs 1–12 are prunable, one rate-list entry each;
conv 13 feeds the classifier and stays whole, as in the seeds. The ``act`` tap of a conv is its
own ReLU output (the reference hooked the max-pooled map for convs 2, 4, 7 and 10).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .spec import ArchSpec, ChannelGroup, ModuleIO, RateEntry

CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
HIDDEN = 512  # classifier width


def _scaled(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class VGG(nn.Module):
    """``width`` scales every conv and the classifier's hidden layer (tests use narrow copies)."""

    def __init__(self, arch: str = "vgg16_bn", num_classes: int = 10, width: float = 1.0):
        super().__init__()
        self.arch = arch
        self.features = nn.Sequential()
        self.convs: list[tuple[int, int]] = []  # (cfg position, channels) of each conv
        in_channels = 3
        for i, v in enumerate(CFG):
            if v == "M":
                self.features.add_module(f"pool{i}", nn.MaxPool2d(2, 2))
                continue
            v = _scaled(v, width)
            self.features.add_module(f"conv{i}", nn.Conv2d(in_channels, v, 3, padding=1, bias=True))
            self.features.add_module(f"norm{i}", nn.BatchNorm2d(v))
            self.features.add_module(f"relu{i}", nn.ReLU())
            self.convs.append((i, v))
            in_channels = v
        hidden = _scaled(HIDDEN, width)
        self.classifier = nn.Sequential()
        self.classifier.add_module("linear1", nn.Linear(in_channels, hidden))
        self.classifier.add_module("norm1", nn.BatchNorm1d(hidden))
        self.classifier.add_module("relu1", nn.ReLU())
        self.classifier.add_module("linear2", nn.Linear(hidden, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        # The seeds apply nn.AvgPool2d(2) to the 2×2 map inside forward (so thop never counts it);
        # the functional global average is the same there and works at any input size.
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)

    def channel_spec(self) -> ArchSpec:
        groups: dict[str, ChannelGroup] = {}
        modules: dict[str, ModuleIO] = {}
        previous: tuple[str, ...] = ()
        last = len(self.convs) - 1
        for n, (i, channels) in enumerate(self.convs):
            g = f"features.conv{i}"
            groups[g] = ChannelGroup(
                g,
                channels,
                prunable=n < last,  # conv 13 feeds the classifier: the seeds keep it whole
                taps={"act": (f"features.relu{i}",), "conv": (g,)},
            )
            modules[g] = ModuleIO(out=(g,), inp=previous)
            modules[f"features.norm{i}"] = ModuleIO(out=(g,))
            previous = (g,)
        modules["classifier.linear1"] = ModuleIO(inp=previous)
        layout = tuple(RateEntry(f"conv{n + 1}", f"features.conv{i}") for n, (i, _) in enumerate(self.convs[:last]))
        return ArchSpec(self.arch, groups, modules, layout)


def vgg16_bn(num_classes: int = 10, width: float = 1.0) -> VGG:
    return VGG("vgg16_bn", num_classes, width)
