"""A large checkpoint: the analyzer's whole process against the floor of any scan.

The floor is a bare process that memory-maps the file with torch.load and runs
`count_nonzero` over every tensor (processes.FLOOR). Both run as separate processes over
the same file, in alternation, after one unmeasured run of each (so the file is in the
page cache for both); the figures are ratios of CPU-time medians (target: at most 1.3),
and the peak of each process's private (anonymous) resident memory — the file's own
pages belong to the page cache and are counted against neither. The same at a quarter
and half of the size shows the growth: seconds per GB stay flat when the scan is linear.

Size: ANALYZER_BENCH_LARGE_GB (default 0.05, so that `pytest benches` is quick).
Run: python -m pytest benches/test_bench_large.py --benchmark-enable -s
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from processes import ANALYZE, FLOOR, paired, rounds_for

_GB = 1 << 30
TARGET = 1.3
SIZE_GB = float(os.environ.get("ANALYZER_BENCH_LARGE_GB", "0.05"))


def write_checkpoint(path: Path, size_gb: float) -> Path:
    """512x512 3x3 convs (9 MB each in float32); every fourth has a third of its filters
    zeroed, so the structure scan runs where zeros can form structure."""
    generator = torch.Generator().manual_seed(0)
    per_tensor = 512 * 512 * 9 * 4
    state = {}
    for i in range(max(1, int(size_gb * _GB / per_tensor))):
        weight = torch.randn(512, 512, 3, 3, generator=generator)
        if i % 4 == 0:
            weight[: 512 // 3] = 0
        state[f"features.{i}.weight"] = weight
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("large")
    return {
        label: write_checkpoint(folder / f"{label}.pth", SIZE_GB * fraction)
        for label, fraction in (("quarter", 0.25), ("half", 0.5), ("full", 1.0))
    }


@pytest.mark.benchmark(group="large-checkpoint")
def test_scan_large_checkpoint_against_the_floor(benchmark, checkpoints: dict[str, Path]) -> None:
    rounds, warmup = rounds_for(benchmark, enabled=3)

    def measure() -> dict[str, dict[str, float]]:
        figures = {}
        # A smoke run (--benchmark-disable, the suite's default) measures the full size alone.
        sizes = checkpoints.items() if warmup else [("full", checkpoints["full"])]
        for label, path in sizes:
            summary = paired([sys.executable, "-c", FLOOR, str(path)], ANALYZE(path), rounds, warmup).summary()
            size_gb = path.stat().st_size / _GB
            summary.update({
                "file_gb": round(size_gb, 3),
                "floor_cpu_s_per_gb": round(summary["baseline_cpu_s"] / size_gb, 3),
                "analyze_cpu_s_per_gb": round(summary["analyze_cpu_s"] / size_gb, 3),
            })
            figures[label] = summary
        return figures

    figures = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update({"target_cpu_ratio": TARGET, **figures})
    print(benchmark.extra_info)
    full = figures["full"]
    size = checkpoints["full"].stat().st_size
    # Memory: the scan reads the mapped file in chunks, it never copies it.
    assert full["analyze_peak_private_mb"] * 2**20 < max(size / 2, 512 * 2**20), full
