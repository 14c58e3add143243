"""A short calibration of the device in use: peak GEMM FLOP/s, copy bandwidth, op overhead.

Together they place each layer on a roofline: below `peak / bandwidth` FLOPs per byte
a layer is memory-bound; a layer that takes about `op_overhead_s` is at the floor of
fixed per-operator cost.
"""

from __future__ import annotations

import statistics

import torch

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
    elements = (1 << 28) if cuda else (1 << 24)
    src = torch.empty(elements, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    copy = _best(timer, lambda: dst.copy_(src), repeats)
    tiny = torch.zeros(1, device=device)
    overhead = statistics.median(timer.time(lambda: tiny.add_(0)) for _ in range(50))
    return MachineBalance(
        peak_flops=2 * n**3 / gemm,
        bandwidth=2 * elements * src.element_size() / copy,
        op_overhead_s=overhead,
    )


def _best(timer: Timer, fn: object, repeats: int) -> float:
    fn()  # type: ignore[operator]
    return min(timer.time(fn) for _ in range(repeats))  # type: ignore[arg-type]
