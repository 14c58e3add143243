"""Many small tensors: the analyzer's whole process against the floor, at three counts.

50,000 tensors of 20x24 (a 100 MB file, the count of a large transformer's checkpoint)
is where per-tensor costs and anything quadratic in the number of tensors show; their
20-wide outputs are off multiples of 8, so the unaligned-channels pass checks every layer
(the check that was quadratic). The floor
is processes.FLOOR (torch.load memory-mapped + count_nonzero over every tensor); both run
as whole processes in alternation; the figures are ratios of CPU-time medians (target:
at most 1.5) at a quarter, half and all of the count, and CPU microseconds per tensor,
which stay flat when every step is linear.

Count: ANALYZER_BENCH_TENSORS (default 2000, so that `pytest benches` is quick).
Run: ANALYZER_BENCH_TENSORS=50000 python -m pytest benches/test_bench_many.py --benchmark-enable -s
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from processes import ANALYZE, FLOOR, paired, rounds_for

TARGET = 1.5
COUNT = int(os.environ.get("ANALYZER_BENCH_TENSORS", "2000"))


def write_checkpoint(path: Path, count: int) -> Path:
    generator = torch.Generator().manual_seed(0)
    state = {}
    for i in range(count):
        weight = torch.randn(20, 24, generator=generator)
        if i % 10 == 0:
            weight[:4] = 0  # a few layers with zeroed rows
        state[f"layers.{i // 4}.{'qkvo'[i % 4]}_proj.weight"] = weight
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("many")
    counts = sorted({max(1, COUNT // 4), max(1, COUNT // 2), COUNT})
    return {count: write_checkpoint(folder / f"many-{count}.pth", count) for count in counts}


@pytest.mark.benchmark(group="many-tensors")
def test_many_small_tensors_against_the_floor(benchmark, checkpoints: dict[int, Path]) -> None:
    rounds, warmup = rounds_for(benchmark, enabled=3)

    def measure() -> dict[str, dict[str, float]]:
        figures = {}
        # A smoke run (--benchmark-disable, the suite's default) measures the full count alone.
        counts = checkpoints.items() if warmup else [max(checkpoints.items())]
        for count, path in counts:
            summary = paired([sys.executable, "-c", FLOOR, str(path)], ANALYZE(path), rounds, warmup).summary()
            summary["file_mb"] = round(path.stat().st_size / 2**20, 1)
            summary["floor_cpu_us_per_tensor"] = round(1e6 * summary["baseline_cpu_s"] / count, 1)
            summary["analyze_cpu_us_per_tensor"] = round(1e6 * summary["analyze_cpu_s"] / count, 1)
            figures[f"{count}_tensors"] = summary
        return figures

    figures = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update({"target_cpu_ratio": TARGET, **figures})
    print(benchmark.extra_info)
    assert all(f["analyze_cpu_s"] > 0 for f in figures.values())
