"""A user's own model, as a config names it: ``arch: tests/user_models/my_model.py:make``.

Its classifier reads a flattened 4×4 map, so it runs at one input side only (16): the config's
``input_size`` default, the dataset's resolution, is what makes it traceable.
"""
import torch
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class ValueBranch(SmallNet):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def forward(self, x):
        y = self.features(x)
        return self.classifier(torch.flatten(y if y.mean() > 0 else -y, 1))


def make(num_classes: int = 10) -> nn.Module:
    return SmallNet(num_classes)


def make_untraceable() -> nn.Module:
    return ValueBranch()


class Shuffled(nn.Module):
    """A channel shuffle right after the only conv: nothing left to prune."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(x.mean((2, 3)))


def make_shuffled() -> nn.Module:
    return Shuffled()
