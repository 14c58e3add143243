"""The pytest plugin, as a user's test suite meets it: `model_benchmark` and `assert_clean`.

Each test writes a small test file and runs pytest on it in a subprocess (pytester), where
the plugin is loaded through its `pytest11` entry point like in any project that installs
analyzer.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.utils.prune as prune

from analyzer.pytest_plugin import MAX_BLOCKS, REFERENCE_NOMINAL_S, _calibrated_rounds, _CalibratedRounds, _fastest

from .models import SmallNet

ROOT = Path(__file__).resolve().parent.parent
NO_CACHE = ("-p", "no:cacheprovider")


@pytest.fixture(autouse=True)
def this_checkout_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pytest subprocess loads the plugin by its entry point: from this checkout, whatever is installed."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


BENCH_TEST = """
    import torch
    import torch.nn as nn


    def test_tiny_conv(model_benchmark):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        out = model_benchmark(model, torch.randn(1, 3, 16, 16))
        assert out.shape == (1, 8, 14, 14)
        assert not out.requires_grad  # run under inference mode
        assert torch.get_num_threads() == THREADS  # restored after timing
"""


def test_model_benchmark_stores_the_context(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=textwrap.dedent(BENCH_TEST).replace("THREADS", str(torch.get_num_threads())))
    result = pytester.runpytest_subprocess("--benchmark-json=out.json", *NO_CACHE)
    result.assert_outcomes(passed=1)
    data = json.loads((pytester.path / "out.json").read_text(encoding="utf-8"))
    assert len(data["benchmarks"]) == 1
    bench = data["benchmarks"][0]
    assert bench["name"] == "test_tiny_conv"
    stats, info = bench["stats"], bench["extra_info"]
    # The defaults: rounds of at least 2 ms, at least 20 of them and about 0.5 s in all,
    # one thread, this thread's CPU time, calibrated by the reference run in each round.
    assert stats["rounds"] == info["rounds"] >= 20
    assert stats["iterations"] == 1 and info["iterations"] > 1  # handed over as per-call times
    calibration = info["calibration"]
    assert info["iterations"] * calibration["raw_min_s"] >= 0.002 * 0.5  # a round holds enough calls
    assert info["threads"] == 1 and info["timer"] == "time.thread_time, calibrated"
    assert bench["options"]["timer"] == "calibrated_thread_time"
    # The recorded figures are the raw ones scaled to a runner where the reference takes 100 µs.
    assert calibration["reference_nominal_s"] == 1e-4 and calibration["reference_calls_per_round"] >= 1
    expected_scale = 1e-4 / calibration["reference_min_s"]
    assert calibration["scale"] == pytest.approx(expected_scale, rel=1e-12)
    assert stats["min"] == pytest.approx(calibration["raw_min_s"] * expected_scale, rel=1e-9)
    # A reference round is real work: a 64x256x256 matmul is 4.2 MFLOP, more than 0.1 µs anywhere.
    assert 1e-7 < calibration["reference_min_s"] < 1e-2
    assert 2 <= calibration["blocks"] <= 4
    assert info["device"] == "cpu"
    assert info["torch"] == torch.__version__
    assert info["params"] == 8 * 3 * 3 * 3 + 8
    assert info["macs"] == 8 * 14 * 14 * 3 * 3 * 3  # conv MACs per sample
    assert info["input_shape"] == [1, 3, 16, 16]
    assert info["cuda_synchronized"] is False and info["warmup"] == 3


TIMER_PATHS_TEST = """
    import time

    import pytest
    import torch
    import torch.nn as nn

    MODEL = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    X = torch.randn(1, 3, 16, 16)


    def test_raw(model_benchmark):
        model_benchmark(MODEL, X, calibrate=False)


    def test_two_threads(model_benchmark):
        model_benchmark(MODEL, X, threads=2)


    @pytest.mark.benchmark(timer=time.monotonic)
    def test_own_timer(model_benchmark):
        model_benchmark(MODEL, X)


    def test_rng_untouched(model_benchmark):
        torch.manual_seed(123)
        model_benchmark(MODEL, X)
        after = torch.rand(4)
        torch.manual_seed(123)
        MODEL(X)  # what the fixture runs draws no random numbers either
        assert torch.equal(after, torch.rand(4))
"""


def test_model_benchmark_calibrates_only_one_cpu_thread_on_its_own_timer(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_paths=textwrap.dedent(TIMER_PATHS_TEST))
    result = pytester.runpytest_subprocess("--benchmark-json=out.json", *NO_CACHE)
    result.assert_outcomes(passed=4)
    benches = {b["name"]: b for b in json.loads((pytester.path / "out.json").read_text(encoding="utf-8"))["benchmarks"]}
    raw = benches["test_raw"]
    assert raw["extra_info"]["timer"] == "time.thread_time" and raw["options"]["timer"] == "thread_time"
    assert "calibration" not in raw["extra_info"] and raw["stats"]["iterations"] == raw["extra_info"]["iterations"] > 1
    for name in ("test_two_threads", "test_own_timer"):  # wall time by pytest-benchmark's timer or the user's
        info = benches[name]["extra_info"]
        assert "calibration" not in info and info["timer"].startswith("pytest-benchmark's"), name
    assert benches["test_two_threads"]["extra_info"]["threads"] == 2
    assert benches["test_own_timer"]["options"]["timer"] == "monotonic"
    assert "calibration" in benches["test_rng_untouched"]["extra_info"]

    disabled = pytester.runpytest_subprocess("--benchmark-disable", "-k", "rng", *NO_CACHE)
    disabled.assert_outcomes(passed=1)  # the forward ran once, no rounds


def test_without_pytest_benchmark_the_fixture_says_what_to_install(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=textwrap.dedent(BENCH_TEST).replace("THREADS", "1"))
    result = pytester.runpytest_subprocess("-p", "no:benchmark", *NO_CACHE)
    result.assert_outcomes(errors=1)
    output = result.stdout.str()
    assert "model_benchmark needs pytest-benchmark" in output and "pip install 'prune-analyzer[pytest]'" in output
    assert "fixture 'benchmark' not found" not in output


def _burn(seconds: float) -> None:
    """Spend `seconds` of this thread's CPU time (time waiting for a core is not counted)."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


def _rounds_of(model_s: Callable[[int], float], rounds_per_block: int = 20) -> _CalibratedRounds:
    """Calibrated rounds of a model whose n-th call (the warm-up round's is 0) takes model_s(n)
    seconds of CPU time, against a 100 µs reference: the scale is close to 1."""
    calls = iter(range(10**6))
    return _calibrated_rounds(
        lambda: _burn(model_s(next(calls))), rounds_per_block, 1, lambda: _burn(REFERENCE_NOMINAL_S), 1, gc_off=False
    )


def test_a_steady_runner_is_measured_in_two_blocks() -> None:
    timed = _rounds_of(lambda n: 300e-6)
    assert timed.blocks == 2 and len(timed.model_s) == 40
    assert timed.calibrated_min == pytest.approx(300e-6, rel=0.05)


def test_a_runner_that_speeds_up_is_measured_until_the_minimum_holds() -> None:
    # The warm-up and the first block at half speed, then full speed: the second block moves
    # the minimum by half, the third confirms it.
    timed = _rounds_of(lambda n: 600e-6 if n <= 20 else 300e-6)
    assert timed.blocks == 3
    assert min(timed.calibrated_s) == pytest.approx(300e-6, rel=0.05)
    assert timed.summary(1)["blocks"] == 3


def test_a_minimum_that_keeps_moving_stops_at_max_blocks() -> None:
    timed = _rounds_of(lambda n: 600e-6 * 0.85 ** ((n - 1) // 20))
    assert timed.blocks == MAX_BLOCKS == 4 and len(timed.model_s) == 80


def test_a_misread_clock_is_not_the_fastest_round() -> None:
    # Seen once in 60,000 rounds: three reference calls of ~90 µs each read as 0.3 µs.
    assert _fastest([9.2e-05, 3.45e-07, 9.0e-05, 9.1e-05]) == 9.0e-05
    assert _fastest([1.0, 0.6, 0.9]) == 0.6  # within a factor 2 of the next: a real round
    timed = _CalibratedRounds([3e-4, 1e-7, 3.1e-4], [1e-4, 1e-4, 2e-9], None)
    assert timed.scale == pytest.approx(1.0)
    assert timed.calibrated_s == pytest.approx([3e-4, 3.1e-4])


BUSY_RUNNER_TEST = """
    import os

    import pytest
    import torch
    import torch.nn as nn

    X = torch.randn(32, 128)


    def mlp(depth):
        torch.manual_seed(0)
        return nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(128, 128), nn.ReLU())])


    @pytest.mark.parametrize("run", range(10))
    def test_unchanged(model_benchmark, run):
        model_benchmark(mlp(10), X)


    def test_changed(model_benchmark):
        model_benchmark(mlp(int(os.environ["CHANGED_DEPTH"])), X)
"""


def _spin() -> None:
    while True:
        pass


def test_medians_hold_on_a_busy_runner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the plugin's defaults, while a busy loop competes for a core: a baseline, then ten
    compares of the unchanged model against it all pass, and the model made 40% slower (14
    layers instead of 10: 40% more work) fails the comparison, on the fastest round (`min`)
    at 20 % as the plugin advises (CI measured an unchanged minimum 16.8 % above its
    baseline once, a 30 % slower model 28-32 % above)."""
    pytester.makepyfile(test_runner=textwrap.dedent(BUSY_RUNNER_TEST))
    store = f"--benchmark-storage=file://{pytester.path / 'benchmarks'}"
    busy = multiprocessing.get_context("fork").Process(target=_spin, daemon=True)
    busy.start()
    try:
        monkeypatch.setenv("CHANGED_DEPTH", "10")
        baseline = pytester.runpytest_subprocess("--benchmark-autosave", "--benchmark-json=baseline.json", store, *NO_CACHE)
        baseline.assert_outcomes(passed=11)
        monkeypatch.setenv("CHANGED_DEPTH", "14")
        compared = pytester.runpytest_subprocess(
            "--benchmark-compare", "--benchmark-compare-fail=min:20%", "--benchmark-json=compared.json", store, *NO_CACHE
        )
    finally:
        busy.terminate()
        busy.join(timeout=10)
    output = compared.stdout.str() + compared.stderr.str()
    assert compared.ret != 0, output
    assert "Performance has regressed" in output
    failed = re.findall(r"(test_\w+(?:\[\d+\])?) \(0001_\w*\) - Field 'min' has failed", output)
    assert failed == ["test_changed"], output
    before = {b["name"]: b["stats"]["min"] for b in json.loads((pytester.path / "baseline.json").read_text())["benchmarks"]}
    after = {b["name"]: b["stats"]["min"] for b in json.loads((pytester.path / "compared.json").read_text())["benchmarks"]}
    changes = {name: after[name] / before[name] - 1 for name in before}
    unchanged = [name for name in changes if name.startswith("test_unchanged")]
    # A false alarm is an unchanged model measured slower; faster is the machine calming down
    # (CI's first baseline rounds ran 20% slower than its later ones).
    assert len(unchanged) == 10 and all(changes[name] < 0.20 for name in unchanged), changes
    assert changes["test_changed"] > 0.20, changes


def test_assert_clean(pytester: pytest.Pytester) -> None:
    torch.manual_seed(0)
    net = SmallNet().eval()
    clean = pytester.path / "clean.pth"
    torch.save(net.state_dict(), clean)
    prune.l1_unstructured(net.conv1, "weight", amount=0.5)
    masked = pytester.path / "masked.pth"
    torch.save(net.state_dict(), masked)

    pytester.makepyfile(
        test_clean=textwrap.dedent(
            f"""
            from analyzer import assert_clean


            def test_clean_checkpoint():
                report = assert_clean({str(clean)!r})
                assert report.findings == []


            def test_masks_fail_at_warning():
                assert_clean({str(masked)!r}, fail_on="warning")


            def test_masks_pass_at_error():
                report = assert_clean({str(masked)!r}, fail_on="error")
                assert "pruning-masks" in [f.kind for f in report.findings]


            def test_default_threshold_is_the_clis_error():
                report = assert_clean({str(masked)!r})
                assert {{f.severity.value for f in report.findings}} == {{"warning"}}


            def test_ignore_what_you_accept():
                report = assert_clean({str(masked)!r}, fail_on="warning", ignore=["pruning-masks", "unstructured-sparsity"])
                assert report.findings == []
            """
        )
    )
    result = pytester.runpytest_subprocess(*NO_CACHE)
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAILED*test_masks_fail_at_warning*",
        ]
    )
    output = result.stdout.str()
    failure = output[output.index("test_masks_fail_at_warning") :]
    assert "AssertionError" in failure
    assert f"{masked}: " in failure and "at or above warning" in failure
    assert "warning pruning-masks [conv1]" in failure
