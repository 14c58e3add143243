"""Timing forward passes: warm-up, interleaved rounds, until the estimates are stable.

A `Timer` times one call, synchronising as the device needs: `ThreadTimeTimer` reads the
calling thread's CPU time (single-threaded CPU runs: time the thread was descheduled by
other processes is not counted), `WallTimer` reads `time.perf_counter` (multi-threaded CPU
runs), `CudaTimer` records CUDA events around `torch.cuda.synchronize`. Tests swap in a
timer with a seeded fake clock.

Models are measured interleaved, round by round and in alternating order (each block after
one untimed call of its model), so a change of the machine's speed hits them alike; one
round gives one sample per model, so their
ratio is estimated round by round (the median of per-round ratios, with its confidence
interval). Sampling never stops before `min_samples` per model; it stops when every
median and every ratio is stable, or when `max_samples` or the time budget is reached —
and then the measurement says so (`Measurement.stopped`), so that no diagnosis is drawn
from it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .estimate import median_estimate

__all__ = [
    "Timer",
    "WallTimer",
    "CpuTimer",
    "ThreadTimeTimer",
    "CudaTimer",
    "MeasureOptions",
    "Samples",
    "Measurement",
    "measure",
    "measure_interleaved",
    "STABLE",
    "OUT_OF_TIME",
    "OUT_OF_SAMPLES",
]

#: Why sampling stopped.
STABLE = "stable"
OUT_OF_TIME = "time budget spent"
OUT_OF_SAMPLES = "max samples reached"


class Timer(Protocol):
    name: str

    def time(self, fn: Callable[[], Any]) -> float:
        """Seconds one call of `fn` takes, device work included."""
        ...


class WallTimer:
    name = "perf_counter"

    def time(self, fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


#: The wall-clock timer under its former name.
CpuTimer = WallTimer


class ThreadTimeTimer:
    """CPU time of the calling thread: for single-threaded CPU work, the time it really ran.

    On a quiet machine it equals the wall time; on a busy one it leaves out the time other
    processes held the core, which the wall time counts and which says nothing about the model."""

    name = "thread_time"

    def time(self, fn: Callable[[], Any]) -> float:
        start = time.thread_time()
        fn()
        return time.thread_time() - start


class CudaTimer:
    name = "cuda-events"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def time(self, fn: Callable[[], Any]) -> float:
        torch.cuda.synchronize(self.device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0


@dataclass(frozen=True)
class MeasureOptions:
    warmup: int = 3
    #: Each sample times a block of calls lasting about this long and keeps the mean per call,
    #: as torch.utils.benchmark does: single sub-millisecond calls are mostly timer jitter.
    block_s: float = 0.01
    #: Never fewer samples than this per model, whatever the time budget says.
    min_samples: int = 10
    max_samples: int = 300
    #: Measure at least min_time_s per model (in all, all models together); the budget is
    #: max_time_s in all, in the timer's seconds or wall seconds, whichever is more.
    min_time_s: float = 0.5
    max_time_s: float = 20.0
    #: Stop when every median moved less than this (relative) over the last `window` rounds...
    stable_within: float = 0.02
    window: int = 5
    #: ...and the 95% interval of every ratio to the first model is within this (relative half-width).
    ratio_within: float = 0.05
    #: With several models: one untimed call before each timed block, so that a model is timed
    #: with its own weights in cache, as when it runs alone, not the other model's (a pruned
    #: ResNet-18 read 10% slower right after its dense one).
    rewarm: bool = True


@dataclass
class Samples:
    """Seconds per call, one value per timed block, and how many calls each block ran."""

    per_call_s: list[float]
    calls_per_sample: int
    #: Wall seconds per call of the same blocks, a side reading (equal to per_call_s for a
    #: wall-clock timer); not part of what makes two measurements the same.
    wall_per_call_s: list[float] = field(default_factory=list, compare=False)


@dataclass
class Measurement:
    samples: dict[str, Samples]
    rounds: int
    #: STABLE, OUT_OF_TIME or OUT_OF_SAMPLES.
    stopped: str
    #: Seconds spent in timed blocks, as the timer counts them, and as the wall clock does.
    timed_s: float
    wall_s: float
    #: When it stopped unsettled: what had not settled ("" when stable).
    unsettled: str = ""

    @property
    def settled(self) -> bool:
        return self.stopped == STABLE


def measure(
    runs: dict[str, Callable[[], Any]],
    timer: Timer,
    options: MeasureOptions = MeasureOptions(),
    wall_clock: Callable[[], float] = time.perf_counter,
) -> Measurement:
    """Seconds per call of each run, measured block by block, round by round, in alternating order."""
    labels = list(runs)
    warm: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(max(options.warmup, 1)):
        for label in labels:
            warm[label].append(timer.time(runs[label]))
    blocks = {label: _block(runs[label], max(1, round(options.block_s / max(min(warm[label]), 1e-9)))) for label in labels}
    samples = {label: Samples([], blocks[label][1]) for label in labels}
    timed = 0.0
    started = wall_clock()
    rounds = 0
    while True:
        order = labels if rounds % 2 == 0 else labels[::-1]
        for label in order:
            fn, calls = blocks[label]
            if options.rewarm and len(labels) > 1:
                timer.time(runs[label])  # untimed: back to this model's steady state
            before = wall_clock()
            elapsed = timer.time(fn)
            wall = wall_clock() - before
            samples[label].per_call_s.append(elapsed / calls)
            samples[label].wall_per_call_s.append(wall / calls)
            timed += elapsed
        rounds += 1
        series = {label: s.per_call_s for label, s in samples.items()}
        stopped = _stopped(series, max(timed, wall_clock() - started), options)
        if stopped is not None:
            unsettled = "" if stopped == STABLE else _unsettled(series, options)
            return Measurement(samples, rounds, stopped, timed, wall_clock() - started, unsettled)


def measure_interleaved(
    runs: dict[str, Callable[[], Any]], timer: Timer, options: MeasureOptions = MeasureOptions()
) -> dict[str, Samples]:
    """`measure`'s samples alone."""
    return measure(runs, timer, options).samples


def _block(fn: Callable[[], Any], calls: int) -> tuple[Callable[[], Any], int]:
    if calls == 1:
        return fn, 1

    def block() -> None:
        for _ in range(calls):
            fn()

    return block, calls


def _stopped(samples: dict[str, list[float]], spent: float, options: MeasureOptions) -> str | None:
    """Why to stop now (None: go on). Never before min_samples; then when stable, or out of budget."""
    counts = [len(s) for s in samples.values()]
    if min(counts) < max(options.min_samples, options.window + 1):
        return None
    stable = spent >= options.min_time_s * len(samples) and all(_stable(s, options) for s in samples.values()) and _ratios_stable(samples, options)
    if stable:
        return STABLE
    if min(counts) >= options.max_samples:
        return OUT_OF_SAMPLES
    if spent >= options.max_time_s:
        return OUT_OF_TIME
    return None


def _stable(samples: list[float], options: MeasureOptions) -> bool:
    now = statistics.median(samples)
    before = statistics.median(samples[: -options.window])
    return abs(now - before) <= options.stable_within * now


def _unsettled(samples: dict[str, list[float]], options: MeasureOptions) -> str:
    """What kept a measurement from settling, in words."""
    reasons = []
    for label, values in samples.items():
        now, before = statistics.median(values), statistics.median(values[: -options.window])
        if abs(now - before) > options.stable_within * now:
            reasons.append(
                f"the median of {label} still moved {abs(now - before) / now:.1%} over the last {options.window} rounds "
                f"(settled: under {options.stable_within:.0%})"
            )
    labels = list(samples)
    for other in labels[1:]:
        ratios = [a / b for a, b in zip(samples[labels[0]], samples[other]) if b > 0]
        if ratios and (width := median_estimate(ratios).relative_half_width) > options.ratio_within:
            reasons.append(f"the {labels[0]}/{other} ratio was known to ±{width:.1%} (settled: ±{options.ratio_within:.0%})")
    return "; ".join(reasons) or "too little time measured"


def _ratios_stable(samples: dict[str, list[float]], options: MeasureOptions) -> bool:
    series = list(samples.values())
    first = series[0]
    for other in series[1:]:
        ratios = [a / b for a, b in zip(first, other) if b > 0]
        if not ratios or median_estimate(ratios).relative_half_width > options.ratio_within:
            return False
    return True
