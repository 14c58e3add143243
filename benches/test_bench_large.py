"""A checkpoint of several GB: the analyzer's scan against a bare `torch.count_nonzero` loop.

Both run as separate processes over the same file (memory-mapped), one after the
other in the same session; throughput is file bytes per second, and memory is the peak
of each process's private (anonymous) resident memory, sampled from /proc — the
file's own pages are the page cache's, reclaimable, and not counted against either.

Size: ANALYZER_BENCH_LARGE_GB (default 2). Run: python -m pytest benches/test_bench_large.py --benchmark-enable
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

_GB = 1 << 30

_BARE = """
import sys, torch
sd = torch.load(sys.argv[1], mmap=True, weights_only=True, map_location="cpu")
total = 0
for t in sd.values():
    total += int(torch.count_nonzero(t))
print(total)
"""


@pytest.fixture(scope="module")
def large_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    size_gb = float(os.environ.get("ANALYZER_BENCH_LARGE_GB", "2"))
    path = tmp_path_factory.mktemp("large") / "large.pth"
    generator = torch.Generator().manual_seed(0)
    per_tensor = 512 * 512 * 9  # a 512x512 3x3 conv: 9 MB in float32
    count = int(size_gb * _GB / (per_tensor * 4)) + 1
    state = {}
    for i in range(count):
        weight = torch.randn(512, 512, 3, 3, generator=generator)
        if i % 4 == 0:
            weight[: 512 // 3] = 0  # some layers carry zeroed filters, so the structure scan runs
        state[f"features.{i}.weight"] = weight
    torch.save(state, path)
    return path


def _run_measured(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak private resident bytes of a child process."""
    start = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        status = Path(f"/proc/{child.pid}/status")
        while not done.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                pass
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = child.communicate(timeout=1800)
    done.set()
    sampler.join()
    assert child.returncode in (0, 1), err.decode()[-2000:]
    return time.perf_counter() - start, peak


@pytest.mark.benchmark(group="large-checkpoint")
def test_scan_large_checkpoint_against_count_nonzero(benchmark, large_checkpoint: Path) -> None:
    size = large_checkpoint.stat().st_size
    bare_s, bare_peak = _run_measured([sys.executable, "-c", _BARE, str(large_checkpoint)])

    def ours() -> tuple[float, int]:
        return _run_measured([sys.executable, "-m", "analyzer", str(large_checkpoint), "--json", os.devnull, "--quiet"])

    ours_s, ours_peak = benchmark.pedantic(ours, rounds=1, iterations=1)
    benchmark.extra_info.update(
        {
            "file_gb": round(size / _GB, 2),
            "bare_count_nonzero_s": round(bare_s, 2),
            "analyze_s": round(ours_s, 2),
            "throughput_ratio_vs_bare": round(bare_s / ours_s, 3),
            "bare_gb_per_s": round(size / _GB / bare_s, 3),
            "analyze_gb_per_s": round(size / _GB / ours_s, 3),
            "bare_peak_private_gb": round(bare_peak / _GB, 3),
            "analyze_peak_private_gb": round(ours_peak / _GB, 3),
        }
    )
    print(benchmark.extra_info)
    assert ours_peak < size / 2, f"peak private memory {ours_peak / _GB:.2f} GB for a {size / _GB:.2f} GB file"
