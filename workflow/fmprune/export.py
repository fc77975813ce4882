"""A pruned model for deployment: TorchScript and ONNX files, each checked against the PyTorch
model, and its speed under each runtime.

Runtimes (:data:`RUNTIMES`), all timed by :func:`fmprune.latency.time_forward` (median and
interquartile range after warm-up, threads pinned):

``eager``          the PyTorch model as it is
``channels_last``  the same with weights and input in NHWC memory layout
``compile``        ``torch.compile`` (inductor); a failure (e.g. no C++ compiler) is reported, not fatal
``torchscript``    ``torch.jit.trace`` then ``torch.jit.freeze`` (BN folded into the convolutions)
``onnxruntime``    the ONNX file on onnxruntime's CPU provider (graph optimisations on)

ONNX is written by ``torch.onnx.export(..., dynamo=False)``, the TorchScript-based exporter: it
needs no package beyond ``onnx`` (the default dynamo exporter also needs onnxscript), and our
models (convolutions, BN, residual adds, index shortcuts) are plain traceable graphs.
"""
from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from . import FmpruneError
from .io import atomic_path, atomic_write_json, describe
from .latency import pinned_threads, time_calls, time_forward

log = logging.getLogger(__name__)

RUNTIMES = ("eager", "channels_last", "compile", "torchscript", "onnxruntime")
ATOL, RTOL = 1e-4, 1e-4  # an export's outputs equal the model's within ATOL + RTOL·max|output|


# a report's runtime figures as table columns: latency_ms_b1_<runtime>, throughput_ips_<runtime>
RUNTIME_COLUMNS = [f"{key}_{runtime}" for runtime in RUNTIMES for key in ("latency_ms_b1", "throughput_ips")]


# every speed column of a report: eager PyTorch's (latency, throughput), then each runtime's
SPEED_COLUMNS = ("latency_ms_b1", "throughput_ips", *RUNTIME_COLUMNS)


def speed_figures(report: dict) -> dict[str, float]:
    """The :data:`SPEED_COLUMNS` a report (acc.json, pruned.json) has figures for."""
    speeds = {**report, **runtime_columns(report)}
    return {k: speeds[k] for k in SPEED_COLUMNS if k in speeds}


def runtime_columns(report: dict) -> dict[str, float]:
    """The :data:`RUNTIME_COLUMNS` of a report (acc.json, pruned.json) whose runtimes ran."""
    return {f"{key}_{runtime}": figures[key] for runtime, figures in report.get("runtimes", {}).items()
            if "error" not in figures for key in ("latency_ms_b1", "throughput_ips")}


def sample_input(batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def to_torchscript(model: nn.Module, size: int) -> torch.jit.ScriptModule:
    """The model traced on a sample input and frozen (weights inlined, BN folded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices
        traced = torch.jit.trace(model.eval(), sample_input(2, size), check_trace=False)
        return torch.jit.freeze(traced)


def to_onnx(model: nn.Module, size: int) -> bytes:
    """The model as an ONNX graph with a dynamic batch axis (input ``image``, output ``output``)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (sample_input(1, size),), buffer, dynamo=False, input_names=["image"],
                          output_names=["output"], dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}})
    return buffer.getvalue()


def onnx_session(onnx_model: bytes | Path, threads: int | None = None):
    """An onnxruntime CPU session with graph optimisations, on ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    source = str(onnx_model) if isinstance(onnx_model, Path) else onnx_model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def check_close(name: str, reference: torch.Tensor, other) -> float:
    """The largest absolute difference; an error when it exceeds ATOL + RTOL·max|reference|."""
    diff = float((reference - torch.as_tensor(other)).abs().max())
    allowed = ATOL + RTOL * float(reference.abs().max())
    if not diff <= allowed:
        raise FmpruneError(f"the {name} export's outputs differ from the PyTorch model's by {diff:.3g} "
                           f"(allowed {allowed:.3g})")
    return diff


def export(model: nn.Module, size: int, out_dir: Path) -> dict:
    """Write ``model.ts`` (TorchScript) and ``model.onnx`` to ``out_dir``, each checked against the
    model's outputs (also by onnxruntime); returns the files and the largest differences."""
    model = model.eval()
    x = sample_input(4, size)
    with torch.inference_mode():
        reference = model(x)
    scripted = to_torchscript(model, size)
    onnx_model = to_onnx(model, size)
    with torch.inference_mode():
        ts_diff = check_close("TorchScript", reference, scripted(x))
    ort_diff = check_close("ONNX", reference, onnx_session(onnx_model).run(None, {"image": x.numpy()})[0])
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "model.ts") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        torch.jit.save(scripted, str(tmp))
    with atomic_path(out_dir / "model.onnx") as tmp:
        tmp.write_bytes(onnx_model)
    return {"torchscript": str(out_dir / "model.ts"), "onnx": str(out_dir / "model.onnx"),
            "max_abs_diff": {"torchscript": ts_diff, "onnxruntime": ort_diff}, "atol": ATOL, "rtol": RTOL}


def _runner(runtime: str, model: nn.Module, size: int, device: torch.device, threads: int | None):
    """A callable taking an input batch, and the memory format the batch should have."""
    if runtime == "eager":
        return model, torch.contiguous_format
    if runtime == "channels_last":
        return model.to(memory_format=torch.channels_last), torch.channels_last
    if runtime == "compile":
        compiled = torch.compile(model)
        with pinned_threads(threads), torch.inference_mode():
            compiled(sample_input(1, size).to(device))  # compiles now: a failure is this runtime's error
        return compiled, torch.contiguous_format
    if runtime == "torchscript":
        return to_torchscript(model.cpu(), size).to(device), torch.contiguous_format
    raise ValueError(runtime)


def runtime_speeds(model: nn.Module, size: int, runtimes: list[str] | tuple[str, ...] = RUNTIMES,
                   device: torch.device | str = "cpu", threads: int | None = None, batch: int = 64,
                   repeats: int = 10, warmup: int = 3) -> dict[str, dict]:
    """Per runtime: batch-1 latency (ms) and throughput (images/s at ``batch``), medians with
    their interquartile ranges; or ``{"error": ...}`` for a runtime that failed (torch.compile
    without a compiler). onnxruntime runs on the CPU whatever ``device`` is."""
    import copy

    device = torch.device(device)
    threads = threads or torch.get_num_threads()
    speeds = {}
    for runtime in runtimes:
        net = copy.deepcopy(model).eval().to(device)
        try:
            if runtime == "onnxruntime":
                session = onnx_session(to_onnx(net.cpu(), size), threads)
                inputs = [{"image": sample_input(b, size).numpy()} for b in (1, batch)]
                timings = [time_calls(lambda x=x: session.run(None, x), repeats, warmup) for x in inputs]
                where = "cpu"
            else:
                run, memory_format = _runner(runtime, net, size, device, threads)
                timings = [time_forward(run, b, size, device, threads, repeats, warmup, memory_format)
                           for b in (1, batch)]
                where = device.type
        except Exception as exc:  # noqa: BLE001 - any runtime's failure is reported, never fatal
            log.warning("runtime %s failed: %s", runtime, describe(exc))
            speeds[runtime] = {"error": describe(exc)}
            continue
        one, many = timings
        speeds[runtime] = {"latency_ms_b1": one["median_ms"], "latency_ms_b1_iqr": one["iqr_ms"],
                           "throughput_ips": 1000.0 * batch / many["median_ms"],
                           "throughput_iqr_ms": many["iqr_ms"], "throughput_batch": batch,
                           "device": where, "threads": threads, "repeats": repeats}
    return speeds


def export_model(model_file: Path, out_dir: Path, runtimes: list[str], threads: int | None, batch: int,
                 repeats: int) -> dict:
    """``fmprune export``: the files of :func:`export` and the speeds of :func:`runtime_speeds`
    (on the CPU) in ``out_dir/export.json``."""
    from .models import input_size
    from .surgery import load_pruned

    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise FmpruneError(f"unknown runtime {unknown[0]!r}; known: {', '.join(RUNTIMES)}")
    for name, value in (("threads", threads), ("batch", batch), ("repeats", repeats)):
        if value is not None and value < 1:
            raise FmpruneError(f"--{name} must be a positive integer, got {value}")
    model = load_pruned(model_file)
    size = input_size(model.meta["arch"])
    report = {"model_file": str(model_file), "arch": model.meta["arch"], "input_size": size,
              **export(model, size, out_dir), "torch": torch.__version__}
    report["runtimes"] = runtime_speeds(model, size, runtimes, "cpu", threads, batch, repeats)
    atomic_write_json(Path(out_dir) / "export.json", report)
    return report
