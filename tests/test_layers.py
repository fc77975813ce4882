"""Layer rules (prune / mask / MACs) for every supported layer type, on a model that uses them all."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fmprune import FmpruneError
from fmprune.check import check_model
from fmprune.counting import module_macs
from fmprune.layers import rule_for
from fmprune.models.trace import trace


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
    assert spec.prunable_groups() == ["conv[0:4]"]  # the halves multiply: one group, so chunk(2) stays even
    assert spec.modules["pw2"].out == spec.modules["conv"].out == ("conv[0:4]", "conv[0:4]")
    assert spec.groups["pw1"].reason == "no module's own [N, C, H, W] output carries it to tap"
    ok, line = check_model(SliceAfterCoupling(fixed=True), "slices", 12)
    spec = trace(SliceAfterCoupling(fixed=True).eval(), torch.randn(2, 3, 12, 12), "slices")
    assert ok and spec.prunable_groups() == []  # y[:, :4] would read other channels once pruned
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
