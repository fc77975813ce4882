"""Extraction: one pass, every tap, the sample recorded, values equal to a direct forward."""
import json

import h5py
import numpy as np
import torch

from fmprune.features import FeatureFile, extract, indices_sha256, sample_indices, taps_for
from fmprune.models import build


def test_sample_is_seeded_sorted_and_restricted_to_the_pool():
    a = sample_indices(100, 10, seed=1)
    assert np.array_equal(a, sample_indices(100, 10, seed=1)) and np.all(np.diff(a) > 0)
    assert set(sample_indices(100, 5, seed=1, pool=np.arange(50, 60))) <= set(range(50, 60))


def test_extraction_stores_every_tap_and_matches_a_direct_forward(tmp_path):
    model = build("resnet20").eval()
    spec = model.channel_spec()
    taps = taps_for(spec, {"act", "conv"})
    # every prunable group's taps, the unprunable last stream's excluded
    assert "layer1.0.relu2" in taps and "relu" in taps and "layer3.2.relu2" not in taps
    x = torch.randn(6, 3, 32, 32)
    y = torch.arange(6)
    idx = np.array([3, 7, 8, 20, 21, 40])
    extract(model, [(x[:4], y[:4]), (x[4:], y[4:])], idx, taps, tmp_path / "f.h5", {"arch": "resnet20"})
    captured = {}
    handle = model.layer1[0].relu1.register_forward_hook(lambda m, i, o: captured.setdefault("t", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    with FeatureFile(tmp_path / "f.h5") as ff:
        assert ff.n_images == 6 and ff.attrs["sample_sha256"] == indices_sha256(idx)
        assert set(json.loads(ff.attrs["tap_kinds"])) == set(taps)
        stored = torch.cat(list(ff.batches("layer1.0.relu1", batch_size=4)))
        assert torch.allclose(stored, captured["t"])
        assert np.array_equal(ff.labels, y.numpy())
    with h5py.File(tmp_path / "f.h5") as h5:
        assert np.array_equal(h5["sample_indices"][()], idx)
        assert h5["taps/layer1.0.relu1"].chunks == (4, 16, 32, 32)  # whole images, as many as a batch writes
