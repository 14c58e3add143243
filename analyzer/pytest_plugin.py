"""pytest plugin: benchmark a pruned model in your own test suite, and fail on findings.

Registered through the `pytest11` entry point, so installing the package makes it
available (`pip install 'prune-analyzer[pytest]'` also installs pytest-benchmark, which
`model_benchmark` runs on). Two pieces:

- the `model_benchmark` fixture times a model's forward pass with pytest-benchmark, in
  settings that give a median one can compare across runs on a shared CI runner: one CPU
  thread by default (as `torch.utils.benchmark.Timer`), timed by the CPU time of the
  thread that runs it (`time.thread_time`: time spent waiting for a core on a busy runner
  is not the model's, nor is the CPU time of other threads of the process — with the
  analyzer imported, a background thread's share made the process's CPU time of a
  200 µs forward jump between two levels 20 % apart), inference mode, CUDA synchronised inside the timed call (and wall
  time there), a warm-up, then many short rounds (at least `min_round_s` each, at least
  `min_rounds`, as many as fit in `max_time_s`): on a shared runner most rounds are
  disturbed by a neighbour (its cache misses cost this process CPU time too), and the
  fastest rounds are the ones it disturbed least — so compare the `min`, as `timeit`
  advises. Measured under a busy neighbour on a 2-core machine with a load of 10, the
  minimum of 2 ms rounds moved 3-4 % between runs where the median of 20 ms rounds moved
  20 %. A timer chosen with
  `--benchmark-timer` or the benchmark marker wins. The context goes into
  `benchmark.extra_info` (device, threads, timer, torch version, MACs, params, the round
  settings, NVML readings on a GPU);
- `assert_clean(path_or_module, fail_on="error", ignore=(...))` fails the test when
  `analyze` finds anything at or above that severity — the CLI's default threshold.

Regression workflow: `pytest --benchmark-autosave` once, then
`pytest --benchmark-compare --benchmark-compare-fail=min:15%`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest

__all__ = ["model_benchmark", "assert_clean", "MISSING_BENCHMARK"]

MISSING_BENCHMARK = (
    "model_benchmark needs pytest-benchmark, which is not installed (or disabled with -p no:benchmark): "
    "pip install 'prune-analyzer[pytest]'"
)


@pytest.fixture
def model_benchmark(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """`model_benchmark(model, example_input, device="cpu", threads=1, ...)` → the forward's output.

    example_input: a tensor, a tuple of tensors or a dict of named tensors. threads: CPU
    threads while timing (None keeps torch's setting). warmup: calls before timing (at
    least 0.1 s of them). min_round_s, min_rounds, max_time_s: each round runs enough
    calls to last min_round_s; there are at least min_rounds rounds, more (up to 1000)
    while the total stays under max_time_s.
    """
    if not request.config.pluginmanager.hasplugin("benchmark"):
        pytest.fail(MISSING_BENCHMARK, pytrace=False)

    def run(
        model: Any,
        example_input: Any,
        *,
        device: str = "cpu",
        threads: int | None = 1,
        warmup: int = 3,
        min_round_s: float = 0.002,
        min_rounds: int = 20,
        max_time_s: float = 0.5,
    ) -> Any:
        import torch

        from . import __version__
        from .model.inputs import example_from
        from .model.macs import count_macs

        target = torch.device(device)
        cpu_time = target.type == "cpu" and threads == 1 and _default_timer(request, time.thread_time)
        benchmark = request.getfixturevalue("benchmark")
        model = model.to(target).eval()
        x = example_from(example_input).to(target)
        cuda = target.type == "cuda"

        def forward() -> Any:
            out = x.call(model)
            if cuda:
                torch.cuda.synchronize(target)
            return out

        macs = count_macs(model, x).per_sample  # the count the analyzer's reports give
        threads_before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                per_call = _warm_up(forward, warmup)
                iterations = max(1, math.ceil(min_round_s / per_call))
                rounds = max(min_rounds, min(1000, int(max_time_s / (iterations * per_call))))
                sampler = _nvml_sampler(target) if cuda else None
                if sampler is not None:
                    with sampler:
                        result = benchmark.pedantic(forward, rounds=rounds, iterations=iterations, warmup_rounds=1)
                else:
                    result = benchmark.pedantic(forward, rounds=rounds, iterations=iterations, warmup_rounds=1)
            used_threads = torch.get_num_threads()
        finally:
            torch.set_num_threads(threads_before)
        benchmark.extra_info.update(
            {
                "analyzer": __version__,
                "device": str(target),
                "device_name": torch.cuda.get_device_name(target) if cuda else "cpu",
                "threads": used_threads,
                "torch": torch.__version__,
                "input_shape": list(x.shape),
                "params": sum(p.numel() for p in model.parameters()),
                "macs": macs,
                "cuda_synchronized": cuda,
                "timer": "time.thread_time" if cpu_time else "pytest-benchmark's (--benchmark-timer, default time.perf_counter)",
                "warmup": warmup,
                "rounds": rounds,
                "iterations": iterations,
                "min_round_s": min_round_s,
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


def _default_timer(request: pytest.FixtureRequest, timer: Callable[[], float]) -> bool:
    """Time with `timer` unless the user chose one (--benchmark-timer, or a benchmark marker):
    through the marker pytest-benchmark reads when it makes the `benchmark` fixture."""
    configured = request.config.getoption("benchmark_timer", None)
    if getattr(configured, "target", time.perf_counter) is not time.perf_counter:
        return False
    marker = request.node.get_closest_marker("benchmark")
    if marker is not None and "timer" in marker.kwargs:
        return False
    kwargs = {**(marker.kwargs if marker is not None else {}), "timer": timer}
    request.node.add_marker(pytest.mark.benchmark(**kwargs), append=False)
    return True


def _warm_up(forward: Callable[[], Any], calls: int, at_least_s: float = 0.1) -> float:
    """Run `forward` at least `calls` times and `at_least_s` seconds; the fastest call's time,
    which sizes the rounds (the fastest: a slow outlier must not make the rounds too short)."""
    fastest = math.inf
    started = time.perf_counter()
    done = 0
    while done < calls or time.perf_counter() - started < at_least_s:
        t0 = time.perf_counter()
        forward()
        fastest = min(fastest, time.perf_counter() - t0)
        done += 1
    return max(fastest, 1e-7)


def _nvml_sampler(device: Any) -> Any:
    from .profile.nvml import NvmlSampler, start_sampler

    sampler = start_sampler(device.index or 0)
    return sampler if isinstance(sampler, NvmlSampler) else None


def assert_clean(
    path: Any,
    fail_on: str = "error",
    *,
    ignore: Iterable[str] = (),
    select: Iterable[str] = (),
    **analyze_kwargs: Any,
) -> Any:
    """Analyse `path` (a checkpoint, or an in-memory module with `example_input=`) and fail
    (AssertionError) on findings at or above `fail_on` — "error" by default, as the CLI.
    `ignore`/`select`: finding kinds, as `--ignore`/`--select`. An incomplete analysis (a
    check that failed) fails too: it proves nothing clean. Returns the report."""
    from .api import analyze
    from .report.model import Severity
    from .report.process import check_kinds, select_kinds

    report = analyze(path, **analyze_kwargs)
    if report.failures:  # an incomplete analysis proves nothing clean
        listed = "\n".join(f"  {f['pass']}: {f['exception']}: {f['message']}" for f in report.failures)
        raise AssertionError(f"{path}: the analysis is incomplete, {len(report.failures)} check(s) failed:\n{listed}")
    threshold = Severity(fail_on)
    ignored, selected = check_kinds(list(ignore), "ignore"), check_kinds(list(select), "select")
    (report,) = select_kinds([report], selected, ignored)
    bad = [f for f in report.findings if f.severity.at_least(threshold)]
    if bad:
        listed = "\n".join(f"  {f.severity.value} {f.kind} [{', '.join(f.modules[:5])}]: {f.message}" for f in bad)
        name = report.source.path if not isinstance(path, (str, os.PathLike)) else path
        raise AssertionError(f"{name}: {len(bad)} finding(s) at or above {fail_on}:\n{listed}")
    return report
