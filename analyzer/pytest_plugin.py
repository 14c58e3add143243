"""pytest plugin: benchmark a pruned model in your own test suite, and fail on findings.

Registered through the `pytest11` entry point, so installing the package makes it
available (`pip install 'prune-analyzer[pytest]'` also installs pytest-benchmark, which
`model_benchmark` runs on). Two pieces:

- the `model_benchmark` fixture times a model's forward pass with pytest-benchmark, in
  settings that give figures one can compare across runs on a shared CI runner: one CPU
  thread by default (as `torch.utils.benchmark.Timer`), inference mode, a warm-up, then
  many short rounds (at least `min_round_s` each, at least `min_rounds`, as many as fit in
  `max_time_s`, up to twice that while the minimum still moves). On a shared runner most rounds are disturbed by a neighbour (its cache
  misses cost this process CPU time too) and the fastest rounds are the ones it disturbed
  least — so compare the `min`, as `timeit` advises. On one CPU thread each round is timed
  by the CPU time of the thread that runs it (`time.thread_time`: time spent waiting for
  a core is not the model's, nor is the CPU time of the process's other threads) and is
  *calibrated*: every round also runs a fixed reference workload, and the model's times
  are scaled by `REFERENCE_NOMINAL_S / the reference's fastest round`. A runner whose
  cores are slowed for seconds at a time (a neighbour on a sibling hyperthread, a lower
  clock) slows the reference as much as the model: on CI the uncalibrated minimum of an
  unchanged 200 µs forward moved up 20-25 % for whole tests, enough to fail a 15 %
  compare, while a 30 % slower model measured in a faster moment passed. The figures are
  then seconds on a runner where the reference takes `REFERENCE_NOMINAL_S`; the raw
  fastest round and the reference's are in `extra_info` (`calibrate=False` records raw
  thread CPU time). On CUDA, or with several threads, rounds are timed by pytest-benchmark's
  timer (wall time, CUDA synchronised inside the timed call), uncalibrated. A timer chosen
  with `--benchmark-timer` or the benchmark marker wins. The context goes into
  `benchmark.extra_info` (device, threads, timer, torch version, MACs, params, the round
  settings, the calibration, NVML readings on a GPU);
- `assert_clean(path_or_module, fail_on="error", ignore=(...))` fails the test when
  `analyze` finds anything at or above that severity — the CLI's default threshold.

Regression workflow: `pytest --benchmark-autosave` once, then
`pytest --benchmark-compare --benchmark-compare-fail=min:20%` (on a shared 2-core CI
runner an unchanged model's minimum was seen up to 17 % above its baseline).
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest

__all__ = ["model_benchmark", "assert_clean", "MISSING_BENCHMARK"]

MISSING_BENCHMARK = (
    "model_benchmark needs pytest-benchmark, which is not installed (or disabled with -p no:benchmark): "
    "pip install 'prune-analyzer[pytest]'"
)


REFERENCE_NOMINAL_S = 100e-6
"""What the reference workload's fastest call counts for in calibrated figures."""
REFERENCE = "float32 matmul (64x256)·(256x256) and ReLU, one thread"
REFERENCE_ROUND_S = 0.0005  # reference time run in each round, about a quarter of a default round


@pytest.fixture
def model_benchmark(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """`model_benchmark(model, example_input, device="cpu", threads=1, ...)` → the forward's output.

    example_input: a tensor, a tuple of tensors or a dict of named tensors. threads: CPU
    threads while timing (None keeps torch's setting). warmup: calls before timing (at
    least 0.1 s of them). min_round_s, min_rounds, max_time_s: each round runs enough
    calls to last min_round_s; there are at least min_rounds rounds, more (up to 1000)
    while the total stays under max_time_s; on one CPU thread, in two blocks of half that,
    and up to two more while the last block moved the calibrated minimum by over 3 %. calibrate: on one CPU thread, scale the
    figures by a reference workload timed in the same rounds (the module's docstring).
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
        max_time_s: float = 1.0,
        calibrate: bool = True,
    ) -> Any:
        import torch

        from . import __version__
        from .model.inputs import example_from
        from .model.macs import count_macs

        target = torch.device(device)
        one_cpu_thread = target.type == "cpu" and threads == 1
        clock = _ReplayClock()
        calibrated = one_cpu_thread and calibrate and _default_timer(request, clock.calibrated_thread_time)
        cpu_time = calibrated or (one_cpu_thread and not calibrate and _default_timer(request, time.thread_time))
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
        sampler = None
        try:
            with torch.inference_mode():
                per_call = _warm_up(forward, warmup)
                iterations = max(1, math.ceil(min_round_s / per_call))
                if calibrated and benchmark.disabled:  # --benchmark-disable: run once, as pedantic would
                    result, rounds = forward(), 0
                elif calibrated:
                    reference = _Reference()
                    reference_calls = max(1, math.ceil(REFERENCE_ROUND_S / _warm_up(reference, 3, 0.01)))
                    round_s = iterations * per_call + REFERENCE_ROUND_S
                    per_block = max(math.ceil(min_rounds / 2), min(500, int(max_time_s / 2 / round_s)))
                    gc_off = bool(request.config.getoption("benchmark_disable_gc", False))
                    timed = _calibrated_rounds(forward, per_block, iterations, reference, reference_calls, gc_off)
                    calibrated_s = timed.calibrated_s
                    rounds = len(calibrated_s)
                    result = clock.replay(benchmark, calibrated_s, timed.output)
                else:
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
                "timer": (
                    "time.thread_time, calibrated"
                    if calibrated
                    else "time.thread_time"
                    if cpu_time
                    else "pytest-benchmark's (--benchmark-timer, default time.perf_counter)"
                ),
                "warmup": warmup,
                "rounds": rounds,
                "iterations": iterations,
                "min_round_s": min_round_s,
            }
        )
        if calibrated and not benchmark.disabled:
            benchmark.extra_info["calibration"] = timed.summary(reference_calls)
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


class _Reference:
    """The fixed workload that calibrates a round: dense compute through the same BLAS a
    model's linear and conv layers use, on tensors of its own (the caller's RNG untouched)."""

    def __init__(self) -> None:
        import torch

        generator = torch.Generator().manual_seed(0)
        self._a = torch.randn(64, 256, generator=generator)
        self._b = torch.randn(256, 256, generator=generator)

    def __call__(self) -> None:
        import torch

        torch.relu(torch.mm(self._a, self._b))


def _fastest(times: list[float]) -> float:
    """The fastest round that another round comes within a factor 2 of. A thread CPU clock
    was seen to report three reference calls as 0.3 µs (once in 60,000 rounds); taken as the
    minimum, such a reading scales a whole test by 300, and a baseline holding one fails every
    compare after it."""
    ordered = sorted(times)
    i = 0
    while i + 1 < len(ordered) and ordered[i] < 0.5 * ordered[i + 1]:
        i += 1
    return ordered[i]


@dataclass
class _CalibratedRounds:
    model_s: list[float]  # thread CPU time per model call, one per round
    reference_s: list[float]  # thread CPU time per reference call, in the same rounds
    output: Any
    blocks: int = 0

    @property
    def scale(self) -> float:
        return REFERENCE_NOMINAL_S / _fastest(self.reference_s)

    @property
    def calibrated_min(self) -> float:
        return _fastest(self.model_s) * self.scale

    @property
    def calibrated_s(self) -> list[float]:
        floor, scale = _fastest(self.model_s), self.scale
        return [t * scale for t in self.model_s if t >= floor]

    def summary(self, reference_calls: int) -> dict[str, Any]:
        return {
            "reference": REFERENCE,
            "reference_nominal_s": REFERENCE_NOMINAL_S,
            "reference_min_s": _fastest(self.reference_s),
            "reference_calls_per_round": reference_calls,
            "raw_min_s": _fastest(self.model_s),
            "scale": self.scale,
            "blocks": self.blocks,
        }


BLOCKS_AGREE = 0.03
"""How little one more block may move the calibrated minimum for the measurement to stop."""
MAX_BLOCKS = 4


def _calibrated_rounds(
    forward: Callable[[], Any],
    rounds_per_block: int,
    iterations: int,
    reference: Callable[[], None],
    reference_calls: int,
    gc_off: bool,
) -> _CalibratedRounds:
    """Each round: `iterations` model calls, then the reference, each timed by this thread's
    CPU time. One round first, as a warm-up, not kept. The scale takes the reference's
    fastest round, the moment the machine disturbed least, as the model's `min` does.
    Rounds come in blocks of `rounds_per_block`: after the second, a block that moves the
    calibrated minimum by no more than BLOCKS_AGREE ends the measurement; one that moves it
    further says the machine changed state during it, and another block follows, up to
    MAX_BLOCKS, so that the fastest state is seen in more than a few rounds. (With a busy
    loop on the other core, the spread of an unchanged model's minimum over 14 runs fell
    from 1.37x to 1.16x, and from 1.12x to 1.06x with a second busy process.)"""
    clock = time.thread_time
    output = None

    def one_round() -> tuple[float, float]:
        nonlocal output
        t0 = clock()
        for _ in range(iterations):
            output = forward()
        t1 = clock()
        for _ in range(reference_calls):
            reference()
        t2 = clock()
        return (t1 - t0) / iterations, (t2 - t1) / reference_calls

    gc_was_on = gc.isenabled()
    if gc_off:
        gc.disable()
    try:
        one_round()
        rounds = _CalibratedRounds([], [], None)
        before = math.inf
        while rounds.blocks < MAX_BLOCKS:
            timed = [one_round() for _ in range(rounds_per_block)]
            rounds.model_s += [m for m, _ in timed]
            rounds.reference_s += [r for _, r in timed]
            rounds.blocks += 1
            now = rounds.calibrated_min
            if rounds.blocks >= 2 and abs(now / before - 1) <= BLOCKS_AGREE:
                break
            before = now
    finally:
        if gc_was_on:
            gc.enable()
    rounds.output = output
    return rounds


class _ReplayClock:
    """pytest-benchmark's timer for calibrated rounds: it hands over rounds measured
    elsewhere, since its own timer can only subtract two readings of one clock. The clock
    stands still except inside `replay`'s rounds, where each moves it by one duration."""

    def __init__(self) -> None:
        self._now = 0.0

    def calibrated_thread_time(self) -> float:
        return self._now

    def replay(self, benchmark: Any, durations: list[float], output: Any) -> Any:
        pending = iter(durations)

        def one_round() -> Any:
            self._now += next(pending)
            return output

        return benchmark.pedantic(one_round, rounds=len(durations), iterations=1, warmup_rounds=0)


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
