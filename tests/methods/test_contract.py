"""The method contract: the registry, score_groups' loop against the eight seeds' methods as they
were scored before the contract, config-only refusals, and what extraction and its fingerprint
learn from the registry."""
import copy

import numpy as np
import pytest
import yaml
from torch import nn

from fmprune import compare, fingerprints, plan
from fmprune import config as cfglib
from fmprune.methods import (METHODS, ORDER, WEIGHTS, cdp, combine, defaults, l1, output_filters, reads, rgd,
                             rule_logs, score_groups)
from fmprune.methods import random as random_method

from ..conftest import REPO

SEEDS_METHODS = ["hrank", "cfdp", "dct", "cdp", "rgd", "fpfmc", "l1", "random"]
NEW_METHODS = ["chip", "apoz", "meanact", "taylor", "fpgm", "bnscale"]


def test_the_registry_holds_every_method_module_and_orders_them():
    assert set(METHODS) == set(SEEDS_METHODS + NEW_METHODS)
    assert ORDER == (*SEEDS_METHODS, *sorted(NEW_METHODS))
    assert compare.METHOD_ORDER == ORDER
    assert cfglib.schema()["properties"]["methods"]["default"] == SEEDS_METHODS
    assert plan.NATIVE_FORMS == {"cdp": "sparsity", "rgd": "threshold"}
    assert [m for m in ORDER if rule_logs(m)] == ["fpfmc"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_declares_what_it_reads_and_its_parameters(method):
    module = METHODS[method]
    assert module.READS in ("act", "conv", "act_grad", WEIGHTS)
    assert module.__doc__ and len(module.__doc__.splitlines()) > 2
    assert set(module.PARAMS) == set(defaults(method))  # every parameter has its default in score
    for name, value in defaults(method).items():
        module.PARAMS[name](value)  # the defaults pass their own checks


def seeds_scores(method, e, ff):
    """Scores of the eight seeds' methods composed as score_groups composed them before the contract."""
    spec, model = e.spec, e.model
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    def maps(g, tap, images=None):
        return ff.batches(tap, 64, images=images, channels=spec.groups[g].tap_slices.get(tap))

    def norms(g):
        return [l1.filter_norms(output_filters(convs[p])) for p in spec.producers(g) if p in convs]

    out = {}
    for g in spec.prunable_groups():
        taps = spec.groups[g].taps["conv" if method in ("cdp", "rgd") else "act"]
        if method == "random":
            out[g] = random_method.channel_scores(g, spec.groups[g].channels)
        elif method == "l1":
            out[g] = combine(norms(g))
        elif method == "rgd":
            sim = rgd.group_similarity([rgd.similarity(maps(g, t, 128), hash_size=8) for t in taps])
            summed = np.sum(norms(g), axis=0)
            out[g] = rgd.ranking_scores(rgd.decompose(sim, summed, 0.7)[1], summed)
        elif method == "cdp":
            out[g] = combine([cdp.tfidf_scores(cdp.document_activations(maps(g, t)), coe=0.0) for t in taps])
        else:
            out[g] = combine([METHODS[method].channel_scores(maps(g, t)) for t in taps])
    return out


@pytest.mark.parametrize("method", [m for m in SEEDS_METHODS if m != "fpfmc"])
def test_score_groups_gives_the_seeds_methods_their_former_scores(resnet20_extraction, method):
    e = resnet20_extraction
    with e.open() as ff:
        scored = score_groups(method, e.spec, e.model, ff)
        expected = seeds_scores(method, e, ff)
    assert list(scored.scores) == list(expected)
    for g, s in expected.items():
        np.testing.assert_array_equal(scored.scores[g], s, err_msg=f"{method} {g}")
    if method == "rgd":
        assert set(scored.extra) == {"similarity", "l1"}


def test_fpfmc_in_process_equals_its_three_rules(resnet20_extraction, tmp_path):
    from fmprune import pipeline

    cfg = cfglib.validate({**base_config(), "method_params": {"fpfmc": {"images": 3}}}, strict=False)
    e = resnet20_extraction
    pipeline.fpfmc_kselect(cfg, "resnet20", e.path, tmp_path / "kselect.h5", workers=1)
    pipeline.fpfmc_cluster(cfg, tmp_path / "kselect.h5", tmp_path / "labels.h5")
    pipeline.fpfmc_sort(cfg, "resnet20", tmp_path / "labels.h5", tmp_path / "scores.npz")
    rules, _ = pipeline.load_scores(tmp_path / "scores.npz", e.spec)
    with e.open() as ff:
        in_process = score_groups("fpfmc", e.spec, e.model, ff, cfg["method_params"]["fpfmc"])
    for g in e.spec.prunable_groups():
        np.testing.assert_array_equal(in_process.scores[g], rules.scores[g])
        np.testing.assert_array_equal(in_process.extra["redundancy_index"][g], rules.extra["redundancy_index"][g])


def base_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def refusal(cfg: dict) -> str:
    with pytest.raises(cfglib.ConfigError) as err:
        cfglib.validate(cfg, strict=False)
    message = str(err.value)
    assert "\n" not in message
    return message


NO_BN_RELU = """
from torch import nn

def net(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""


def test_config_only_refusals_name_their_key(tmp_path):
    cfg = base_config()
    cfg["features"] = {"dtype": "float16"}
    assert refusal(cfg).startswith("config error at features.dtype: hrank (listed at methods) refuses float16")
    (tmp_path / "net.py").write_text(NO_BN_RELU)
    cfg = base_config()
    cfg["models"]["resnet20"].update(arch=f"{tmp_path / 'net.py'}:net", plans={"u50": {"uniform": 0.5}},
                                     default_plan="u50", methods=["apoz"])
    assert refusal(copy.deepcopy(cfg)).startswith("config error at models.resnet20.methods: apoz counts the zeros "
                                                  "of ReLU outputs, but ")
    cfg["models"]["resnet20"]["methods"] = ["bnscale"]
    assert refusal(cfg).startswith("config error at models.resnet20.methods: bnscale ranks channels by their BN "
                                   "scale, but ")


def test_new_methods_validate_on_the_default_model():
    cfg = base_config()
    cfg["methods"] = SEEDS_METHODS + NEW_METHODS
    cfglib.validate(cfg, strict=False)


def test_a_taylor_method_changes_the_extraction_and_its_fingerprint():
    cfg = cfglib.validate(base_config(), strict=False)
    with_taylor = cfglib.validate({**base_config(), "methods": SEEDS_METHODS + ["taylor"]}, strict=False)
    with_weights_only = cfglib.validate({**base_config(), "methods": SEEDS_METHODS + ["fpgm", "bnscale"]},
                                        strict=False)
    assert fingerprints.features(with_taylor, "resnet20") != fingerprints.features(cfg, "resnet20")
    assert fingerprints.features(with_weights_only, "resnet20") == fingerprints.features(cfg, "resnet20")
    assert reads("taylor") == "act_grad" and reads("fpgm") is None and reads("chip") == "act"
