"""Timing forward passes: warm-up, interleaved rounds, until the medians are stable.

A `Timer` times one call, synchronising as the device needs; the default ones use
`time.perf_counter` (CPU) and CUDA events around `torch.cuda.synchronize` (GPU). Tests
swap in a timer with a seeded fake clock. Models are measured interleaved, round by
round and in alternating order, so a slow-down of the machine hits both alike and
their ratio survives it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

__all__ = ["Timer", "CpuTimer", "CudaTimer", "MeasureOptions", "Samples", "measure_interleaved"]


class Timer(Protocol):
    name: str

    def time(self, fn: Callable[[], Any]) -> float:
        """Seconds one call of `fn` takes, device work included."""
        ...


class CpuTimer:
    name = "perf_counter"

    def time(self, fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


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
    min_samples: int = 10
    max_samples: int = 300
    #: Measure at least min_time_s per model (in all, all models together), at most max_time_s in all.
    min_time_s: float = 0.5
    max_time_s: float = 20.0
    #: Stop when the median moved less than this (relative) over the last `window` rounds.
    stable_within: float = 0.02
    window: int = 5


@dataclass
class Samples:
    """Seconds per call, one value per timed block, and how many calls each block ran."""

    per_call_s: list[float]
    calls_per_sample: int


def measure_interleaved(
    runs: dict[str, Callable[[], Any]], timer: Timer, options: MeasureOptions = MeasureOptions()
) -> dict[str, Samples]:
    """Seconds per call of each run, measured block by block, round by round, in alternating order."""
    labels = list(runs)
    warm: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(max(options.warmup, 1)):
        for label in labels:
            warm[label].append(timer.time(runs[label]))
    blocks = {label: _block(runs[label], max(1, round(options.block_s / max(min(warm[label]), 1e-9)))) for label in labels}
    samples = {label: Samples([], blocks[label][1]) for label in labels}
    spent = 0.0
    round_index = 0
    while True:
        order = labels if round_index % 2 == 0 else labels[::-1]
        for label in order:
            fn, calls = blocks[label]
            elapsed = timer.time(fn)
            samples[label].per_call_s.append(elapsed / calls)
            spent += elapsed
        round_index += 1
        if _done({label: s.per_call_s for label, s in samples.items()}, spent, options):
            return samples


def _block(fn: Callable[[], Any], calls: int) -> tuple[Callable[[], Any], int]:
    if calls == 1:
        return fn, 1

    def block() -> None:
        for _ in range(calls):
            fn()

    return block, calls


def _done(samples: dict[str, list[float]], spent: float, options: MeasureOptions) -> bool:
    """Enough samples, enough time, and every median stable — or a limit reached."""
    counts = [len(s) for s in samples.values()]
    if min(counts) >= options.max_samples or spent >= options.max_time_s:
        return True
    if min(counts) < max(options.min_samples, options.window + 1):
        return False
    if spent < options.min_time_s * len(samples):
        return False
    return all(_stable(s, options) for s in samples.values())


def _stable(samples: list[float], options: MeasureOptions) -> bool:
    now = statistics.median(samples)
    before = statistics.median(samples[: -options.window])
    return abs(now - before) <= options.stable_within * now
