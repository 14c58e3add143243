"""GPU counters from NVML (nvidia-ml-py's `pynvml`), sampled by a thread during the timed loop.

The NVML library is passed in (the real `pynvml` by default) so that tests can hand
a fake one at this boundary. Without a GPU or driver `start` returns a one-line reason
instead of a sampler — never an exception.
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass, field
from typing import Any

from .result import NvmlSummary

__all__ = ["NvmlSampler", "start_sampler", "THROTTLE_REASONS"]

#: nvmlClocksEventReason* bits (formerly ClocksThrottleReason*), as named in NVML's headers.
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


@dataclass
class _Sample:
    sm_util: float
    mem_util: float
    mem_used_mb: float
    power_w: float | None
    sm_clock_mhz: float | None
    throttle: int


@dataclass
class NvmlSampler:
    nvml: Any
    handle: Any
    interval_s: float = 0.02
    samples: list[_Sample] = field(default_factory=list)
    #: Samples NVML refused, and the first reason: said in the summary, never dropped silently.
    failed_samples: int = 0
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> NvmlSampler:
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        try:
            self.nvml.nvmlShutdown()
        except Exception as e:  # shutting down a library that misbehaves must not lose the samples
            self._note(f"nvmlShutdown: {type(e).__name__}: {e}")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._sample())
            except Exception as e:  # a counter this GPU does not support: the sample is lost, and counted
                self.failed_samples += 1
                self._note(f"{type(e).__name__}: {e}")
            self._stop.wait(self.interval_s)

    def _note(self, error: str) -> None:
        self.error = self.error or " ".join(error.split())[:200]

    def _sample(self) -> _Sample:
        nvml, handle = self.nvml, self.handle
        util = nvml.nvmlDeviceGetUtilizationRates(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return _Sample(
            sm_util=float(util.gpu),
            mem_util=float(util.memory),
            mem_used_mb=memory.used / 2**20,
            power_w=_optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),
            sm_clock_mhz=_optional(lambda: float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))),
            throttle=int(_optional(lambda: _throttle_mask(nvml, handle)) or 0),
        )

    def summary(self) -> NvmlSummary | None:
        if not self.samples:
            return None
        samples = self.samples
        mask = 0
        for sample in samples:
            mask |= sample.throttle
        powers = [s.power_w for s in samples if s.power_w is not None]
        clocks = [s.sm_clock_mhz for s in samples if s.sm_clock_mhz is not None]
        sm = [s.sm_util for s in samples]
        return NvmlSummary(
            samples=len(samples),
            interval_ms=self.interval_s * 1000,
            sm_util_median=statistics.median(sm),
            sm_util_p90=statistics.quantiles(sm, n=10)[8] if len(sm) >= 10 else max(sm),
            mem_util_median=statistics.median(s.mem_util for s in samples),
            mem_used_mb_max=max(s.mem_used_mb for s in samples),
            power_w_median=statistics.median(powers) if powers else None,
            sm_clock_mhz_median=statistics.median(clocks) if clocks else None,
            throttle_reasons=[name for bit, name in THROTTLE_REASONS.items() if mask & bit],
            failed_samples=self.failed_samples,
            error=self.error,
        )


def start_sampler(device_index: int, nvml: Any = None, interval_s: float = 0.02) -> NvmlSampler | str:
    """A sampler for GPU `device_index`, or one line saying why there is none."""
    try:
        if nvml is None:
            import pynvml as nvml  # nvidia-ml-py
        nvml.nvmlInit()
        handle = nvml.nvmlDeviceGetHandleByIndex(device_index)
        name = nvml.nvmlDeviceGetName(handle)
    except Exception as e:  # no driver, no device, no library: said in one line
        detail = " ".join(str(e).split()) or "no detail"
        return f"NVML unavailable ({type(e).__name__}: {detail}): no GPU counters sampled"
    sampler = NvmlSampler(nvml, handle, interval_s)
    sampler.device_name = name.decode() if isinstance(name, bytes) else str(name)  # type: ignore[attr-defined]
    return sampler


def _throttle_mask(nvml: Any, handle: Any) -> int:
    getter = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return int(getter(handle))


def _optional(read: Any) -> Any:
    try:
        return read()
    except Exception:  # not supported on this GPU
        return None
