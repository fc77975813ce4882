"""U²-Net-P (Qin et al., Pattern Recognition 2020), the small U²-Net, for salient-object detection.

Module names follow the authors' release (``stage1.rebnconvin.conv_s1``, ``side1``, ``outconv``,
…) so their ``u2netp.pth`` loads strictly: 1,131,181 parameters. Six residual U-blocks (RSU-7,
6, 5, 4, 4F, 4F) encode, five decode; every block has 16 channels inside and 64 at its output.
The forward pass returns the fused map and the six side maps, each through a sigmoid.

Channel groups: a block's output is ``rebnconv1d(·) + rebnconvin(x)``, so those two convs write
one group (one index set; the DCT reference prunes them apart and adds misaligned channels);
every other conv inside a block writes a group of its own, and the decoder convs read
concatenations of two groups at their offsets. The side convs and the fuse conv write the
model's outputs and are never pruned.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import ArchSpec, ChannelGroup, ModuleIO, RateEntry


class REBNCONV(nn.Module):
    """3×3 convolution with dilation ``dirate`` → BN → ReLU."""

    def __init__(self, in_ch: int, out_ch: int, dirate: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU()  # not in place: its output is a feature tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


def _upsample_like(src: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.interpolate(src, size=target.shape[2:], mode="bilinear", align_corners=False)


class RSU(nn.Module):
    """Residual U-block of ``height`` levels (RSU-7 … RSU-4), or RSU-4F (``dilated``): the
    latter keeps the resolution and widens the receptive field by dilations 1, 2, 4, 8 instead
    of pooling. Encoder convs ``rebnconv1..height``, decoder convs ``rebnconv{height-1..1}d``."""

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int, dilated: bool = False):
        super().__init__()
        self.height, self.dilated = height, dilated
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        for level in range(1, height - 1 if not dilated else 1):  # halve after each but the two deepest
            self.add_module(f"pool{level}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        for level in range(2, height + 1):
            dirate = 2 ** (level - 1) if dilated else (2 if level == height else 1)
            setattr(self, f"rebnconv{level}", REBNCONV(mid_ch, mid_ch, dirate))
        for level in range(height - 1, 0, -1):
            dirate = 2 ** (level - 1) if dilated else 1
            setattr(self, f"rebnconv{level}d", REBNCONV(2 * mid_ch, out_ch if level == 1 else mid_ch, dirate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        encoded, hx = [], hxin
        for level in range(1, self.height + 1):
            hx = getattr(self, f"rebnconv{level}")(hx)
            encoded.append(hx)
            if not self.dilated and level < self.height - 1:
                hx = getattr(self, f"pool{level}")(hx)
        hx = encoded[-1]
        for level in range(self.height - 1, 0, -1):
            skip = encoded[level - 1]
            if hx.shape[2:] != skip.shape[2:]:
                hx = _upsample_like(hx, skip)
            hx = getattr(self, f"rebnconv{level}d")(torch.cat((hx, skip), 1))
        return hx + hxin

    def channel_spec(self, prefix: str, inputs: tuple[str, ...], groups: dict, modules: dict) -> None:
        """Declare this block's groups and modules; its output group is named ``prefix``."""
        h = self.height

        def conv(name: str, out: str, inp: tuple[str, ...]) -> None:
            modules[f"{prefix}.{name}.conv_s1"] = ModuleIO(out=(out,), inp=inp)
            modules[f"{prefix}.{name}.bn_s1"] = ModuleIO(out=(out,))

        def group(name: str, channels: int, prunable: bool) -> str:
            groups[f"{prefix}.{name}"] = ChannelGroup(
                f"{prefix}.{name}", channels, prunable,
                taps={"act": (f"{prefix}.{name}.relu_s1",), "conv": (f"{prefix}.{name}.conv_s1",)})
            return f"{prefix}.{name}"

        mid = self.rebnconv1.conv_s1.out_channels
        out = self.rebnconvin.conv_s1.out_channels
        groups[prefix] = ChannelGroup(prefix, out, taps={
            "act": (f"{prefix}.rebnconvin.relu_s1", f"{prefix}.rebnconv1d.relu_s1"),
            "conv": (f"{prefix}.rebnconvin.conv_s1", f"{prefix}.rebnconv1d.conv_s1")})
        conv("rebnconvin", prefix, inputs)
        # The two deepest encoder convs keep their width (as in the DCT reference's layout).
        encoder = [group(f"rebnconv{level}", mid, level <= h - 2) for level in range(1, h + 1)]
        previous = prefix
        for level, name in enumerate(encoder, start=1):
            conv(f"rebnconv{level}", name, (previous,))
            previous = name
        for level in range(h - 1, 0, -1):
            name = prefix if level == 1 else group(f"rebnconv{level}d", mid, True)
            conv(f"rebnconv{level}d", name, (previous, encoder[level - 1]))
            previous = name


class U2NETP(nn.Module):
    def __init__(self, in_ch: int = 3, out_ch: int = 1):
        super().__init__()
        self.arch = "u2netp"
        blocks = {"stage1": (7, in_ch), "stage2": (6, 64), "stage3": (5, 64), "stage4": (4, 64),
                  "stage5": (4, 64), "stage6": (4, 64),
                  "stage5d": (4, 128), "stage4d": (4, 128), "stage3d": (5, 128), "stage2d": (6, 128), "stage1d": (7, 128)}
        for name, (height, inputs) in blocks.items():
            setattr(self, name, RSU(height, inputs, 16, 64, dilated=name in ("stage5", "stage6", "stage5d")))
            if name in ("stage1", "stage2", "stage3", "stage4", "stage5"):
                level = int(name[-1])
                self.add_module(f"pool{level}{level + 1}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        for side in range(1, 7):
            setattr(self, f"side{side}", nn.Conv2d(64, out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoded, hx = [], x
        for level in range(1, 7):
            hx = getattr(self, f"stage{level}")(hx)
            encoded.append(hx)
            if level < 6:
                hx = getattr(self, f"pool{level}{level + 1}")(hx)
        decoded = {6: encoded[-1]}
        for level in range(5, 0, -1):
            up = _upsample_like(decoded[level + 1], encoded[level - 1])
            decoded[level] = getattr(self, f"stage{level}d")(torch.cat((up, encoded[level - 1]), 1))
        d1 = self.side1(decoded[1])
        sides = [d1] + [_upsample_like(getattr(self, f"side{level}")(decoded[level]), d1) for level in range(2, 7)]
        fused = self.outconv(torch.cat(sides, 1))
        return tuple(torch.sigmoid(d) for d in [fused] + sides)

    def channel_spec(self) -> ArchSpec:
        groups: dict[str, ChannelGroup] = {}
        modules: dict[str, ModuleIO] = {}
        previous: tuple[str, ...] = ()
        for level in range(1, 7):
            getattr(self, f"stage{level}").channel_spec(f"stage{level}", previous, groups, modules)
            previous = (f"stage{level}",)
        deeper = "stage6"
        for level in range(5, 0, -1):
            getattr(self, f"stage{level}d").channel_spec(f"stage{level}d", (deeper, f"stage{level}"), groups, modules)
            deeper = f"stage{level}d"
        out = self.outconv.out_channels
        for side in range(1, 7):
            groups[f"side{side}"] = ChannelGroup(f"side{side}", out, prunable=False)
            source = "stage6" if side == 6 else f"stage{side}d"
            modules[f"side{side}"] = ModuleIO(out=(f"side{side}",), inp=(source,))
        groups["outconv"] = ChannelGroup("outconv", out, prunable=False)
        modules["outconv"] = ModuleIO(out=("outconv",), inp=tuple(f"side{side}" for side in range(1, 7)))
        return ArchSpec(self.arch, groups, modules, _rate_layout())


def _rate_layout() -> tuple[RateEntry, ...]:
    """The DCT reference's 39 entries (``adapt_channel``): the paired convs inside each block of
    stage1 … stage6 and stage1d … stage5d, then the output widths of stages 1 – 5.

    Inside a block, entry k sets encoder conv k and the decoder conv that writes the same width
    (``rebnconv{k+1}d``). The output entries set, as the reference's shared widths do, a stage's
    output together with the decoder stages of that width: stage1 with stage2d and stage1d,
    stage2 with stage3d, stage3 with stage4d, stage4 with stage5d, stage5 with stage6.
    """
    heights = {"stage1": 7, "stage2": 6, "stage3": 5, "stage4": 4, "stage5": 4, "stage6": 4,
               "stage1d": 7, "stage2d": 6, "stage3d": 5, "stage4d": 4, "stage5d": 4}
    entries = [RateEntry(f"{stage}.rebnconv{k}", f"{stage}.rebnconv{k}", also=(f"{stage}.rebnconv{k + 1}d",))
               for stage, h in heights.items() for k in range(1, h - 1)]
    shared = {"stage1": ("stage2d", "stage1d"), "stage2": ("stage3d",), "stage3": ("stage4d",),
              "stage4": ("stage5d",), "stage5": ("stage6",)}
    entries += [RateEntry(f"{stage} output", stage, also=also) for stage, also in shared.items()]
    return tuple(entries)


def u2netp(num_classes: int = 1) -> U2NETP:
    """U²-Net-P with ``num_classes`` output maps (1: a saliency map)."""
    return U2NETP(3, num_classes)
