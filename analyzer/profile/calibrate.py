"""A short calibration of the device in use: peak GEMM FLOP/s, copy bandwidth, op overhead.

Together they place each layer on a roofline: below `peak / bandwidth` FLOPs per byte
a layer is memory-bound; a layer that takes about `op_overhead_s` is at the floor of
fixed per-operator cost. Each figure is the best of a few runs (an interrupted run is
only ever slower), timed with the profile's own timer (thread CPU time when single-threaded).
"""

from __future__ import annotations

import statistics

import torch
import torch.nn as nn

from .result import MachineBalance
from .timing import Timer

__all__ = ["calibrate"]


def calibrate(device: torch.device, timer: Timer, repeats: int = 5) -> MachineBalance:
    cuda = device.type == "cuda"
    n = 4096 if cuda else 1024
    dtype = torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    gemm = _best(timer, lambda: torch.mm(a, b), repeats)
    elements = (1 << 28) if cuda else (1 << 24)  # 64 MB on CPU: larger than last-level caches
    # Written before it is read: an untouched allocation maps every page to the one shared
    # zero page, which reads from cache and made the copy look several times faster than memory.
    src = torch.ones(elements, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    copy = _best(timer, lambda: dst.copy_(src), repeats)
    tiny = torch.zeros(1, device=device)

    def near_empty_ops() -> None:
        for _ in range(_OPS_PER_BLOCK):
            tiny.add_(0)

    # In blocks: one read of a CPU-time clock costs about as much as the op itself.
    overhead = statistics.median(timer.time(near_empty_ops) for _ in range(10)) / _OPS_PER_BLOCK
    return MachineBalance(
        peak_flops=2 * n**3 / gemm,
        bandwidth=2 * elements * src.element_size() / copy,
        op_overhead_s=overhead,
        module_call_s=_module_call(timer, tiny),
    )


def _module_call(timer: Timer, x: torch.Tensor) -> float:
    """Seconds an nn.Module call costs beyond its forward (Python dispatch through __call__):
    every layer pays it, and per-layer spans taken inside the call do not see it."""
    module = nn.Identity()
    forward = module.forward

    def called() -> None:
        for _ in range(_OPS_PER_BLOCK):
            module(x)

    def direct() -> None:
        for _ in range(_OPS_PER_BLOCK):
            forward(x)

    via_call = statistics.median(timer.time(called) for _ in range(10))
    via_forward = statistics.median(timer.time(direct) for _ in range(10))
    return max(0.0, via_call - via_forward) / _OPS_PER_BLOCK


_OPS_PER_BLOCK = 100


def _best(timer: Timer, fn: object, repeats: int) -> float:
    fn()  # type: ignore[operator]
    return min(timer.time(fn) for _ in range(repeats))  # type: ignore[arg-type]
