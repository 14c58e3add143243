"""The pytest plugin, as a user's test suite meets it: `model_benchmark` and `assert_clean`.

Each test writes a small test file and runs pytest on it in a subprocess (pytester), where
the plugin is loaded through its `pytest11` entry point like in any project that installs
analyzer.
"""

from __future__ import annotations

import json
import re
import textwrap

import pytest
import torch
import torch.nn.utils.prune as prune

from .models import SmallNet

# Short benchmarks: the plugin is under test here, not the model.
FAST = ("--benchmark-max-time=0.2", "--benchmark-min-rounds=5", "-p", "no:cacheprovider")

BENCH_TEST = """
    import torch
    import torch.nn as nn


    def test_tiny_conv(model_benchmark):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        out = model_benchmark(model, torch.randn(1, 3, 16, 16))
        assert out.shape == (1, 8, 14, 14)
        assert not out.requires_grad  # run under inference mode
"""

SLOW_TEST = """
    import os
    import time

    import torch
    import torch.nn as nn


    class Planted(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            time.sleep(float(os.environ.get("SLOW", "0")))  # the planted regression
            return torch.relu(self.conv(x))


    def test_planted(model_benchmark):
        torch.manual_seed(0)
        model_benchmark(Planted(), torch.randn(1, 3, 16, 16))
"""


def test_model_benchmark_stores_the_context(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=textwrap.dedent(BENCH_TEST))
    result = pytester.runpytest_subprocess("--benchmark-json=out.json", *FAST)
    result.assert_outcomes(passed=1)
    data = json.loads((pytester.path / "out.json").read_text(encoding="utf-8"))
    assert len(data["benchmarks"]) == 1
    bench = data["benchmarks"][0]
    assert bench["name"] == "test_tiny_conv"
    assert bench["stats"]["rounds"] >= 5 and bench["stats"]["median"] > 0
    info = bench["extra_info"]
    assert info["device"] == "cpu"
    assert isinstance(info["threads"], int) and info["threads"] >= 1
    assert info["torch"] == torch.__version__
    assert info["params"] == 8 * 3 * 3 * 3 + 8
    assert info["macs"] == 8 * 14 * 14 * 3 * 3 * 3  # conv MACs per sample
    assert info["input_shape"] == [1, 3, 16, 16]
    assert info["cuda_synchronized"] is False and info["warmup"] == 3


def test_planted_regression_fails_the_comparison(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_planted=textwrap.dedent(SLOW_TEST))
    storage = pytester.path / "benchmarks"
    store = f"--benchmark-storage=file://{storage}"

    monkeypatch.setenv("SLOW", "0")
    baseline = pytester.runpytest_subprocess("--benchmark-autosave", store, *FAST)
    baseline.assert_outcomes(passed=1)
    saved = list(storage.rglob("*.json"))
    assert len(saved) == 1, f"expected one saved run under {storage}, found {saved}"

    # 50 ms per forward: far beyond 10% of a tiny conv, even on a loaded machine.
    monkeypatch.setenv("SLOW", "0.05")
    slower = pytester.runpytest_subprocess("--benchmark-compare", "--benchmark-compare-fail=median:10%", store, *FAST)
    assert slower.ret != 0, slower.stdout.str()
    output = slower.stdout.str() + slower.stderr.str()
    assert "Performance has regressed" in output
    # The test itself passed; the comparison with the saved run is what failed, on the median.
    assert "test_planted.py ." in output
    assert re.search(r"test_planted \(0001_\w*\) - Field 'median' has failed", output), output


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
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
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
