"""Static analysis of a ResNet-50 state dict next to plain torch.load of the same file.

Both are measured in the same run (same machine state); the ratio of the medians is
what the closing notes report. In-process and as whole processes (`analyze` vs
`python -c "torch.load(...)"`), since a user waits for the whole process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analyzer import analyze


@pytest.mark.benchmark(group="static-resnet50-inprocess")
def test_torch_load_baseline(benchmark, resnet50_state_dict: Path) -> None:
    result = benchmark(torch.load, resnet50_state_dict, weights_only=True, map_location="cpu")
    assert "fc.weight" in result


@pytest.mark.benchmark(group="static-resnet50-inprocess")
def test_analyze_static(benchmark, resnet50_state_dict: Path) -> None:
    report = benchmark(analyze, resnet50_state_dict)
    assert report.summary.params == 25_557_032


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=300)


@pytest.mark.benchmark(group="static-resnet50-process")
def test_process_torch_load_baseline(benchmark, resnet50_state_dict: Path) -> None:
    code = f"import torch; torch.load({str(resnet50_state_dict)!r}, weights_only=True, map_location='cpu')"
    benchmark.pedantic(_run, args=(sys.executable, "-c", code), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="static-resnet50-process")
def test_process_analyze(benchmark, resnet50_state_dict: Path) -> None:
    benchmark.pedantic(
        _run, args=(sys.executable, "-m", "analyzer", str(resnet50_state_dict), "--json", "/dev/null", "--quiet"),
        rounds=5, warmup_rounds=1,
    )
