"""profile: measure the pruned model (and the dense one) and return plain data.

Latency (warm-up, interleaved rounds, raw samples kept), FLOPs and parameters with
fvcore, per-layer time with torch.profiler, bytes moved and arithmetic intensity, NVML
counters during the timed loop on a GPU, and a calibration of the device for the
roofline. Diagnosis of what the numbers mean lives in `analyzer.diagnose`.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .calibrate import calibrate
from .flops import count_flops
from .layers import time_layers
from .nvml import NvmlSampler, start_sampler
from .result import (
    Environment,
    FlopStats,
    LatencyStats,
    LayerProfile,
    MachineBalance,
    NvmlSummary,
    ProfileResult,
)
from .timing import CpuTimer, CudaTimer, MeasureOptions, Timer, measure_interleaved

__all__ = [
    "ProfileOptions",
    "profile_models",
    "ProfileResult",
    "LatencyStats",
    "LayerProfile",
    "FlopStats",
    "MachineBalance",
    "NvmlSummary",
    "Environment",
    "MeasureOptions",
    "Timer",
]

_PARAMETRIC = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class ProfileOptions:
    #: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    batches: tuple[int, ...] = (1,)
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    layer_iterations: int = 5
    cudnn_benchmark: bool = True


def profile_models(
    pruned: nn.Module,
    dense: nn.Module | None,
    example: torch.Tensor,
    options: ProfileOptions = ProfileOptions(),
    pruned_layers: set[str] | None = None,
    timer: Timer | None = None,
    nvml: Any = None,
) -> ProfileResult:
    """Measure `pruned` (and `dense`, interleaved) on inputs shaped like `example`.

    pruned_layers: names of the layers the pruning touched (None: unknown). The models
    are copied to the device; the originals stay where they are.
    """
    device, notes = _device(options.device)
    timer = timer or (CudaTimer(device) if device.type == "cuda" else CpuTimer())
    models = {"pruned": _on(pruned, device)}
    if dense is not None:
        models["dense"] = _on(dense, device)
    sampler = start_sampler(device.index or 0, nvml) if device.type == "cuda" else "NVML not sampled: profiling on CPU"
    environment = Environment(
        device=str(device),
        device_name=_device_name(device, sampler),
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        timer=timer.name,
        warmup_runs=options.measure.warmup,
        cudnn_benchmark=options.cudnn_benchmark if device.type == "cuda" else None,
        nvml_status=sampler if isinstance(sampler, str) else "NVML sampled during the timed loop",
        notes=notes,
    )
    with _cudnn_benchmark(options.cudnn_benchmark and device.type == "cuda"), torch.inference_mode():
        balance = calibrate(device, timer)
        first = _batch(example, options.batches[0], device)
        flops = {label: count_flops(label, model, first) for label, model in models.items()}
        latency, nvml_summary = _latency(models, example, options, device, timer, sampler)
        layers = _layers(models["pruned"], first, flops["pruned"], balance, options, pruned_layers)
        dense_layers = _layers(models["dense"], first, flops["dense"], balance, options, None) if dense is not None else []
    fixed_ms, fixed_share = _fixed_cost(layers, dense_layers)
    return ProfileResult(
        environment=environment,
        latency=latency,
        flops=flops,
        layers=layers,
        dense_layers=dense_layers,
        balance=balance,
        nvml=nvml_summary,
        fixed_layer_cost_ms=fixed_ms,
        fixed_cost_share=fixed_share,
        unpruned_time_share=_unpruned_share(layers),
    )


def _device(requested: str) -> tuple[torch.device, list[str]]:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), []
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu"), [f"{requested} requested, but CUDA is not available here (no GPU or driver): profiled on CPU"]
    return device, []


def _device_name(device: torch.device, sampler: NvmlSampler | str) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"


def _on(model: nn.Module, device: torch.device) -> nn.Module:
    return copy.deepcopy(model).to(device).eval()


def _batch(example: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    return torch.randn((batch, *example.shape[1:]), generator=generator).to(device=device, dtype=example.dtype)


@contextmanager
def _cudnn_benchmark(enabled: bool) -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or before
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _latency(
    models: dict[str, nn.Module],
    example: torch.Tensor,
    options: ProfileOptions,
    device: torch.device,
    timer: Timer,
    sampler: NvmlSampler | str,
) -> tuple[list[LatencyStats], NvmlSummary | None]:
    stats: list[LatencyStats] = []

    def timed_loop() -> None:
        for batch in options.batches:
            x = _batch(example, batch, device)
            runs = {label: (lambda m=model: m(x)) for label, model in models.items()}
            samples = measure_interleaved(runs, timer, options.measure)
            stats.extend(LatencyStats(label, batch, [s * 1000 for s in values]) for label, values in samples.items())

    if isinstance(sampler, NvmlSampler):
        with sampler:
            timed_loop()
        return stats, sampler.summary()
    timed_loop()
    return stats, None


def _layers(
    model: nn.Module,
    example: torch.Tensor,
    flops: FlopStats,
    balance: MachineBalance,
    options: ProfileOptions,
    pruned_layers: set[str] | None,
) -> list[LayerProfile]:
    timings = time_layers(model, example, options.layer_iterations)
    modules = dict(model.named_modules())
    total = sum(t.time_ms for t in timings.values()) or 1.0
    floor_ms = balance.op_overhead_s * 1000
    layers = []
    for name, timing in timings.items():
        macs = flops.macs_by_layer.get(name, 0)
        intensity = 2 * macs / timing.bytes if timing.bytes else 0.0
        if timing.time_ms <= 2 * floor_ms:
            bound = "overhead"
        elif intensity < balance.balance:
            bound = "memory"
        else:
            bound = "compute"
        parametric = isinstance(modules.get(name), _PARAMETRIC)
        layers.append(
            LayerProfile(
                name=name,
                type=timing.type,
                time_ms=timing.time_ms,
                share=timing.time_ms / total,
                macs=macs,
                bytes=timing.bytes,
                intensity=intensity,
                bound=bound,
                pruned=(name in pruned_layers) if pruned_layers is not None and parametric else None,
            )
        )
    return layers


def _fixed_cost(layers: list[LayerProfile], dense_layers: list[LayerProfile]) -> tuple[float | None, float | None]:
    """Least-squares time = a + b * MACs over the conv/linear layers of both models: `a` is
    the per-layer cost that does not shrink with pruning; a * layers / time is its share of
    the pruned model's layer time. None when the MACs do not vary enough to tell."""
    points = [(layer.macs, layer.time_ms) for layer in (*layers, *dense_layers) if layer.macs > 0]
    xs = [x for x, _ in points]
    if len(points) < 3 or max(xs) < 1.5 * min(xs):
        return None, None
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(y for _, y in points)
    var_x = sum((x - mean_x) ** 2 for x in xs)
    slope = max(sum((x - mean_x) * (y - mean_y) for x, y in points) / var_x, 0.0)
    intercept = max(mean_y - slope * mean_x, 0.0)
    own = [layer.time_ms for layer in layers if layer.macs > 0]
    share = min(1.0, intercept * len(own) / sum(own)) if sum(own) else None
    return intercept, share


def _unpruned_share(layers: list[LayerProfile]) -> float | None:
    known = [layer for layer in layers if layer.pruned is not None]
    total = sum(layer.time_ms for layer in known)
    if not known or not total:
        return None
    return sum(layer.time_ms for layer in known if not layer.pruned) / total
