"""A small ResNet-20 extraction shared by the methods' group-level tests: act and conv taps and the
Taylor terms of a few random images, with their labels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fmprune.features import FeatureFile, extract, taps_for, taylor_taps_for
from fmprune.models import ArchSpec, build
from fmprune.tasks import CLASSIFICATION


@dataclass
class Extraction:
    model: nn.Module
    spec: ArchSpec
    path: Path
    images: torch.Tensor
    labels: torch.Tensor

    def open(self) -> FeatureFile:
        return FeatureFile(self.path)


@pytest.fixture(scope="session")
def resnet20_extraction(tmp_path_factory) -> Extraction:
    torch.manual_seed(0)
    model = build("resnet20").eval()
    spec = model.channel_spec()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (6,), generator=gen)
    path = tmp_path_factory.mktemp("resnet20") / "features.h5"
    kinds = {"act", "conv", "act_grad"}
    extract(model, [(x[:4], y[:4]), (x[4:], y[4:])], np.arange(6), taps_for(spec, kinds), path, {"arch": "resnet20"},
            taylor_taps=taylor_taps_for(spec, kinds), loss=CLASSIFICATION.loss)
    return Extraction(model, spec, path, x, y)
