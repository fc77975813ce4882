"""Traced architectures in a config: a user's model file and torchvision builders validate, build,
save and load with their class count and input side; what cannot work is one config error line."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fmprune import config as cfglib
from fmprune import pipeline
from fmprune.counting import count
from fmprune.io import sha256_file
from fmprune.models import build, input_size, spec_of
from fmprune.surgery import load_pruned, prune_, save_pruned

REPO = Path(__file__).resolve().parent.parent
USER_FILE = REPO / "tests/user_models/my_model.py"
USER = f"{USER_FILE}:make"

CONFIG = {
    "datasets": {"digits": {"kind": "digits", "resolution": 16}},
    "models": {"mine": {"arch": USER, "dataset": "digits", "default_plan": "half",
                        "plans": {"half": {"rates": "[0.5]*2"}, "u30": {"uniform": 0.3},
                                  "macs60": {"target_reduction": 0.4}}}},
    "methods": ["l1"],
    "recipes": {"baseline": {"epochs": 1, "lr": 0.1}, "finetune": {"epochs": 1, "lr": 0.01}},
}


def config(**model_changes) -> dict:
    cfg = copy.deepcopy(CONFIG)
    cfg["models"]["mine"].update(model_changes)
    return cfg


def test_a_user_model_file_is_an_architecture():
    cfg = cfglib.validate(config())
    assert input_size(USER) == 16  # the dataset's resolution: its classifier reads a 4×4 map
    spec = spec_of(USER)
    assert spec.prunable_groups() == ["features.0", "features.4"]
    assert (spec.modules["classifier"].inp, spec.modules["classifier"].inp_expand) == (("features.4",), 16)
    assert spec.groups["classifier"].channels == 10  # the digits' classes
    model = build(USER)
    assert model.channel_spec() is spec and model.classifier.out_features == 10
    assert cfg["models"]["mine"]["plans"]["half"] == {"rates": "[0.5]*2"}


def test_a_traced_model_file_saves_and_loads_in_a_fresh_process(tmp_path):
    cfglib.validate(config())
    model = prune_(build(USER), {"features.0": torch.arange(5), "features.4": torch.tensor([1, 7, 30])})
    save_pruned(tmp_path / "m.pt", model, USER, 10)
    loaded = load_pruned(tmp_path / "m.pt")
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded.eval()(x), model.eval()(x))
    assert count(loaded, USER)["macs"] == 16 * 16 * 5 * 27 + 8 * 8 * 3 * 5 * 9 + 3 * 16 * 10
    # a process that never saw the config learns the input side from the file
    result = subprocess.run([sys.executable, "-m", "fmprune.cli", "count", "--model-file", str(tmp_path / "m.pt")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["input_size"] == 16


def test_a_checkpoint_of_a_traced_model_is_imported_hash_checked(tmp_path):
    torch.manual_seed(3)
    trained = build(USER, num_classes=10)
    torch.save(trained.state_dict(), tmp_path / "mine.pth")
    cfg = cfglib.validate(config(checkpoint={"path": str(tmp_path / "mine.pth"),
                                             "sha256": sha256_file(tmp_path / "mine.pth")}))
    pipeline.baseline(cfg, "mine", tmp_path / "baseline.pt", tmp_path / "work")
    loaded = load_pruned(tmp_path / "baseline.pt")
    assert torch.equal(loaded.features[0].weight, trained.features[0].weight)
    assert loaded.meta["input_size"] == 16 and loaded.meta["source"]["sha256"] == sha256_file(tmp_path / "mine.pth")


@pytest.mark.parametrize("change, message", [
    ({"arch": "torchvision/mobilenet_v9"},
     "models.mine.arch: torchvision/mobilenet_v9: torchvision has no classification builder 'mobilenet_v9'"),
    ({"arch": "nowhere/net.py:make"}, "models.mine.arch: model file "),
    ({"arch": f"{USER_FILE}:nosuch"}, f"models.mine.arch: {USER_FILE}:nosuch: {USER_FILE} has no factory 'nosuch'"),
    ({"arch": "fmprune_no_such_package.nets:make"},
     "models.mine.arch: cannot import model module 'fmprune_no_such_package.nets': ModuleNotFoundError"),
    ({"arch": "resnet99"}, "models.mine.arch: unknown architecture 'resnet99'; known: resnet20"),
    ({"arch": f"{USER_FILE}:make_untraceable"}, "torch.fx cannot trace the forward pass: "),
    ({"arch": f"{USER_FILE}:make_shuffled"},
     "has no prunable channel group: unsupported Tensor.view in the model's forward: reshapes channels into another axis"),
    ({"input_size": 32}, "models.mine.arch: " + USER + ": the forward pass fails on a 2×3×32×32 input: "),
    ({"arch": "resnet20", "input_size": 32}, "models.mine.input_size: resnet20 is declared by hand"),
    ({"plans": {"half": {"rates": "[0.5]*3"}}},
     f"models.mine.plans.half.rates: rate list has 3 entries; {USER} expects 2 entries: features.0, features.4"),
    ({"plans": {"half": {"rates": "[0.5]"}}}, "models.mine.plans.half.rates: rate list has 1 entries; "),
])
def test_a_traced_architecture_that_cannot_work_is_one_config_error(change, message):
    with pytest.raises(cfglib.ConfigError) as err:
        cfglib.validate(config(**change))
    text = str(err.value)
    assert "\n" not in text and message in text, text


def test_one_traced_architecture_is_used_one_way_per_config():
    cfg = config()
    cfg["datasets"]["big"] = {"kind": "digits", "resolution": 32}
    cfg["models"]["other"] = dict(cfg["models"]["mine"], dataset="big")
    with pytest.raises(cfglib.ConfigError, match="models.other: .* is also used with 10 classes at input side 16, "
                                                 "here 10 at 32"):
        cfglib.validate(cfg)
