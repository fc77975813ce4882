"""CIFAR GoogLeNet as the HRank family trains it (HRank, HRankPlus, CFDP, DCT, FP-FMC).

Stem: 3×3 conv 3→192 + BN + ReLU. Inceptions a3, b3, max-pool, a4 … e4, max-pool, a5, b5, an
8×8 average pool and a linear 1024→classes. Each inception has four branches, concatenated in
the order [1×1, 3×3, "5×5", pool]:

    branch1x1   1×1 conv                                   (n1x1)
    branch3x3   1×1 reduce → 3×3 conv                      (n3x3red → n3x3)
    branch5x5   1×1 reduce → 3×3 conv → 3×3 conv           (n5x5red → n5x5 → n5x5)
    branch_pool 3×3 max-pool (stride 1) → 1×1 pool-proj    (pool_planes)

every conv (with bias) followed by BN and ReLU. Module names follow the seeds' checkpoints
(``pre_layers.0``, ``inception_a3.branch3x3.3`` …, ``linear``), so those load strictly; each
ReLU is its own module so that it can be tapped.

Channel groups: one per conv output. The next inception's four input convs (1×1, both reduces
and the pool-proj behind its channel-preserving max-pool) and the final linear read the
concatenation [1×1, 3×3, 5×5-out, pool] of the previous inception. Rate layout (10 entries):
[0] unused (the stem stays whole); entries 1–9 = a3 … b5, each setting the 3×3 branch output and
both 3×3 convs of the 5×5 branch; in b5, whose outputs feed the classifier, only the 5×5
branch's middle conv (one entry, several groups: ``RateEntry.also``, which
``plan.group_rates`` must honour). 1×1, reduce and pool-proj convs are never pruned.
"""
from __future__ import annotations


import torch
from torch import nn

from .spec import ArchSpec, ChannelGroup, ModuleIO, RateEntry

STEM = 192
# name: (n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes); a max-pool (3, stride 2, pad 1)
# precedes a4 and a5.
INCEPTIONS = (
    ("a3", (64, 96, 128, 16, 32, 32)),
    ("b3", (128, 128, 192, 32, 96, 64)),
    ("a4", (192, 96, 208, 16, 48, 64)),
    ("b4", (160, 112, 224, 24, 64, 64)),
    ("c4", (128, 128, 256, 24, 64, 64)),
    ("d4", (112, 144, 288, 32, 64, 64)),
    ("e4", (256, 160, 320, 32, 128, 128)),
    ("a5", (256, 160, 320, 32, 128, 128)),
    ("b5", (384, 192, 384, 48, 128, 128)),
)
POOL_BEFORE = {"a4", "a5"}


def _scaled(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _conv_bn_relu(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU()]


class Inception(nn.Module):
    def __init__(self, in_planes: int, n1x1: int, n3x3red: int, n3x3: int, n5x5red: int, n5x5: int, pool_planes: int):
        super().__init__()
        self.widths = (n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes)
        self.branch1x1 = nn.Sequential(*_conv_bn_relu(in_planes, n1x1, 1))
        self.branch3x3 = nn.Sequential(*_conv_bn_relu(in_planes, n3x3red, 1), *_conv_bn_relu(n3x3red, n3x3, 3))
        self.branch5x5 = nn.Sequential(
            *_conv_bn_relu(in_planes, n5x5red, 1), *_conv_bn_relu(n5x5red, n5x5, 3), *_conv_bn_relu(n5x5, n5x5, 3)
        )
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_relu(in_planes, pool_planes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(x)], 1)


class GoogLeNet(nn.Module):
    """``width`` scales every conv (tests use narrow copies); 1.0 is the papers' network."""

    def __init__(self, arch: str = "googlenet", num_classes: int = 10, width: float = 1.0):
        super().__init__()
        self.arch = arch
        self.stem = stem = _scaled(STEM, width)
        self.pre_layers = nn.Sequential(*_conv_bn_relu(3, stem, 3))
        in_planes = stem
        for name, widths in INCEPTIONS:
            if name in POOL_BEFORE:
                self.add_module(f"maxpool_{name}", nn.MaxPool2d(3, stride=2, padding=1))
            widths = tuple(_scaled(c, width) for c in widths)
            self.add_module(f"inception_{name}", Inception(in_planes, *widths))
            n1x1, _, n3x3, _, n5x5, pool_planes = widths
            in_planes = n1x1 + n3x3 + n5x5 + pool_planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the seeds' AvgPool2d(8) on the 8×8 map
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_layers(x)
        for name, _ in INCEPTIONS:
            if name in POOL_BEFORE:
                x = getattr(self, f"maxpool_{name}")(x)
            x = getattr(self, f"inception_{name}")(x)
        return self.linear(torch.flatten(self.avgpool(x), 1))

    def channel_spec(self) -> ArchSpec:
        groups: dict[str, ChannelGroup] = {}
        modules: dict[str, ModuleIO] = {}

        def conv(prefix: str, conv_index: int, channels: int, inp: tuple[str, ...], prunable: bool) -> str:
            """Declare the group of conv ``prefix.conv_index`` (+ its BN and ReLU at the next indices)."""
            g = f"{prefix}.{conv_index}"
            groups[g] = ChannelGroup(
                g, channels, prunable, taps={"act": (f"{prefix}.{conv_index + 2}",), "conv": (g,)}
            )
            modules[g] = ModuleIO(out=(g,), inp=inp)
            modules[f"{prefix}.{conv_index + 1}"] = ModuleIO(out=(g,))
            return g

        previous = (conv("pre_layers", 0, self.stem, (), prunable=False),)
        layout = [RateEntry("stem (unused)", None)]
        for name, _ in INCEPTIONS:
            p = f"inception_{name}"
            block: Inception = getattr(self, p)
            n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes = block.widths
            last = name == INCEPTIONS[-1][0]  # b5's concatenation feeds the classifier
            b1 = conv(f"{p}.branch1x1", 0, n1x1, previous, prunable=False)
            b2_red = conv(f"{p}.branch3x3", 0, n3x3red, previous, prunable=False)
            b2 = conv(f"{p}.branch3x3", 3, n3x3, (b2_red,), prunable=not last)
            b3_red = conv(f"{p}.branch5x5", 0, n5x5red, previous, prunable=False)
            b3_mid = conv(f"{p}.branch5x5", 3, n5x5, (b3_red,), prunable=True)
            b3_out = conv(f"{p}.branch5x5", 6, n5x5, (b3_mid,), prunable=not last)
            b4 = conv(f"{p}.branch_pool", 1, pool_planes, previous, prunable=False)
            previous = (b1, b2, b3_out, b4)
            entry_groups = (b3_mid,) if last else (b2, b3_mid, b3_out)
            layout.append(_entry(f"inception {name}", entry_groups))
        modules["linear"] = ModuleIO(inp=previous)
        return ArchSpec(self.arch, groups, modules, tuple(layout))


def _entry(label: str, entry_groups: tuple[str, ...]) -> RateEntry:
    """A layout entry setting every group of ``entry_groups`` to its rate."""
    return RateEntry(label, entry_groups[0], also=tuple(entry_groups[1:]))


def googlenet(num_classes: int = 10, width: float = 1.0) -> GoogLeNet:
    return GoogLeNet("googlenet", num_classes, width)
