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

from ..model.inputs import ExampleInput, example_from
from .calibrate import calibrate
from .flops import count_flops
from .layer_times import time_layers
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
    #: Per-layer profiling runs the model for about this long (3 to 60 passes: torch.profiler's
    #: bookkeeping grows with every op recorded).
    layer_profile_s: float = 0.3
    cudnn_benchmark: bool = True


def profile_models(
    pruned: nn.Module,
    dense: nn.Module | None,
    example: ExampleInput | torch.Tensor,
    options: ProfileOptions = ProfileOptions(),
    pruned_layers: set[str] | None = None,
    timer: Timer | None = None,
    nvml: Any = None,
) -> ProfileResult:
    """Measure `pruned` (and `dense`, interleaved) on inputs shaped like `example`.

    pruned_layers: names of the layers the pruning touched (None: unknown). The models
    are copied to the device; the originals stay where they are.
    """
    example = example_from(example)
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
        warmup_runs=max(options.measure.warmup, 1),
        cudnn_benchmark=options.cudnn_benchmark if device.type == "cuda" else None,
        nvml_status=sampler if isinstance(sampler, str) else "NVML sampled during the timed loop",
        notes=notes,
    )
    with _cudnn_benchmark(options.cudnn_benchmark and device.type == "cuda"), torch.inference_mode():
        balance = calibrate(device, timer)
        first = _batch(example, options.batches[0], device)
        flops = {label: count_flops(label, model, first) for label, model in models.items()}
        latency, nvml_summary = _latency(models, example, options, device, timer, sampler)
        iterations = _layer_iterations(latency, options)
        floors = _floor_times(models["pruned"], first, balance, iterations)
        layers = _layers(models["pruned"], first, flops["pruned"], balance, iterations, pruned_layers, floors)
        dense_layers = []
        if dense is not None:
            dense_floors = _floor_times(models["dense"], first, balance, iterations)
            dense_layers = _layers(models["dense"], first, flops["dense"], balance, iterations, None, dense_floors)
    fixed_ms, fixed_share = _fixed_cost(layers, floors)
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


def _batch(example: ExampleInput, batch: int, device: torch.device) -> ExampleInput:
    return example.fresh(seed=batch, batch=batch).to(device)


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
    example: ExampleInput,
    options: ProfileOptions,
    device: torch.device,
    timer: Timer,
    sampler: NvmlSampler | str,
) -> tuple[list[LatencyStats], NvmlSummary | None]:
    stats: list[LatencyStats] = []

    def timed_loop() -> None:
        for batch in options.batches:
            x = _batch(example, batch, device)
            runs = {label: (lambda m=model: x.call(m)) for label, model in models.items()}
            samples = measure_interleaved(runs, timer, options.measure)
            stats.extend(
                LatencyStats(label, batch, [s * 1000 for s in taken.per_call_s], taken.calls_per_sample)
                for label, taken in samples.items()
            )

    if isinstance(sampler, NvmlSampler):
        with sampler:
            timed_loop()
        return stats, sampler.summary()
    timed_loop()
    return stats, None


def _layer_iterations(latency: list[LatencyStats], options: ProfileOptions) -> int:
    slowest = max((s.median_ms for s in latency if s.batch == latency[0].batch), default=10.0)
    return int(min(60, max(3, options.layer_profile_s * 1000 / max(slowest, 1e-3))))


def _floor_times(model: nn.Module, example: ExampleInput, balance: MachineBalance, iterations: int) -> dict[str, float]:
    """Each layer's fixed cost (ms): its time on the smallest spatial input the model accepts,
    where arithmetic is nearly nil, less the time to read its weights once."""
    tiny = _tiny_input(model, example)
    if tiny is None:
        return {}
    timings = time_layers(model, tiny, iterations)
    modules = dict(model.named_modules())
    floors = {}
    for name, timing in timings.items():
        module = modules[name]
        weight_ms = sum(p.numel() * p.element_size() for p in module.parameters(recurse=False)) / balance.bandwidth * 1000
        floors[name] = max(0.0, timing.time_ms - weight_ms)
    return floors


def _tiny_input(model: nn.Module, example: ExampleInput) -> ExampleInput | None:
    """The example shrunk spatially as far as the model still runs (None: nothing to shrink)."""
    single = example.single
    if single is None or single.dim() < 3 or not single.is_floating_point():
        return None
    size = single.shape[-1]
    for candidate in sorted({max(1, size // d) for d in (32, 16, 8, 4, 2)}):
        if candidate >= size:
            break
        shape = (*single.shape[:-2], candidate, candidate) if single.dim() == 4 else (*single.shape[:-1], candidate)
        tiny = example_from(torch.randn(shape, device=single.device, dtype=single.dtype))
        try:
            tiny.call(model)
        except Exception:  # too small for this architecture: try the next size
            continue
        return tiny
    return None


def _layers(
    model: nn.Module,
    example: ExampleInput,
    flops: FlopStats,
    balance: MachineBalance,
    iterations: int,
    pruned_layers: set[str] | None,
    floors: dict[str, float],
) -> list[LayerProfile]:
    timings = time_layers(model, example, iterations)
    modules = dict(model.named_modules())
    total = sum(t.time_ms for t in timings.values()) or 1.0
    layers = []
    for name, timing in timings.items():
        macs = flops.macs_by_layer.get(name, 0)
        intensity = 2 * macs / timing.bytes if timing.bytes else 0.0
        fixed = min(floors.get(name, 0.0), timing.time_ms)
        if timing.time_ms > 0 and fixed >= 0.5 * timing.time_ms:
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
                fixed_ms=fixed,
                share=timing.time_ms / total,
                macs=macs,
                bytes=timing.bytes,
                intensity=intensity,
                bound=bound,
                pruned=(name in pruned_layers) if pruned_layers is not None and parametric else None,
            )
        )
    return layers


def _fixed_cost(layers: list[LayerProfile], floors: dict[str, float]) -> tuple[float | None, float | None]:
    """Median fixed cost per conv/linear layer (ms), and the share of all layer time that is fixed."""
    if not floors:
        return None, None
    total = sum(layer.time_ms for layer in layers)
    fixed = sum(layer.fixed_ms for layer in layers)
    per_layer = [layer.fixed_ms for layer in layers if layer.macs > 0]
    return (statistics.median(per_layer) if per_layer else None), (fixed / total if total else None)


def _unpruned_share(layers: list[LayerProfile]) -> float | None:
    known = [layer for layer in layers if layer.pruned is not None]
    total = sum(layer.time_ms for layer in known)
    if not known or not total:
        return None
    return sum(layer.time_ms for layer in known if not layer.pruned) / total
