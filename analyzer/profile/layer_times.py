"""Per-layer time with torch.profiler, mapped back to module names, and bytes moved.

Every leaf module runs inside a `record_function("module::<name>")` range opened and
closed by forward hooks, so the profiler's per-range totals are per-module times. The
same hooks record the bytes each layer reads and writes (weights + activations in and
out), which with its MACs gives its arithmetic intensity.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile, record_function

from ..model.inputs import ExampleInput

__all__ = ["LayerTiming", "time_layers", "leaf_modules"]

_PREFIX = "module::"


@dataclass
class LayerTiming:
    name: str
    type: str
    #: Milliseconds per forward pass.
    time_ms: float = 0.0
    #: Bytes read and written per forward pass: parameters, inputs, outputs.
    bytes: int = 0
    calls: int = 0


@dataclass
class _Recorder:
    names: dict[nn.Module, str]
    open_ranges: list[Any] = field(default_factory=list)
    bytes: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    counting: bool = True


def leaf_modules(model: nn.Module) -> dict[nn.Module, str]:
    return {module: name for name, module in model.named_modules() if name and not any(True for _ in module.children())}


#: Per-layer times are the minimum over this many profiled chunks: an interrupted chunk
#: (another process took the core) only ever makes a layer look slower.
CHUNKS = 3


def time_layers(model: nn.Module, example: ExampleInput, iterations: int = 5) -> dict[str, LayerTiming]:
    """Per-leaf-module time (ms per forward) and bytes moved, on `example`."""
    recorder = _Recorder(leaf_modules(model))
    per_chunk = max(1, iterations // CHUNKS)
    timings = {name: LayerTiming(name, type(module).__name__, time_ms=float("inf")) for module, name in recorder.names.items()}
    with _ranges(recorder), torch.inference_mode():
        example.call(model)  # warm-up, and the byte counts
        recorder.counting = False
        for _ in range(CHUNKS):
            for name, ms in _profiled_chunk(model, example, per_chunk).items():
                if name in timings:
                    timings[name].time_ms = min(timings[name].time_ms, ms)
    for name, timing in timings.items():
        timing.bytes = recorder.bytes.get(name, 0)
        timing.calls = recorder.calls.get(name, 0)
        if timing.time_ms == float("inf"):
            timing.time_ms = 0.0
    return {name: t for name, t in timings.items() if t.calls}


def _profiled_chunk(model: nn.Module, example: ExampleInput, iterations: int) -> dict[str, float]:
    """Milliseconds per forward of each module range, over `iterations` profiled passes."""
    cuda = example.tensors[0].is_cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with _native_stderr_silenced(), profile(activities=activities) as prof:
        for _ in range(iterations):
            example.call(model)
        if cuda:
            torch.cuda.synchronize()
    times = {}
    for event in prof.key_averages():
        if event.key.startswith(_PREFIX):
            device_us = getattr(event, "device_time_total", 0.0) if cuda else 0.0
            times[event.key[len(_PREFIX):]] = (device_us or event.cpu_time_total) / 1000.0 / iterations
    return times


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Kineto logs every profiler start and stop to file descriptor 2; keep the report's stderr clean."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextmanager
def _ranges(recorder: _Recorder) -> Iterator[None]:
    handles = []

    def before(module: nn.Module, args: Any) -> None:
        name = recorder.names[module]
        span = record_function(_PREFIX + name)
        span.__enter__()
        recorder.open_ranges.append(span)

    def after(module: nn.Module, args: Any, output: Any) -> None:
        recorder.open_ranges.pop().__exit__(None, None, None)
        if recorder.counting:
            name = recorder.names[module]
            params = sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
            recorder.bytes[name] = recorder.bytes.get(name, 0) + params + _tensor_bytes(args) + _tensor_bytes(output)
            recorder.calls[name] = recorder.calls.get(name, 0) + 1

    for module in recorder.names:
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    return 0
