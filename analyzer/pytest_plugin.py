"""pytest plugin: benchmark a pruned model in your own test suite, and fail on new findings.

Registered through the `pytest11` entry point, so installing analyzer makes it
available. Two pieces:

- the `model_benchmark` fixture runs a model's forward pass under pytest-benchmark's
  `benchmark` fixture, with warm-up, inference mode and CUDA synchronisation inside
  the timed call (pytest-benchmark itself does not synchronise CUDA), and stores the
  context in `benchmark.extra_info` (device, threads, torch version, MACs, params,
  and NVML readings on a GPU);
- `assert_clean(path, fail_on="warning")` fails the test when `analyze` finds
  anything at or above that severity.

Regression workflow: `pytest --benchmark-autosave` once, then
`pytest --benchmark-compare --benchmark-compare-fail=median:10%`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["model_benchmark", "assert_clean"]


@pytest.fixture
def model_benchmark(benchmark: Any) -> Callable[..., Any]:
    """`model_benchmark(model, example_input, device="cpu", warmup=3)` → the forward's output."""

    def run(model: Any, example_input: Any, *, device: str = "cpu", warmup: int = 3) -> Any:
        import torch

        from . import __version__
        from .model.macs import model_macs
        from .model.inputs import example_from
        from .model.trace import run_traced

        target = torch.device(device)
        model = model.to(target).eval()
        x = example_from(example_input).to(target)
        cuda = target.type == "cuda"

        def forward() -> Any:
            out = x.call(model)
            if cuda:
                torch.cuda.synchronize(target)
            return out

        with torch.inference_mode():
            trace = run_traced(model, x)
            for _ in range(warmup):
                forward()
            sampler = _nvml_sampler(target) if cuda else None
            if sampler is not None:
                with sampler:
                    result = benchmark(forward)
            else:
                result = benchmark(forward)
        benchmark.extra_info.update(
            {
                "analyzer": __version__,
                "device": str(target),
                "device_name": torch.cuda.get_device_name(target) if cuda else "cpu",
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "input_shape": list(x.shape),
                "params": sum(p.numel() for p in model.parameters()),
                "macs": model_macs(model, trace) if trace.ok else None,
                "cuda_synchronized": cuda,
                "warmup": warmup,
            }
        )
        if sampler is not None and (summary := sampler.summary()) is not None:
            benchmark.extra_info["nvml"] = {
                "sm_util_median": summary.sm_util_median,
                "mem_util_median": summary.mem_util_median,
                "mem_used_mb_max": summary.mem_used_mb_max,
                "power_w_median": summary.power_w_median,
                "sm_clock_mhz_median": summary.sm_clock_mhz_median,
                "throttle_reasons": summary.throttle_reasons,
            }
        return result

    return run


def _nvml_sampler(device: Any) -> Any:
    from .profile.nvml import NvmlSampler, start_sampler

    sampler = start_sampler(device.index or 0)
    return sampler if isinstance(sampler, NvmlSampler) else None


def assert_clean(path: str | os.PathLike[str], fail_on: str = "warning", **analyze_kwargs: Any) -> Any:
    """Analyse `path` and fail (AssertionError) on findings at or above `fail_on`, or when a
    check failed (the analysis is incomplete); returns the report."""
    from .api import analyze
    from .report.model import Severity

    report = analyze(path, **analyze_kwargs)
    if report.failures:  # an incomplete analysis proves nothing clean
        listed = "\n".join(f"  {f['pass']}: {f['exception']}: {f['message']}" for f in report.failures)
        raise AssertionError(f"{path}: the analysis is incomplete, {len(report.failures)} check(s) failed:\n{listed}")
    threshold = Severity(fail_on)
    bad = [f for f in report.findings if f.severity.at_least(threshold)]
    if bad:
        listed = "\n".join(f"  {f.severity.value} {f.kind} [{', '.join(f.modules[:5])}]: {f.message}" for f in bad)
        raise AssertionError(f"{path}: {len(bad)} finding(s) at or above {fail_on}:\n{listed}")
    return report
