"""Export of a pruned model: TorchScript and ONNX equal the PyTorch model; runtimes are timed."""
import json

import numpy as np
import pytest
import torch

from fmprune import export as exportlib
from fmprune.cli import main
from fmprune.models import build
from fmprune.plan import kept_from_scores, uniform_rates
from fmprune.surgery import prune_, save_pruned
from fmprune.tables import summary


@pytest.fixture(scope="module")
def pruned():
    """ResNet-20 with 40 % of every group's channels removed (random scores, seeded weights)."""
    torch.manual_seed(0)
    net = build("resnet20")
    spec = net.channel_spec()
    rng = np.random.default_rng(0)
    scores = {g: rng.random(spec.groups[g].channels) for g in spec.prunable_groups()}
    kept = kept_from_scores(spec, scores, uniform_rates(spec, 0.4))
    return prune_(net, {g: torch.tensor(k) for g, k in kept.items()}).eval()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_and_onnx_equal_the_pruned_model(pruned, tmp_path):
    import onnxruntime

    report = exportlib.export(pruned, 32, tmp_path)
    assert max(report["max_abs_diff"].values()) <= exportlib.ATOL + 1e-3
    x = torch.randn(3, 3, 32, 32)  # another batch size than the export's: the batch axis is dynamic
    with torch.inference_mode():
        expected = pruned(x)
        scripted = torch.jit.load(report["torchscript"])(x)
    session = onnxruntime.InferenceSession(report["onnx"], providers=["CPUExecutionProvider"])
    from_onnx = session.run(None, {"image": x.numpy()})[0]
    assert torch.allclose(scripted, expected, atol=1e-4, rtol=1e-4)
    assert np.allclose(from_onnx, expected.numpy(), atol=1e-4, rtol=1e-4)


def test_runtimes_are_timed_and_a_failing_runtime_is_reported(pruned, monkeypatch):
    def no_compiler(model):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", no_compiler)
    speeds = exportlib.runtime_speeds(pruned, 32, exportlib.RUNTIMES, threads=1, batch=4, repeats=2, warmup=1)
    assert speeds["compile"] == {"error": "RuntimeError: no C++ compiler"}
    for runtime in ("eager", "channels_last", "torchscript", "onnxruntime"):
        figures = speeds[runtime]
        assert figures["latency_ms_b1"] > 0 and figures["throughput_ips"] > 0 and figures["threads"] == 1
        assert figures["throughput_batch"] == 4 and figures["device"] == "cpu"
    columns = exportlib.runtime_columns({"runtimes": speeds})
    assert "throughput_ips_onnxruntime" in columns and not any(c.endswith("_compile") for c in columns)


def test_export_command_and_its_one_line_errors(pruned, tmp_path, capsys):
    model_file = tmp_path / "pruned.pt"
    save_pruned(model_file, pruned, "resnet20", 10)
    out = tmp_path / "export"
    assert main(["export", "--model-file", str(model_file), "--out-dir", str(out), "--runtimes", "eager",
                 "onnxruntime", "--repeats", "2", "--batch", "2", "--threads", "1"]) == 0
    report = json.loads((out / "export.json").read_text())
    assert set(report["runtimes"]) == {"eager", "onnxruntime"} and (out / "model.onnx").is_file()
    assert report["arch"] == "resnet20" and (out / "model.ts").is_file()
    capsys.readouterr()
    assert main(["export", "--model-file", str(model_file), "--out-dir", str(out), "--runtimes", "tensorrt"]) == 2
    assert capsys.readouterr().err == ("fmprune: error: unknown runtime 'tensorrt'; known: eager, channels_last, "
                                       "compile, torchscript, onnxruntime\n")
    assert main(["export", "--model-file", str(tmp_path / "none.pt"), "--out-dir", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_runtime_figures_reach_the_summary_table(tmp_path):
    figures = {"latency_ms_b1": 1.234, "throughput_ips": 999.0}
    acc = {"model": "m", "method": "l1", "plan": "p", "epochs": 0, "params": 1, "params_reduction_pct": 0,
           "macs": 1, "macs_reduction_pct": 0, "macs_thop": 1, "throughput_ips": 500.0,
           "runtimes": {"onnxruntime": figures, "compile": {"error": "RuntimeError: no compiler"}}}
    (tmp_path / "acc.json").write_text(json.dumps(acc))
    table = summary([tmp_path / "acc.json"], [])
    assert table.loc[0, "throughput_ips_onnxruntime"] == 999.0 and table.loc[0, "latency_ms_b1_onnxruntime"] == 1.23
    assert "throughput_ips_compile" not in table


def test_the_config_opts_in_to_runtime_figures(pruned, monkeypatch):
    from fmprune import config as cfglib
    from fmprune import pipeline

    from .test_compare_plans import compare_config

    monkeypatch.setattr(pipeline, "measure_latency", lambda net, size, device: {"throughput_ips": 1.0})
    monkeypatch.setattr(exportlib, "runtime_speeds", lambda net, size, runtimes, device: {r: {"size": size} for r in runtimes})
    assert pipeline._speed({}, pruned, 32, torch.device("cpu")) == {"throughput_ips": 1.0}  # off by default
    assert pipeline._speed({"runtimes": ["eager"]}, pruned, 32, torch.device("cpu")) == {
        "throughput_ips": 1.0, "runtimes": {"eager": {"size": 32}}}
    cfg = compare_config(targets=[0.5])
    cfg["runtimes"] = ["eager", "tensorrt"]
    with pytest.raises(cfglib.ConfigError, match=r"^config error at runtimes\.1: 'tensorrt' is not one of \["):
        cfglib.validate(cfg)


def test_fine_tuning_reuses_the_pruned_models_timings_only_on_the_same_device():
    """Fine-tuning changes weights, not widths: its timings are the prune report's when both jobs
    ran on the same device and thread count, and measured afresh otherwise."""
    import torch

    from fmprune.latency import device_name
    from fmprune.pipeline import _reused_speed

    here = device_name(torch.device("cpu"))
    report = {"top1": 50.0, "latency_ms_b1": 1.5, "latency_ms_b1_iqr": 0.1, "throughput_ips": 800.0,
              "throughput_batch": 64, "latency_device": here, "runtimes": {"eager": {"latency_ms_b1": 1.5}}}
    assert _reused_speed(report, torch.device("cpu")) == {k: v for k, v in report.items() if k != "top1"}
    assert _reused_speed({**report, "latency_device": "NVIDIA H200"}, torch.device("cpu")) is None
    assert _reused_speed({"top1": 50.0}, torch.device("cpu")) is None
