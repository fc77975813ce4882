"""Layer rules (prune / mask / MACs) for every supported layer type, on a model that uses them all."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fmprune import FmpruneError
from fmprune.check import check_model, expected_sizes
from fmprune.counting import module_macs
from fmprune.layers import rule_for
from fmprune.models.spec import TensorIO
from fmprune.models.trace import trace
from fmprune.surgery import mask_, pruned_copy


class EveryLayer(nn.Module):
    """BN, PReLU, depthwise conv, squeeze-excitation, chunk, transposed conv, concat, GroupNorm, flatten → linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.PReLU(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.se1, self.se2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(6, 8, 2, stride=2)
        self.mix = nn.Conv2d(16, 6, 1)
        self.side, self.gn = nn.Conv2d(8, 4, 1), nn.GroupNorm(2, 4)
        self.fc = nn.Linear(10 * 4 * 4, 5)

    def forward(self, x):
        s = self.dw(self.act(self.bn(self.stem(x))))
        s = s * torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(s, 1)))))
        a, b = self.down(s).chunk(2, dim=1)
        u = self.up(F.relu(a) + b)
        m = F.relu(self.mix(torch.cat([u, s], 1)))
        feats = torch.cat([m, self.gn(self.side(s))], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(feats, 4), 1))


def test_every_layer_type_prunes_to_its_masked_twin():
    ok, line = check_model(EveryLayer(), "every-layer", 16)
    assert ok and line.startswith("ok every-layer;"), line
    spec = trace(EveryLayer().eval(), torch.randn(2, 3, 16, 16), "every-layer")
    assert spec.prunable_groups() == ["stem", "se1", "down[0:6]", "up", "mix"]
    assert spec.modules["dw"].out == spec.modules["dw"].inp == ("stem",)  # depthwise: one group
    assert spec.modules["se2"].out == ("stem",)  # the excitation scales the stem's channels
    assert spec.modules["down"].out == ("down[0:6]", "down[0:6]")  # both halves are added: one group
    assert spec.modules["mix"].inp == ("up", "stem")
    assert (spec.modules["fc"].inp, spec.modules["fc"].inp_expand) == (("mix", "side"), 16)
    assert spec.groups["side"].reason == "GroupNorm gn normalises across channels"
    assert spec.groups["fc"].reason == "it reaches the model's output"


def test_macs_of_grouped_and_transposed_convs():
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=4),
                        nn.ConvTranspose2d(8, 6, 3, stride=2), nn.GroupNorm(3, 6), nn.PReLU())
    # 5×5 maps: 25·8·3; 25·8·(8/4·9); each of the 8·25 inputs scatters into 6·9 outputs; norms count nothing
    assert module_macs(net, 5) == {"0": 600, "1": 3600, "2": 10800, "3": 0, "4": 0}


@pytest.mark.parametrize("module, message", [
    (nn.Conv2d(8, 8, 3, groups=4), "m: grouped conv (groups=4) keeps all its channels"),
    (nn.GroupNorm(2, 8), "m: GroupNorm normalises across channels, so they are kept whole"),
    (nn.LayerNorm(8), "m: LayerNorm normalises across channels, so they are kept whole"),
])
def test_layers_that_keep_their_channels_refuse_a_cut_in_one_line(module, message):
    rule = rule_for(module)
    with pytest.raises(FmpruneError) as err:
        rule.prune("m", module, torch.tensor([0, 1]), None)
    assert str(err.value) == message
    with pytest.raises(FmpruneError):
        with torch.no_grad():
            rule.mask("m", module, torch.tensor([3]), None)


class SliceAfterCoupling(nn.Module):
    """A channels-last MLP added to a conv's output, which is then cut in two halves that multiply."""

    def __init__(self, fixed: bool):
        super().__init__()
        self.fixed = fixed
        self.conv, self.pw1, self.pw2 = nn.Conv2d(3, 8, 3), nn.Linear(8, 16), nn.Linear(16, 8)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        y = y + self.pw2(F.gelu(self.pw1(y.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        a, b = (y[:, :4], y[:, 4:]) if self.fixed else y.chunk(2, dim=1)
        return self.head(a * b)


def test_a_cut_reaches_every_coupled_producer():
    ok, line = check_model(SliceAfterCoupling(fixed=False), "chunks", 12)
    assert ok and line.startswith("ok chunks;"), line
    spec = trace(SliceAfterCoupling(fixed=False).eval(), torch.randn(2, 3, 12, 12), "chunks")
    # the halves multiply: one group, so chunk(2) stays even; the MLP's hidden channels are a group of their own
    assert spec.prunable_groups() == ["conv[0:4]", "pw1"]
    assert spec.modules["pw2"].out == spec.modules["conv"].out == ("conv[0:4]", "conv[0:4]")
    ok, line = check_model(SliceAfterCoupling(fixed=True), "slices", 12)
    spec = trace(SliceAfterCoupling(fixed=True).eval(), torch.randn(2, 3, 12, 12), "slices")
    assert ok and spec.prunable_groups() == ["pw1"]  # y[:, :4] would read other channels once pruned
    assert spec.groups["conv[0:4]"].reason == "operator.getitem in the model's forward cuts channels at fixed positions"


class Grouped(nn.Module):
    """ResNeXt's grouped 3×3 between 1×1 convs, and a depthwise conv with a channel multiplier."""

    def __init__(self):
        super().__init__()
        self.reduce, self.grouped = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.expand, self.mid = nn.Conv2d(8, 6, 1), nn.Conv2d(6, 6, 1)
        self.mult, self.head = nn.Conv2d(6, 12, 3, padding=1, groups=6), nn.Conv2d(12, 4, 1)

    def forward(self, x):
        y = self.expand(F.relu(self.grouped(F.relu(self.reduce(x)))))
        return self.head(F.relu(self.mult(self.mid(F.relu(y))))).mean((2, 3))


def test_grouped_convs_keep_the_channels_they_read_and_write_whole():
    ok, line = check_model(Grouped(), "grouped", 8)
    assert ok and line.startswith("ok grouped; ") and "1/6 groups prunable" in line, line
    spec = trace(Grouped().eval(), torch.randn(2, 3, 8, 8), "grouped")
    assert spec.prunable_groups() == ["expand"]
    reasons = {g: spec.groups[g].reason for g in ("reduce", "grouped", "mid", "mult")}
    assert reasons == {"reduce": "grouped conv grouped (groups=4)", "grouped": "grouped conv grouped (groups=4)",
                       "mid": "grouped conv mult (groups=6)", "mult": "grouped conv mult (groups=6)"}


class LayerScale(nn.Module):
    """ConvNeXt's block: a depthwise conv and a channels-last MLP, scaled by a bare parameter
    [C, 1, 1] before joining the stream; then a buffer [1, C, 1, 1] shifts a conv's output and
    a scalar parameter scales it (no channel to cut)."""

    def __init__(self):
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw1, self.pw2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.gamma, self.temperature = nn.Parameter(torch.randn(8, 1, 1)), nn.Parameter(torch.tensor(2.0))
        self.register_buffer("shift", torch.randn(1, 6, 1, 1))
        self.mid, self.head = nn.Conv2d(8, 6, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        s = F.relu(self.stem(x))
        s = s + self.gamma * self.pw2(F.gelu(self.pw1(self.dw(s).permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        return self.head(F.relu(self.mid(s) - self.shift) * self.temperature).mean((2, 3))


def test_a_bare_parameter_follows_the_channels_it_scales():
    ok, line = check_model(LayerScale(), "layer-scale", 8)
    assert ok and line.startswith("ok layer-scale;"), line
    model, x = LayerScale().double().eval(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    spec = trace(model, x, "layer-scale")
    assert spec.prunable_groups() == ["stem", "pw1", "mid"]
    # the MLP's hidden channels are tapped channels-last (F.gelu is no module: the linear layer's output is both taps)
    assert spec.groups["pw1"].taps == {"act": ("pw1",), "conv": ("pw1",)} and spec.groups["pw1"].tap_axes == {"pw1": 3}
    assert spec.tensors == {"gamma": TensorIO(("stem",), 0), "shift": TensorIO(("mid",), 1)}
    stem, hidden, mid = torch.tensor([0, 2, 3, 5, 7]), torch.tensor([1, 2, 3, 5, 8, 13]), torch.tensor([1, 4])
    kept = {"stem": stem, "pw1": hidden, "mid": mid}
    pruned, masked = pruned_copy(model, kept, spec), mask_(copy.deepcopy(model), kept, spec)
    with torch.no_grad():
        assert torch.allclose(pruned(x), masked(x), rtol=0, atol=1e-12)
    assert isinstance(pruned.gamma, nn.Parameter) and pruned.gamma.requires_grad
    assert torch.equal(pruned.gamma, model.gamma[stem]) and torch.equal(pruned.shift, model.shift[:, mid])
    assert "shift" in dict(pruned.named_buffers())
    # stem 3·9·5 + 5, dw 5·9 + 5, pw1 5·6 + 6, pw2 6·5 + 5, gamma 5, temperature 1, mid 5·2 + 2, head 2·4 + 4
    params = sum(p.numel() for p in pruned.parameters())
    assert params == 140 + 50 + 36 + 35 + 5 + 1 + 12 + 12
    assert expected_sizes(model, spec, kept, 8) == (params, sum(module_macs(pruned, 8).values()))  # masking agrees


class Rescaled(nn.Module):
    """A conv's output combined with a bare parameter ``scale`` in one of several ways."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4 * 36, 2)
        self.scale = nn.Parameter(torch.rand(4 * 36 if how == "flattened" else (4, 1, 1)) + 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        if self.how == "scaled":
            y = y * self.scale
        elif self.how == "divided":
            y = y / self.scale
        elif self.how == "read twice":
            y = y * self.scale + self.scale.mean()
        y = torch.flatten(y, 1)
        return self.head(y * self.scale if self.how == "flattened" else y)


@pytest.mark.parametrize("how, reason", [
    ("scaled", ""),
    ("divided", "operator.truediv in the model's forward divides by or into parameter scale, so a silenced "
                "channel would divide by zero"),
    ("read twice", "parameter scale is read by 2 ops, not all following the same channels"),
    ("flattened", "unsupported operator.mul in the model's forward: combines them with parameter scale, whose "
                  "channels fmprune cannot cut"),  # each channel's 36 entries: a shape no rule cuts
])
def test_a_bare_parameter_follows_channels_or_keeps_them_whole(how, reason):
    ok, line = check_model(Rescaled(how), "rescaled", 8)
    verdict = f"unsupported rescaled: {reason} (its" if reason.startswith("unsupported") else "ok rescaled; "
    assert ok and line.startswith(verdict), line
    conv = trace(Rescaled(how).eval(), torch.randn(2, 3, 8, 8), "rescaled").groups["conv"]
    assert (conv.prunable, conv.reason) == (not reason, reason)
