"""Traced channel specs: they agree with every hand-written spec, and prune torchvision's CNNs provably."""
import pytest
import torch
from torch import nn

from fmprune.check import check, check_model
from fmprune.cli import main
from fmprune.models import build
from fmprune.models.trace import trace

HAND = {"resnet20": 32, "resnet56": 32, "resnet18": 64, "resnet50": 64, "vgg16_bn": 32, "googlenet": 32,
        "densenet40": 32, "u2netp": 64}  # U²-Net-P branches on map sizes: traced on the example's
# builder -> input side: small, but every stage keeps a spatial extent (inception_v3 needs 75)
TORCHVISION = {
    "resnet18": 32, "resnext50_32x4d": 32, "wide_resnet50_2": 32, "vgg11_bn": 32, "densenet121": 32,
    "googlenet": 32, "inception_v3": 75, "mobilenet_v2": 32, "mobilenet_v3_large": 32, "mnasnet1_0": 32,
    "efficientnet_b0": 32, "regnet_y_400mf": 32, "squeezenet1_1": 64, "convnext_tiny": 32, "alexnet": 64,
}


def signatures(spec) -> dict[str, frozenset]:
    """Group -> every (module, axis, offset) it occupies: what makes two specs' groups the same."""
    sig = {g: set() for g in spec.groups}
    for name, io in spec.modules.items():
        for side in ("out", "inp"):
            names = getattr(io, side)
            for g, start in zip(names, spec.offsets(names)):
                sig[g].add((name, side, start))
    return {g: frozenset(s) for g, s in sig.items()}


@pytest.mark.parametrize("arch", HAND)
def test_traced_groups_equal_the_declared_ones(arch):
    model = build(arch)
    declared = model.channel_spec()
    traced = trace(model, torch.randn(2, 3, HAND[arch], HAND[arch]), arch)
    by_signature = {sig: g for g, sig in signatures(traced).items()}
    for g, sig in signatures(declared).items():
        t = by_signature.get(sig)
        assert t is not None, f"{arch}: declared group {g} has no traced twin"
        want, got = declared.groups[g], traced.groups[t]
        assert got.channels == want.channels
        if want.prunable:  # the seeds keep more groups whole than the trace must (stems, classifier inputs)
            assert got.prunable, (g, got.reason)
            assert {k: set(v) for k, v in got.taps.items()} == {k: set(v) for k, v in want.taps.items()}, g
            # a declared slice covering the whole tap output is the traced whole-output tap
            whole = {tap: s for tap, s in want.tap_slices.items() if s != (0, want.channels) or tap in got.tap_slices}
            assert got.tap_slices == whole, g
    # what the trace adds is the classifier's own output (and VGG's hidden layer), never prunable
    extra = set(traced.groups) - {by_signature[s] for s in signatures(declared).values()}
    assert not any(traced.groups[g].prunable for g in extra), extra
    assert len(traced.rate_layout) == len(traced.prunable_groups())


@pytest.mark.parametrize("builder", TORCHVISION)
def test_torchvision_models_prune_to_their_masked_twin(builder):
    ok, line = check(f"torchvision/{builder}", TORCHVISION[builder])
    assert ok, line
    prunable, total = map(int, line.split(" groups prunable")[0].rsplit(" ", 1)[1].split("/"))
    assert line.startswith("ok "), line
    # ConvNeXt: every stream is LayerNorm'd over channels (kept whole); its 18 blocks' MLP hidden channels are
    # tapped channels-last
    assert prunable == 18 if builder == "convnext_tiny" else prunable >= 5, line


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle: a reshape that interleaves channels."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.conv1(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.conv2(x)).mean((2, 3))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y if y.sum() > 0 else -y


class SizeAssert(nn.Module):
    """Asserts its input side, as torchvision's vision transformers do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        torch._assert(x.shape[2] == 224, "Wrong image height!")
        return self.conv(x)


def test_an_unsupported_op_is_named_in_one_line():
    ok, line = check_model(Shuffle(), "shuffle", 16)
    assert ok and "\n" not in line
    assert line.startswith("unsupported shuffle: unsupported Tensor.view in the model's forward: reshapes channels")
    assert "1/4 groups prunable" in line  # conv2 still is; conv1, the shuffled copy and the head are kept whole
    ok, line = check_model(DataDependent(), "dd", 16)
    assert not ok and line.startswith("untraceable dd: torch.fx cannot trace the forward pass: ") and "\n" not in line
    ok, line = check_model(SizeAssert(), "vitlike", 16)
    assert not ok and line == "untraceable vitlike: the forward pass fails on a 2×3×16×16 input: Wrong image height!"


def test_cli_check_prints_one_line_per_model(capsys):
    assert main(["check", "resnet20", "torchvision/squeezenet1_1", "--input-size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(";")[0] for line in lines] == ["ok resnet20", "ok torchvision/squeezenet1_1"]
    assert main(["check", "torchvision/nosuchnet"]) == 2
    assert capsys.readouterr().err.strip() == ("fmprune: error: torchvision/nosuchnet: torchvision has no "
                                               "classification builder 'nosuchnet'")


def test_layout_lists_entries_then_the_groups_kept_whole(capsys):
    assert main(["layout", "torchvision/squeezenet1_1", "--input-size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[0] features.0 -> features.0 (64 channels: features.0, features.3.squeeze)"
    assert len(lines) == 26 and lines[-1] == ("kept whole: classifier.1 (1000 channels: classifier.1): "
                                              "it reaches the model's output")
    assert main(["layout", "resnet20"]) == 0
    assert capsys.readouterr().out.startswith("[0] stem (secondary) -> stage1 (16 channels: conv1, bn1, ")
