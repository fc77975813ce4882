"""First-order Taylor (METHODS.md, "Criteria beyond the seeds"): the score from its terms by hand
and by loops, and the terms extraction stores against one backward pass per image."""
import json

import h5py
import numpy as np
import pytest

from benchmarks.naive import taylor as naive
from fmprune.features import extract, taps_for
from fmprune.methods import combine, score_groups, taylor
from fmprune.tasks import CLASSIFICATION


def test_hand_worked_scores():
    # |terms| averaged over images: [2, 1]; divided by their L2 norm √5
    np.testing.assert_allclose(taylor.channel_scores([[1.0, -2.0], [-3.0, 0.0]]), [2 / np.sqrt(5), 1 / np.sqrt(5)])
    # signs do not cancel across images (the paper's per-image absolute value)
    np.testing.assert_allclose(taylor.channel_scores([[1.0, 1.0], [-1.0, 1.0]]), [np.sqrt(0.5), np.sqrt(0.5)])
    assert taylor.channel_scores(np.zeros((3, 2))).tolist() == [0.0, 0.0]


def test_matches_the_straightforward_loops():
    terms = np.random.default_rng(0).standard_normal((7, 5))
    np.testing.assert_allclose(taylor.channel_scores(terms), naive.channel_scores(terms), rtol=1e-13)


def test_stored_terms_are_the_per_image_gradients(resnet20_extraction):
    e = resnet20_extraction
    with e.open() as ff:
        taps = ("relu", "layer1.0.relu1", "layer2.2.relu2", "layer3.2.relu1")
        for tap, expected in naive.terms(e.model, e.images, e.labels, CLASSIFICATION.loss, taps).items():
            np.testing.assert_allclose(ff.taylor_terms(tap), expected, rtol=1e-4, atol=1e-7 * np.abs(expected).max())


def test_a_coupled_group_combines_its_normalised_taps(resnet20_extraction):
    e = resnet20_extraction
    with e.open() as ff:
        scores = score_groups("taylor", e.spec, e.model, ff).scores
        expected = combine([naive.channel_scores(ff.taylor_terms(t)) for t in e.spec.groups["stage1"].taps["act"]])
    np.testing.assert_allclose(scores["stage1"], expected, rtol=1e-12)


def test_terms_are_stored_only_when_asked(resnet20_extraction, tmp_path):
    e = resnet20_extraction
    extract(e.model, [(e.images, e.labels)], np.arange(6), taps_for(e.spec, {"act"}), tmp_path / "f.h5", {})
    with h5py.File(tmp_path / "f.h5") as h5:
        assert "taylor" not in h5 and set(json.loads(h5.attrs["tap_kinds"])) == set(taps_for(e.spec, {"act"}))


def test_scoring_without_terms_is_one_line(resnet20_extraction, tmp_path):
    from fmprune import FmpruneError
    from fmprune.features import FeatureFile

    e = resnet20_extraction
    extract(e.model, [(e.images, e.labels)], np.arange(6), taps_for(e.spec, {"act"}), tmp_path / "f.h5", {})
    with FeatureFile(tmp_path / "f.h5") as ff, pytest.raises(FmpruneError, match="no Taylor terms of relu .*taylor"):
        score_groups("taylor", e.spec, e.model, ff)


def test_the_pipeline_extracts_terms_only_when_a_taylor_method_is_configured(tmp_path):
    import torch
    import yaml

    from fmprune import FmpruneError, pipeline
    from fmprune import config as cfglib
    from fmprune.features import FeatureFile
    from fmprune.models import build
    from fmprune.surgery import save_pruned

    from ..conftest import REPO

    torch.manual_seed(0)
    model = build("resnet20")
    save_pruned(tmp_path / "model.pt", model, "resnet20", 10)
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["features"] = {"samples": 8, "batch_size": 3}
    seeds_methods = raw["methods"]  # the default's: the plans need CDP and RGD
    for methods, name in ((seeds_methods, "without"), (seeds_methods + ["taylor"], "with")):  # cfg: the last
        cfg = cfglib.validate({**raw, "methods": methods}, strict=False)
        pipeline.extract_features(cfg, "resnet20", tmp_path / "model.pt", tmp_path / f"{name}.h5")
    pipeline.score(cfg, "resnet20", "taylor", tmp_path / "model.pt", tmp_path / "with.h5", tmp_path / "s.npz")
    scored, meta = pipeline.load_scores(tmp_path / "s.npz", model.channel_spec())
    assert meta["method"] == "taylor" and set(scored.scores) == set(model.channel_spec().prunable_groups())
    with FeatureFile(tmp_path / "with.h5") as ff:
        assert ff.taylor_terms("relu").shape == (8, 16)
    with pytest.raises(FmpruneError, match="no Taylor terms"):
        pipeline.score(cfg, "resnet20", "taylor", tmp_path / "model.pt", tmp_path / "without.h5", tmp_path / "t.npz")
