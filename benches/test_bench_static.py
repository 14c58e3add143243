"""Static analysis of a ResNet-50 state dict next to plain torch.load of the same file.

Both are measured in the same run (same machine state). In-process, and as whole
processes (`analyze` vs `python -c "import torch; torch.load(...)"`) since a user waits
for the whole process: there the figure is the ratio of CPU-time medians over rounds
that alternate the two (target: at most 1.15).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from processes import ANALYZE, paired, rounds_for

from analyzer import analyze

WHOLE_PROCESS_TARGET = 1.15


@pytest.mark.benchmark(group="static-resnet50-inprocess")
def test_torch_load_baseline(benchmark, resnet50_state_dict: Path) -> None:
    result = benchmark(torch.load, resnet50_state_dict, weights_only=True, map_location="cpu")
    assert "fc.weight" in result


@pytest.mark.benchmark(group="static-resnet50-inprocess")
def test_analyze_static(benchmark, resnet50_state_dict: Path) -> None:
    report = benchmark(analyze, resnet50_state_dict)
    assert report.summary.params == 25_557_032


@pytest.mark.benchmark(group="static-resnet50-process")
def test_process_analyze_against_torch_load(benchmark, resnet50_state_dict: Path) -> None:
    code = f"import torch; torch.load({str(resnet50_state_dict)!r}, weights_only=True, map_location='cpu')"
    rounds, warmup = rounds_for(benchmark, enabled=7)
    result = benchmark.pedantic(
        paired, args=([sys.executable, "-c", code], ANALYZE(resnet50_state_dict), rounds, warmup), rounds=1, iterations=1
    )
    summary = result.summary()
    benchmark.extra_info.update({**summary, "target_cpu_ratio": WHOLE_PROCESS_TARGET})
    print(benchmark.extra_info)
    assert summary["analyze_cpu_s"] > 0 and summary["baseline_cpu_s"] > 0
