"""Measure the pruned model (and the dense one) and return plain data.

Latency (warm-up, interleaved rounds, raw samples kept, medians and per-round ratios with
confidence intervals), MACs and parameters from the one counter (analyzer/model/macs.py),
per-module time from forward hooks (one pass per model, on the real input and on a tiny
one), bytes moved and arithmetic intensity, NVML counters during the timed loop on a GPU,
a calibration of the device for the roofline — and what makes any of it untrustworthy:
a time budget spent before the estimates settled, an oversubscribed machine, per-layer
times that do not add up to the end-to-end latency. Those are `flags`; the rules in
`diagnose.py` do not draw conclusions from flagged measurements.

Threads. On CPU the profile runs torch with one intra-op thread unless told otherwise
(`ProfileOptions.threads`). Measured on a shared 2-core machine: with torch's default two
threads, a second process wanting the cores made OpenMP spin-waits cost 8.5× the CPU of a
single-thread run, latencies rose several-fold and the dense/pruned ratio swung from run
to run; with one thread, timed by the thread's own CPU time, the ratio under two competing
busy loops stayed within a few percent of the quiet machine's. One thread also isolates
what pruning changes: arithmetic and per-op cost, not how well small kernels parallelise.
The thread count is stated in the report.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..model.inputs import ExampleInput, example_from
from ..model.macs import MacCount, count_macs
from ..model.threads import torch_threads
from .calibrate import calibrate
from .estimate import median_estimate
from .flops import flop_stats
from .layer_times import Clock, CudaClock, LayerTimes, time_layers, wall_clock
from .machine import MachineLoad, load_average, observe_load
from .nvml import NvmlSampler, start_sampler
from .result import (
    LATENCY,
    LAYERS,
    Environment,
    Flag,
    LatencyStats,
    LayerCheck,
    LayerProfile,
    MachineBalance,
    NvmlSummary,
    ProfileResult,
)
from .timing import CudaTimer, MeasureOptions, ThreadTimeTimer, Timer, WallTimer, measure

__all__ = ["ProfileOptions", "profile_models"]

_PARAMETRIC = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class ProfileOptions:
    #: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    batches: tuple[int, ...] = (1,)
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    #: The per-layer profile runs each model for about this long (real and tiny input alternating)...
    layer_profile_s: float = 0.3
    #: ...and never fewer passes than this (its medians and intervals need them), nor more than max.
    min_layer_iterations: int = 9
    max_layer_iterations: int = 60
    cudnn_benchmark: bool = True
    #: torch intra-op threads while profiling on CPU; None: one (see the module docstring).
    #: On CUDA the current count is kept.
    threads: int | None = None
    #: The machine's GEMM peak and copy bandwidth for the roofline, when known (a vendor's
    #: figures, or a previous run's); None: a short calibration measures them.
    balance: MachineBalance | None = None


def profile_models(
    pruned: nn.Module,
    dense: nn.Module | None,
    example: ExampleInput | torch.Tensor,
    options: ProfileOptions = ProfileOptions(),
    pruned_layers: set[str] | None = None,
    timer: Timer | None = None,
    nvml: Any = None,
    load: Callable[[], float | None] = load_average,
) -> ProfileResult:
    """Measure `pruned` (and `dense`, interleaved) on inputs shaped like `example`.

    pruned_layers: names of the layers the pruning touched (None: unknown). The models are
    only read (on CPU they are timed where they are; on a GPU, copies are). timer, nvml and
    load replace the clock, the NVML library and the load-average source (tests).
    """
    example = example_from(example)
    device, notes = _device(options.device)
    threads = options.threads or (1 if device.type == "cpu" else torch.get_num_threads())
    with torch_threads(threads), _on(pruned, device) as pruned_model, _on(dense, device) as dense_model:
        models = {"pruned": pruned_model} | ({"dense": dense_model} if dense_model is not None else {})
        return _profile(models, example, options, device, threads, notes, pruned_layers, timer, nvml, load)


def _profile(
    models: dict[str, nn.Module],
    example: ExampleInput,
    options: ProfileOptions,
    device: torch.device,
    threads: int,
    notes: list[str],
    pruned_layers: set[str] | None,
    timer: Timer | None,
    nvml: Any,
    load: Callable[[], float | None],
) -> ProfileResult:
    cuda = device.type == "cuda"
    timer = timer or (CudaTimer(device) if cuda else ThreadTimeTimer() if threads == 1 else WallTimer())
    clock: Clock = CudaClock(device) if cuda else wall_clock()  # one thread: time_layers keeps unpreempted passes
    sampler = start_sampler(device.index or 0, nvml) if cuda else "NVML not sampled: profiling on CPU"
    with _cudnn_benchmark(options.cudnn_benchmark and cuda), torch.inference_mode():
        balance = options.balance or calibrate(device, timer)
        first = _batch(example, options.batches[0], device)
        macs = {label: count_macs(model, first) for label, model in models.items()}
        load_before = load()
        cpu_start, wall_start = _cpu_time(threads), time.perf_counter()
        latency, nvml_summary = _latency(models, example, options, device, timer, sampler)
        cpu_s = None if cuda else _cpu_time(threads) - cpu_start
        machine = observe_load(threads, cpu_s, time.perf_counter() - wall_start, load_before, load)
        iterations = _layer_iterations(latency, options)
        single = not cuda and threads == 1
        times = {
            label: time_layers(model, first, iterations, clock, _tiny_input(model, first), single_thread=single)
            for label, model in models.items()
        }
    layers = _layers(models["pruned"], times["pruned"], macs["pruned"], balance, pruned_layers)
    dense_layers = _layers(models["dense"], times["dense"], macs["dense"], balance, None) if "dense" in models else []
    fixed, memory = _shares(layers, times["pruned"], models["pruned"], balance)
    environment = Environment(
        device=str(device),
        device_name=_device_name(device),
        threads=threads,
        torch_version=torch.__version__,
        timer=timer.name,
        warmup_runs=max(options.measure.warmup, 1),
        cudnn_benchmark=options.cudnn_benchmark if cuda else None,
        nvml_status=sampler if isinstance(sampler, str) else _sampled_status(sampler),
        notes=notes + _machine_notes(machine, timer, threads, cuda),
        cores=machine.cores,
        load_average=machine.load,
        cpu_share=machine.cpu_share,
        oversubscribed=machine.oversubscribed,
    )
    result = ProfileResult(
        environment=environment,
        latency=latency,
        flops={label: flop_stats(label, models[label], count) for label, count in macs.items()},
        layers=layers,
        dense_layers=dense_layers,
        balance=balance,
        nvml=nvml_summary,
        fixed_layer_cost_ms=_median_fixed(layers),
        fixed_cost_share=fixed.value if fixed else None,
        fixed_cost_share_interval=[fixed.low, fixed.high] if fixed else None,
        memory_bound_share=memory.value if memory else None,
        memory_bound_share_interval=[memory.low, memory.high] if memory else None,
        unpruned_time_share=_unpruned_share(layers),
        layer_iterations=iterations,
    )
    if layers and times["pruned"].end_to_end_ms:
        # Against the forward timed between the hooked passes, not the timed loop's: the same
        # moment, so that a machine whose speed changed in between is not read as layers missing.
        result.layer_check = LayerCheck(sum(layer.time_ms for layer in layers), statistics.median(times["pruned"].end_to_end_ms))
    result.flags = _flags(result, machine, cuda)
    return result


def _device(requested: str) -> tuple[torch.device, list[str]]:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), []
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu"), [f"{requested} requested, but CUDA is not available here (no GPU or driver): profiled on CPU"]
    return device, []


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"


@contextmanager
def _on(model: nn.Module | None, device: torch.device) -> Iterator[nn.Module | None]:
    """The model in eval mode on `device`: a copy on a GPU; on CPU the model itself, its
    training flags restored after (timing only reads it)."""
    if model is None:
        yield None
        return
    if device.type != "cpu" or any(p.device != device for p in model.parameters()):
        yield copy.deepcopy(model).to(device).eval()
        return
    modes = {module: module.training for module in model.modules()}
    try:
        yield model.eval()
    finally:
        for module, training in modes.items():
            module.training = training


def _batch(example: ExampleInput, batch: int, device: torch.device) -> ExampleInput:
    return example.fresh(seed=batch, batch=batch).to(device)


def _cpu_time(threads: int) -> float:
    """CPU seconds of the thread that runs the model (one thread), or of the whole process (several)."""
    return time.thread_time() if threads == 1 else time.process_time()


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
            taken = measure(runs, timer, options.measure)
            stats.extend(
                LatencyStats(
                    label,
                    batch,
                    [s * 1000 for s in samples.per_call_s],
                    samples.calls_per_sample,
                    [s * 1000 for s in samples.wall_per_call_s],
                    taken.stopped,
                    taken.unsettled,
                )
                for label, samples in taken.samples.items()
            )

    if isinstance(sampler, NvmlSampler):
        with sampler:
            timed_loop()
        return stats, sampler.summary()
    timed_loop()
    return stats, None


def _sampled_status(sampler: NvmlSampler) -> str:
    """What the NVML sampler got: its samples, and what NVML refused (never dropped silently)."""
    status = f"NVML sampled during the timed loop ({len(sampler.samples)} samples)"
    if sampler.failed_samples or sampler.error:
        status += f"; {sampler.failed_samples} refused, first error: {sampler.error}"
    return status


def _layer_iterations(latency: list[LatencyStats], options: ProfileOptions) -> int:
    slowest = max((s.median_ms for s in latency if s.batch == latency[0].batch), default=10.0)
    wanted = int(options.layer_profile_s * 1000 / max(slowest, 1e-3))
    return max(options.min_layer_iterations, min(options.max_layer_iterations, wanted))


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
        except (RuntimeError, ValueError, AssertionError, IndexError):
            continue  # what an input too small for the architecture raises: the next size is tried
        return tiny
    return None


def _rows(times: LayerTimes, macs: MacCount) -> list[str]:
    """Names of the modules that are rows of the layer table: leaves, and modules with ops
    of their own that count (attention matmuls in a block's forward)."""
    return [name for name, t in times.layers.items() if name and (t.leaf or macs.own_by_module.get(name, 0) > 0)]


def _call_ms(timing: Any, balance: MachineBalance) -> float:
    """What calling the module costs per forward pass beyond the span its hooks saw (ms)."""
    return timing.calls * balance.module_call_s * 1000


def _weight_ms(module: nn.Module | None, balance: MachineBalance, leaf: bool) -> float:
    """Milliseconds to read a leaf layer's parameters once at the device's copy bandwidth."""
    if module is None or not leaf:
        return 0.0
    return sum(p.numel() * p.element_size() for p in module.parameters(recurse=False)) / balance.bandwidth * 1000


def _layers(
    model: nn.Module, times: LayerTimes, macs: MacCount, balance: MachineBalance, pruned_layers: set[str] | None
) -> list[LayerProfile]:
    modules = dict(model.named_modules())
    names = _rows(times, macs)
    total = sum(times.layers[name].time_ms for name in names) or 1.0
    layers = []
    for name in names:
        timing = times.layers[name]
        layer_macs = macs.own_by_module.get(name, 0)
        moved = macs.own_bytes_by_module.get(name, 0)
        intensity = 2 * layer_macs / moved if moved else 0.0
        calling = _call_ms(timing, balance)
        time_ms = timing.time_ms + calling
        tiny = timing.tiny_ms + calling if timing.tiny_ms is not None else None
        fixed = min(max(0.0, tiny - _weight_ms(modules.get(name), balance, timing.leaf)), time_ms) if tiny is not None else 0.0
        if time_ms > 0 and fixed >= 0.5 * time_ms:
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
                time_ms=time_ms,
                fixed_ms=fixed,
                share=time_ms / total,
                macs=layer_macs,
                bytes=moved,
                intensity=intensity,
                bound=bound,
                pruned=(name in pruned_layers) if pruned_layers is not None and parametric else None,
                own_ops=not timing.leaf,
            )
        )
    return layers


def _shares(layers: list[LayerProfile], times: LayerTimes, model: nn.Module, balance: MachineBalance) -> tuple[Any, Any]:
    """The fixed-cost share and the memory-bound share of the layer time, each as a median over
    the per-layer profile's iterations with its interval (None when not measurable)."""
    if not layers:
        return None, None
    modules = dict(model.named_modules())
    memory = {layer.name for layer in layers if layer.bound == "memory"}
    fixed_shares, memory_shares = [], []
    for i in range(times.iterations):
        total = fixed = in_memory = 0.0
        for layer in layers:
            timing = times.layers[layer.name]
            calling = _call_ms(timing, balance)
            t = timing.own_ms[i] + calling
            total += t
            if layer.name in memory:
                in_memory += t
            if timing.tiny_own_ms:
                tiny = timing.tiny_own_ms[i] + calling
                fixed += min(max(0.0, tiny - _weight_ms(modules.get(layer.name), balance, timing.leaf)), t)
        if total > 0:
            memory_shares.append(in_memory / total)
            if any(times.layers[layer.name].tiny_own_ms for layer in layers):
                fixed_shares.append(fixed / total)
    fixed_share = median_estimate(fixed_shares) if fixed_shares else None
    memory_share = median_estimate(memory_shares) if memory_shares else None
    return fixed_share, memory_share


def _median_fixed(layers: list[LayerProfile]) -> float | None:
    """Median fixed cost of the conv/linear layers (ms); None without a tiny input."""
    per_layer = [layer.fixed_ms for layer in layers if layer.macs > 0 and not layer.own_ops]
    if not per_layer or not any(layer.fixed_ms for layer in layers):
        return None
    return statistics.median(per_layer)


def _unpruned_share(layers: list[LayerProfile]) -> float | None:
    known = [layer for layer in layers if layer.pruned is not None]
    total = sum(layer.time_ms for layer in known)
    if not known or not total:
        return None
    return sum(layer.time_ms for layer in known if not layer.pruned) / total


def _machine_notes(machine: MachineLoad, timer: Timer, threads: int, cuda: bool) -> list[str]:
    notes = [machine.describe()]
    if not cuda:
        notes.append(
            f"{threads} intra-op thread{'s' if threads != 1 else ''} (of {machine.cores} usable cores), timed with {timer.name}"
            + (
                ": the thread's own CPU time, which on a busy machine leaves out the time other processes held the core"
                if timer.name == "thread_time"
                else ""
            )
        )
    return notes


def _flags(result: ProfileResult, machine: MachineLoad, cuda: bool) -> list[Flag]:
    flags = []
    for stats in result.latency:
        if stats.stopped != "stable":
            flags.append(
                Flag(
                    LATENCY,
                    f"{stats.label} at batch {stats.batch}: {stats.stopped} after {len(stats.samples_ms)} samples, before the "
                    f"estimates settled ({stats.unsettled}); raise MeasureOptions.max_time_s, or profile on a quieter machine",
                    stats.batch,
                )
            )
    if machine.oversubscribed and not cuda and machine.threads > 1:
        why = (
            f"{machine.describe()}; with {machine.threads} threads the wall-clock timings include OpenMP threads waiting for "
            "descheduled peers (profile with threads=1, or on a quiet machine)"
        )
        flags += [Flag(LATENCY, why), Flag(LAYERS, why)]
    check = result.layer_check
    if check is not None and check.apart:
        flags.append(
            Flag(
                LAYERS,
                f"the per-layer times add up to {check.layer_sum_ms:.3g} ms, {abs(check.ratio - 1):.0%} "
                f"{'below' if check.ratio < 1 else 'above'} the end-to-end latency of {check.end_to_end_ms:.3g} ms "
                "(more than 20% apart, both timed in the same pass): time goes outside the layers measured (ops in a "
                "forward of its own, module dispatch), so shares of the layer time do not describe the model",
            )
        )
    return flags
