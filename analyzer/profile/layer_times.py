"""Per-module time from forward hooks, one profiling pass per model, and bytes moved.

Every module gets a pre- and a post-forward hook that read a clock: the calling thread's
CPU time for single-threaded CPU runs (robust to other processes taking the core), the
wall clock for multi-threaded ones, CUDA events on a GPU. A module's *inclusive* time is
the span between its hooks; its *own* time is that less its children's spans (the adds,
matmuls and attention that a module computes in its own `forward`). The pass alternates
the real input with a tiny one (same model, almost no arithmetic: what is left is each
layer's fixed per-op cost), for a number of iterations, and keeps every iteration's value,
so that the profile can take medians and confidence intervals over iterations; each
iteration also times the forward pass without hooks, which the layer times must add up
to. The cost of reading the clock itself is measured and taken off each span.

torch.profiler is not used: its per-op bookkeeping costs more than the small layers it
would measure (a 60-layer net at 8×8 read 1.75× its real latency), and what is needed is
per module, which hooks give directly. (Bytes moved come from the MAC counter, op by op.)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..model.inputs import ExampleInput

__all__ = ["LayerTiming", "LayerTimes", "time_layers", "leaf_modules", "Clock", "thread_clock", "wall_clock", "CudaClock"]


class Clock:
    """Stamps taken in hooks, turned into seconds once the iteration is over."""

    name = "clock"

    def stamp(self) -> Any:
        raise NotImplementedError

    def seconds(self, start: Any, end: Any) -> float:
        raise NotImplementedError

    def settle(self) -> None:
        """Called after each iteration, before `seconds` (a GPU clock synchronises here)."""


class _HostClock(Clock):
    def __init__(self, name: str, read: Callable[[], float]) -> None:
        self.name = name
        self.stamp = read  # type: ignore[method-assign]

    def seconds(self, start: float, end: float) -> float:
        return end - start


def thread_clock() -> Clock:
    return _HostClock("thread_time", time.thread_time)


def wall_clock() -> Clock:
    return _HostClock("perf_counter", time.perf_counter)


class CudaClock(Clock):
    name = "cuda-events"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def stamp(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000.0

    def settle(self) -> None:
        torch.cuda.synchronize(self.device)


@dataclass
class LayerTiming:
    name: str
    type: str
    #: Whether the module has no children (its own time is all its time).
    leaf: bool
    #: Calls per forward pass on the real input.
    calls: int = 0
    #: Milliseconds per forward pass, one value per iteration: inclusive, and its own ops only.
    inclusive_ms: list[float] = field(default_factory=list)
    own_ms: list[float] = field(default_factory=list)
    #: The same on the tiny input (empty when there is none).
    tiny_own_ms: list[float] = field(default_factory=list)

    @property
    def time_ms(self) -> float:
        return statistics.median(self.own_ms) if self.own_ms else 0.0

    @property
    def tiny_ms(self) -> float | None:
        return statistics.median(self.tiny_own_ms) if self.tiny_own_ms else None


@dataclass
class LayerTimes:
    layers: dict[str, LayerTiming]
    iterations: int
    clock: str
    #: The root module's inclusive time per iteration (the whole forward, as the hooks saw it).
    total_ms: list[float] = field(default_factory=list)
    #: What one clock read costs inside a span, subtracted from every span (ms).
    clock_overhead_ms: float = 0.0
    #: The model's forward without hooks, per iteration, taken between the hooked passes (ms).
    end_to_end_ms: list[float] = field(default_factory=list)
    #: Iterations run to collect `iterations` of each kind (more when passes were preempted).
    attempts: int = 0


def leaf_modules(model: nn.Module) -> dict[nn.Module, str]:
    return {module: name for name, module in model.named_modules() if name and not any(True for _ in module.children())}


#: A pass counts as unpreempted when the thread held its core this share of its wall time.
_UNPREEMPTED = 0.95


def time_layers(
    model: nn.Module,
    example: ExampleInput,
    iterations: int,
    clock: Clock,
    tiny: ExampleInput | None = None,
    single_thread: bool = False,
) -> LayerTimes:
    """Per-module times on `example` (and on `tiny`) over `iterations` passes, in one session.

    Each iteration runs the hooked model on `example`, then on `tiny`, then the model without
    hooks on `example` — the end-to-end time the per-layer times are checked against, taken
    at the same moment, so that a machine that slows down between two measurements cannot
    pass for layers that do not add up.

    single_thread: the model runs on this thread alone (CPU, one intra-op thread). Spans are
    then read from the wall clock — a thread-CPU clock costs a system call per read, more
    under contention, and a model with many small layers reads it twice per layer — and
    each pass is also timed on the thread's CPU clock: only passes that held the core
    throughout are kept. When too few do (long passes on a busy machine), the session is
    redone on the thread-CPU clock."""
    if not single_thread:
        return _session(model, example, iterations, clock, tiny, None)
    timed = _session(model, example, iterations, wall_clock(), tiny, time.thread_time)
    return timed if timed is not None else _session(model, example, iterations, thread_clock(), tiny, None)  # type: ignore[return-value]


def _session(
    model: nn.Module,
    example: ExampleInput,
    iterations: int,
    clock: Clock,
    tiny: ExampleInput | None,
    cpu: Callable[[], float] | None,
) -> LayerTimes | None:
    """One hooked session; None when `cpu` is given and fewer than `iterations` passes of each
    kind ran unpreempted within a few times that many attempts."""
    names = {module: name for name, module in model.named_modules()}
    timings = {
        name: LayerTiming(name, type(module).__name__, leaf=not any(True for _ in module.children()))
        for module, name in names.items()
    }
    recorder = _Recorder(names, clock)
    overhead = _clock_overhead(clock)
    total: list[float] = []
    unhooked: list[float] = []
    tiny_runs = 0
    attempts = 0
    with torch.inference_mode():
        with recorder.hooks():
            example.call(model)  # warm-up, and which modules run how often
            recorder.counting = False
            if tiny is not None:
                tiny.call(model)
        while len(total) < iterations or len(unhooked) < iterations or (tiny is not None and tiny_runs < iterations):
            attempts += 1
            if attempts > 4 * iterations + 8:
                return None
            with recorder.hooks():
                for target, on_tiny in ((example, False), (tiny, True)):
                    if target is None or (on_tiny and tiny_runs >= iterations) or (not on_tiny and len(total) >= iterations):
                        continue
                    recorder.spans.clear()
                    if not _unpreempted(lambda: target.call(model), clock, cpu):  # noqa: B023 - called at once
                        continue
                    own, inclusive = recorder.resolve(overhead)
                    for name, timing in timings.items():
                        if on_tiny:
                            timing.tiny_own_ms.append(own.get(name, 0.0) * 1000)
                        else:
                            timing.own_ms.append(own.get(name, 0.0) * 1000)
                            timing.inclusive_ms.append(inclusive.get(name, 0.0) * 1000)
                    if on_tiny:
                        tiny_runs += 1
                    else:
                        total.append(inclusive.get("", 0.0) * 1000)
            if len(unhooked) < iterations:
                spans: list[float] = []

                def forward() -> None:
                    start = clock.stamp()
                    example.call(model)
                    end = clock.stamp()
                    clock.settle()
                    spans.append(max(0.0, clock.seconds(start, end) - overhead) * 1000)

                if _unpreempted(forward, clock, cpu):
                    unhooked.append(spans[0])
    for name, timing in timings.items():
        timing.calls = recorder.calls.get(name, 0)
    ran = {name: t for name, t in timings.items() if t.calls}
    label = f"{clock.name}, unpreempted passes" if cpu is not None else clock.name
    return LayerTimes(ran, iterations, label, total, overhead * 1000, unhooked, attempts)


def _unpreempted(run: Callable[[], None], clock: Clock, cpu: Callable[[], float] | None) -> bool:
    """Run once; whether the thread held its core throughout (always True without a CPU clock)."""
    if cpu is None:
        run()
        clock.settle()
        return True
    cpu_start, wall_start = cpu(), time.perf_counter()
    run()
    wall = time.perf_counter() - wall_start
    return wall <= 0 or (cpu() - cpu_start) >= _UNPREEMPTED * wall


def _clock_overhead(clock: Clock, reads: int = 200) -> float:
    """Seconds a span between two back-to-back clock reads shows (the median): the clock's own cost inside a span."""
    if isinstance(clock, CudaClock):
        return 0.0  # events are timestamps on the GPU's timeline: no host cost inside the span
    spans = []
    for _ in range(reads):
        start = clock.stamp()
        spans.append(clock.seconds(start, clock.stamp()))
    return statistics.median(spans)


@dataclass
class _Span:
    name: str
    parent: int
    start: Any
    end: Any = None


class _Recorder:
    def __init__(self, names: dict[nn.Module, str], clock: Clock) -> None:
        self.names = names
        self.clock = clock
        self.spans: list[_Span] = []
        self.open: list[int] = []
        self.calls: dict[str, int] = {}
        self.counting = True

    def before(self, module: nn.Module, args: Any) -> None:
        parent = self.open[-1] if self.open else -1
        self.open.append(len(self.spans))
        self.spans.append(_Span(self.names[module], parent, None))
        self.spans[-1].start = self.clock.stamp()  # last: the bookkeeping above is not the module's time

    def after(self, module: nn.Module, args: Any, output: Any) -> None:
        end = self.clock.stamp()  # first, for the same reason
        if not self.open:
            return
        span = self.spans[self.open.pop()]
        span.end = end
        if self.counting:
            self.calls[span.name] = self.calls.get(span.name, 0) + 1

    def resolve(self, overhead: float) -> tuple[dict[str, float], dict[str, float]]:
        """Own and inclusive seconds per module name over the spans of one forward pass."""
        inclusive_by_span = [max(0.0, self.clock.seconds(s.start, s.end) - overhead) if s.end is not None else 0.0 for s in self.spans]
        children = [0.0] * len(self.spans)
        for index, span in enumerate(self.spans):
            if span.parent >= 0:
                children[span.parent] += inclusive_by_span[index]
        own: dict[str, float] = {}
        inclusive: dict[str, float] = {}
        for index, span in enumerate(self.spans):
            own[span.name] = own.get(span.name, 0.0) + max(0.0, inclusive_by_span[index] - children[index])
            inclusive[span.name] = inclusive.get(span.name, 0.0) + inclusive_by_span[index]
        return own, inclusive

    @contextmanager
    def hooks(self) -> Iterator[None]:
        handles = []
        for module in self.names:
            handles.append(module.register_forward_pre_hook(self.before))
            handles.append(module.register_forward_hook(self.after, always_call=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

