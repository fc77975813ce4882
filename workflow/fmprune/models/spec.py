"""How an architecture declares what can be pruned.

Every architecture describes its channels once, as *channel groups*: a set of channels that
must keep one index set (a plain conv's output, a residual stream written by several convs, a
concatenation slice). Each module that owns channel-indexed tensors declares which groups its
output and input axes are made of, in concatenation order. Surgery, masking, L1 scores and
feature taps are all derived from these declarations, so an architecture is one model file
plus one ``channel_spec``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChannelGroup:
    name: str
    channels: int
    prunable: bool = True
    # Tap kind ("act" or "conv") -> module names whose forward outputs carry this group's
    # channels; ``tap_slices`` gives, per module, the channel slice (start, stop) when the
    # module's output holds more than this group (DenseNet's shared BN-ReLU).
    taps: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tap_slices: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Tap module -> the axis of its output that holds channels, when not 1 (a channels-last
    # [N, H, W, C] output: 3); feature files store every tap as [N, C, H, W].
    tap_axes: dict[str, int] = field(default_factory=dict)
    # When set, a rate applies to the *kept* width of these groups, not to ``channels``: the
    # seeds size DenseNet's transitions as floor(W·(1 − r)) of their pruned input width W.
    width_of: tuple[str, ...] = ()
    # Why a group is not prunable, when a trace decided it (the op and module that keep it whole).
    reason: str = ""


@dataclass(frozen=True)
class ModuleIO:
    """The groups that make up a module's output and input channel axes (concat order)."""

    out: tuple[str, ...] = ()
    inp: tuple[str, ...] = ()
    # Input features per input channel: H·W when a linear layer reads a flattened feature map.
    inp_expand: int = 1


@dataclass(frozen=True)
class TensorIO:
    """A parameter or buffer that the forward pass combines elementwise with channels (ConvNeXt's
    layer_scale): its axis ``dim`` is made of ``groups`` (concat order)."""

    groups: tuple[str, ...]
    dim: int


@dataclass(frozen=True)
class RateEntry:
    """One entry of the seeds' ``compress_rate`` list.

    ``group`` is None for entries the layout reserves but never uses. ``secondary`` marks an
    entry that names a group another entry sets (ResNet's stem vs. its stage-1 stream): it must
    be 0 or equal to that entry, otherwise a warning says which value was used.
    """

    label: str
    group: str | None
    secondary: bool = False
    also: tuple[str, ...] = ()  # further groups this entry sets to the same rate (GoogLeNet's 5×5 pair)


@dataclass(frozen=True)
class ArchSpec:
    arch: str
    groups: dict[str, ChannelGroup]
    modules: dict[str, ModuleIO]
    rate_layout: tuple[RateEntry, ...]
    # Ops a trace could not follow, in the order the forward pass met them (their channels are
    # kept whole); the first is what ``fmprune check`` names.
    unsupported: tuple[str, ...] = ()
    # Qualified name -> axes of each bare parameter or buffer that follows channels (traced specs).
    tensors: dict[str, TensorIO] = field(default_factory=dict)

    def offsets(self, names: tuple[str, ...]) -> list[int]:
        """Start offset of each named group inside their concatenation."""
        starts, pos = [], 0
        for name in names:
            starts.append(pos)
            pos += self.groups[name].channels
        return starts

    def producers(self, group: str) -> list[str]:
        """Modules whose output axis contains ``group``."""
        return [m for m, io in self.modules.items() if group in io.out]

    def prunable_groups(self) -> list[str]:
        return [g for g, spec in self.groups.items() if spec.prunable]

    def channel_axes(self) -> dict[str, int]:
        """Tap module -> its output's channel axis, for the taps whose channels are not on axis 1."""
        return {t: d for spec in self.groups.values() for t, d in spec.tap_axes.items()}

    def taps(self, kind: str) -> dict[str, tuple[str, ...]]:
        """Prunable group -> its tap modules of ``kind``."""
        return {g: s.taps[kind] for g, s in self.groups.items() if s.prunable and kind in s.taps}
