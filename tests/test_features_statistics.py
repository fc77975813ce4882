"""``features.store: statistics``: each method's per-image reduction computed during extraction
gives the scores of maps mode; the file's layout (chunks, FP-FMC's maps of its first images, packed
hash bits); streaming scorers whose batch does not change the scores; the background writer."""
from __future__ import annotations

import inspect
import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from fmprune import FmpruneError, fingerprints
from fmprune import config as cfglib
from fmprune import features as featlib
from fmprune.features import FeatureFile, contents_for, extract
from fmprune.methods import (METHODS, ParamError, Setting, check_setting, defaults, has_statistics, images_read, reads,
                             score_groups, statistics_params, streaming)
from fmprune.models import build, register
from fmprune.models.trace import trace
from fmprune.tasks import CLASSIFICATION

from .conftest import REPO

FEATURE_METHODS = sorted(m for m in METHODS if reads(m) is not None)
# Few images for the methods with an ``images`` parameter: RGD's statistics and FP-FMC's maps are
# stored for those first images only (FP-FMC's t-SNE also dominates the time).
FEW = {"rgd": {"images": 3}, "fpfmc": {"images": 2}}
# ResNet-20's: besides, parameters other than the defaults, CDP's class documents among them
PARAMS = {**FEW, "cdp": {"documents": "class"}, "cfdp": {"alpha": 0.5}, "dct": {"band": "low:3"}}


def extract_both(model, spec, tmp_path, methods: list[str], params: dict) -> dict[str, FeatureFile]:
    """The same five images (batches of 2 and 3) extracted in maps and in statistics mode."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (5,), generator=gen)
    files = {}
    for store in ("maps", "statistics"):
        c = contents_for(spec, {m: params.get(m, {}) for m in methods}, store)
        path = tmp_path / f"{store}.h5"
        extract(model, [(x[:2], y[:2]), (x[2:], y[2:])], np.arange(5), c.taps, path, {"arch": "a"},
                taylor_taps=c.taylor_taps, loss=CLASSIFICATION.loss, statistics=c.statistics, map_images=c.map_images,
                axes=c.axes)
        files[store] = FeatureFile(path)
    return files


def assert_same_scores(model, spec, files: dict[str, FeatureFile], methods: list[str], params: dict) -> None:
    """Every method's scores (and extra arrays) are bit for bit those of maps mode, at a scoring
    batch that differs from the extraction's."""
    for method in methods:
        got = {store: score_groups(method, spec, model, ff, params.get(method, {}), batch_size=2)
               for store, ff in files.items()}
        for g in spec.prunable_groups():
            np.testing.assert_array_equal(got["statistics"].scores[g], got["maps"].scores[g], err_msg=f"{method} {g}")
        for kind, per_group in got["maps"].extra.items():
            for g, value in per_group.items():
                np.testing.assert_array_equal(got["statistics"].extra[kind][g], value, err_msg=f"{method} {kind} {g}")


def test_every_map_method_but_fpfmc_declares_its_reduction_within_its_parameters():
    for method in FEATURE_METHODS:
        module = METHODS[method]
        if reads(method).endswith("_grad"):
            assert not has_statistics(method)  # Taylor's terms are per-image already
            continue
        assert has_statistics(method) == (method != "fpfmc"), method
        if has_statistics(method):
            signature = inspect.signature(module.statistics)
            keywords = {n: p.default for n, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}
            assert set(keywords) <= set(module.PARAMS), method
            assert keywords == {k: defaults(method)[k] for k in keywords}, method
            assert statistics_params(method) == keywords
    assert images_read("rgd") == 128 and images_read("fpfmc", {"images": 7}) == 7 and images_read("cfdp") is None


def test_statistics_give_maps_mode_scores_on_resnet20(resnet20_files):
    model, maps_path, stats_path = resnet20_files
    files = {"maps": FeatureFile(maps_path), "statistics": FeatureFile(stats_path)}
    try:
        assert_same_scores(model, model.channel_spec(), files, FEATURE_METHODS, PARAMS)
    finally:
        for ff in files.values():
            ff.h5.close()


def test_statistics_give_maps_mode_scores_on_a_traced_torchvision_model(tmp_path):
    register("torchvision/resnet18", num_classes=10, input_size=32)
    torch.manual_seed(0)
    model = build("torchvision/resnet18").eval()
    setting = Setting("torchvision/resnet18", "methods", "float32", given=model)
    # FP-FMC reads the same maps in both modes; a method config validation refuses here is left out
    methods = [m for m in FEATURE_METHODS if m != "fpfmc" and _accepted(m, setting)]
    files = extract_both(model, setting.spec, tmp_path, methods, FEW)
    try:
        assert_same_scores(model, setting.spec, files, methods, FEW)
    finally:
        for ff in files.values():
            ff.h5.close()


class ChannelsLast(nn.Module):
    """ConvNeXt's MLP on channels-last maps: its hidden channels exist only as [N, H, W, C]."""

    def __init__(self):
        super().__init__()
        self.stem, self.pw1, self.act, self.pw2 = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 12), nn.GELU(), nn.Linear(12, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        s = F.relu(self.stem(x))
        s = s + self.pw2(self.act(self.pw1(s.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        return self.head(s.mean((2, 3)))

    def channel_spec(self):
        return trace(self, torch.randn(2, 3, 32, 32), "channels-last")


def test_channels_last_taps_are_stored_scored_and_reduced_as_channels_first(tmp_path):
    torch.manual_seed(0)
    model = ChannelsLast().eval()
    spec = model.channel_spec()
    assert spec.prunable_groups() == ["stem", "pw1"]
    assert spec.groups["pw1"].taps == {"act": ("act",), "conv": ("pw1",)}
    assert spec.groups["pw1"].tap_axes == {"act": 3, "pw1": 3}
    methods = [m for m in FEATURE_METHODS if m != "fpfmc" and _accepted(m, Setting("cl", "methods", "float32", model))]
    assert "taylor" in methods and "hrank" in methods
    files = extract_both(model, spec, tmp_path, methods + ["fpfmc"], FEW)
    try:
        gen = torch.Generator().manual_seed(5)  # extract_both's images
        x, y = torch.randn(5, 3, 32, 32, generator=gen), torch.randint(0, 10, (5,), generator=gen)
        with torch.no_grad():
            s = F.relu(model.stem(x))
            z = model.pw1(s.permute(0, 2, 3, 1))
        h = model.act(z).requires_grad_()  # the act tap, [N, H, W, C]
        out = model.head((s + model.pw2(h).permute(0, 3, 1, 2)).mean((2, 3)))
        (grad,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), h)
        maps = files["maps"]
        assert maps.h5["taps/pw1"].shape == (5, 12, 32, 32)
        torch.testing.assert_close(torch.cat(list(maps.batches("pw1", batch_size=5))), z.permute(0, 3, 1, 2),
                                   rtol=0, atol=0)
        np.testing.assert_allclose(maps.taylor_terms("act"), (h.detach().double() * grad.double()).mean((1, 2)).numpy(),
                                   rtol=1e-6, atol=1e-12)
        assert_same_scores(model, spec, files, methods, FEW)
    finally:
        for ff in files.values():
            ff.h5.close()


def _accepted(method: str, setting: Setting) -> bool:
    try:
        check_setting(method, setting)
    except ParamError:
        return False
    return True


@pytest.fixture(scope="module")
def resnet20_files(tmp_path_factory):
    """ResNet-20's maps- and statistics-mode extractions of every feature method (``PARAMS``),
    five images."""
    torch.manual_seed(0)
    model = build("resnet20").eval()
    files = extract_both(model, model.channel_spec(), tmp_path_factory.mktemp("r20"), FEATURE_METHODS, PARAMS)
    for ff in files.values():
        ff.h5.close()
    return model, files["maps"].path, files["statistics"].path


def test_the_statistics_file_layout(resnet20_files):
    model, maps_path, stats_path = resnet20_files
    spec = model.channel_spec()
    with h5py.File(stats_path, "r") as h5, h5py.File(maps_path, "r") as maps:
        assert json.loads(h5.attrs["statistics"])["cfdp"] == {"block": 2, "sigma": 10.0, "alpha": 0.5}
        assert json.loads(maps.attrs["statistics"]) == {}
        # maps only of FP-FMC's act taps, for its first two images
        assert set(json.loads(h5.attrs["tap_kinds"]).values()) == {"act"}
        assert all(ds.shape[0] == 2 for ds in h5["taps"].values())
        assert all(ds.shape[0] == 5 for ds in maps["taps"].values())
        hrank = h5["statistics/hrank/stage1/relu"]
        assert hrank.shape == (5, 16) and hrank.dtype == np.float64 and hrank.attrs["maps_dtype"] == "float32"
        bits = h5["statistics/rgd/stage1/conv1"]  # 8 x 8 hash bits packed in 8 bytes, first 3 images
        assert bits.shape == (3, 16, 8) and bits.dtype == np.uint8 and bits.attrs["bits"] == 64
        assert maps["taps/relu"].chunks == (2, 16, 32, 32)  # whole images, as many as divide a batch
        assert h5.attrs["sample_sha256"] == maps.attrs["sample_sha256"]
        statistics = sum(ds.id.get_storage_size() for ds in _datasets(h5["statistics"]))
        assert statistics < 0.05 * sum(ds.id.get_storage_size() for ds in _datasets(maps["taps"]))
        assert set(h5["statistics/meanact"]) == set(spec.prunable_groups())


def _datasets(group: h5py.Group) -> list[h5py.Dataset]:
    found = []
    group.visititems(lambda _name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def test_stored_statistics_refuse_other_parameters_and_missing_images(resnet20_files):
    model, _, stats_path = resnet20_files
    spec = model.channel_spec()
    with FeatureFile(stats_path) as ff:
        ff.check_source("a", None, featlib.taps_for(spec, {"conv"}), statistics_of="cdp")
        with pytest.raises(FmpruneError, match="has no tap"):  # a maps reader of a statistics file
            ff.check_source("a", None, featlib.taps_for(spec, {"conv"}))
        with pytest.raises(FmpruneError, match=r"statistics of cfdp were computed with .*re-run extraction"):
            score_groups("cfdp", spec, model, ff)  # the default alpha, 0.03
        with pytest.raises(FmpruneError, match="rgd statistics of conv1 of the first 3 images only, not 4"):
            score_groups("rgd", spec, model, ff, {"images": 4})
        with pytest.raises(FmpruneError, match="first 2 images only, not 3"):
            score_groups("fpfmc", spec, model, ff, {"images": 3})


@pytest.mark.parametrize("method", [m for m in FEATURE_METHODS if m != "fpfmc"])
def test_scores_do_not_depend_on_the_scoring_batch(resnet20_files, method):
    model, maps_path, stats_path = resnet20_files
    spec = model.channel_spec()
    for path in (maps_path, stats_path):
        with FeatureFile(path) as ff:
            one = score_groups(method, spec, model, ff, PARAMS.get(method, {}), batch_size=5).scores
            streamed = score_groups(method, spec, model, ff, PARAMS.get(method, {}), batch_size=1).scores
        for g in one:
            np.testing.assert_allclose(streamed[g], one[g], rtol=1e-12, atol=1e-15, err_msg=f"{method} {g}")


@pytest.mark.parametrize("method,params", [("cfdp", {}), ("cfdp", {"block": 3}), ("dct", {"band": "low:2"}),
                                           ("dct", {}), ("rgd", {})])
def test_chunked_reductions_equal_whole_batches(monkeypatch, method, params):
    x = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    whole = METHODS[method].statistics(x, **statistics_params(method, params))
    chunk_sizes = []
    real = streaming.in_chunks

    def spy(reduce, x, elements_per_image, budget=None):
        return real(lambda chunk: chunk_sizes.append(len(chunk)) or reduce(chunk), x, elements_per_image, 1)

    monkeypatch.setattr(METHODS[method], "in_chunks", spy)
    chunked = METHODS[method].statistics(x, **statistics_params(method, params))
    assert chunk_sizes == [1] * 6  # one image at a time when the budget is below one image
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_chip_on_an_accelerator_decomposes_with_torch_as_numpy_does():
    from fmprune.methods import chip

    a = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    np.testing.assert_allclose(chip.independence_torch(a).numpy(), chip.independence(a.numpy()), rtol=1e-10, atol=1e-12)


def test_bool_statistics_are_packed_as_numpy_packs_bits():
    bits = torch.rand(3, 4, 13, generator=torch.Generator().manual_seed(3)) > 0.5
    packed = featlib._packed_bits(bits).numpy()
    np.testing.assert_array_equal(packed, np.packbits(bits.numpy(), axis=-1))


@pytest.mark.parametrize("shape,batch,expected", [
    ((640, 16, 32, 32), 64, (64, 16, 32, 32)),  # 64 KiB an image: a whole batch a chunk
    ((640, 16, 32, 32), 100, (50, 16, 32, 32)),  # the largest divisor of the batch within 4 MiB
    ((3, 16, 32, 32), 64, (3, 16, 32, 32)),  # never more images than the dataset
    ((64, 256, 56, 56), 64, (1, 256, 56, 56)),  # 3.1 MiB an image
    ((64, 1024, 56, 56), 64, (1, 334, 56, 56)),  # 12.3 MiB an image: split by channels
])
def test_chunks_hold_whole_images_as_a_batch_writes_them(shape, batch, expected):
    assert featlib._chunks(shape, 4, batch) == expected


def test_a_failed_write_fails_the_extraction_and_leaves_no_file(monkeypatch, tmp_path):
    model = build("resnet20").eval()
    c = contents_for(model.channel_spec(), {"cfdp": {}}, "statistics")

    def failing(*_args):
        raise FmpruneError("disk full")

    monkeypatch.setattr(featlib, "_write", failing)
    x = torch.randn(4, 3, 32, 32)
    with pytest.raises(FmpruneError, match="disk full"):
        extract(model, [(x[:2], torch.zeros(2)), (x[2:], torch.zeros(2))], np.arange(4), c.taps, tmp_path / "f.h5",
                {}, statistics=c.statistics)
    assert list(tmp_path.iterdir()) == []


def test_the_feature_fingerprint_follows_the_store_and_in_statistics_mode_the_parameters():
    def fingerprint(store: str, **cfdp) -> str:
        cfg = yaml.safe_load((REPO / "config.yaml").read_text())
        cfg["features"] = {**cfg.get("features", {}), "store": store}
        cfg["method_params"] = {**cfg.get("method_params", {}), "cfdp": cfdp}
        return fingerprints.features(cfglib.validate(cfg, strict=False), "resnet20")

    maps, stats = fingerprint("maps"), fingerprint("statistics")
    assert maps != stats
    assert fingerprint("maps", alpha=0.5) == maps  # maps do not depend on the scorers' parameters
    assert fingerprint("statistics", alpha=0.5) != stats


def test_contents_follow_the_store():
    spec = build("resnet20").channel_spec()
    methods = {m: {} for m in ("hrank", "cdp", "fpfmc", "taylor", "l1")}
    maps = contents_for(spec, methods, "maps")
    assert set(maps.taps.values()) == {"act", "conv"} and maps.statistics == () and maps.map_images is None
    stats = contents_for(spec, methods, "statistics")
    assert set(stats.taps.values()) == {"act"} and stats.map_images == 128  # FP-FMC's
    assert {s.method for s in stats.statistics} == {"hrank", "cdp"} and stats.taylor_taps == maps.taylor_taps
    assert contents_for(spec, {"hrank": {}}, "statistics").taps == {}
    with pytest.raises(FmpruneError, match="features.store"):
        contents_for(spec, methods, "other")
