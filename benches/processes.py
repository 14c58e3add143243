"""Whole processes measured side by side: CPU time, wall time and peak private memory.

A user waits for the whole process, imports included, so the static-analysis benches
compare whole processes. CPU time (user + system, from the kernel's accounting of the
child) is the figure that stays true on a busy machine: other work slows a process down
without adding to its CPU time. The baseline and the analyzer run in alternation, round
after round, so both see the same machine state; ratios are of medians.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Run", "Paired", "run_measured", "paired", "FLOOR", "ANALYZE"]

#: The floor of any scan: torch.load memory-mapped, then count_nonzero over every tensor.
FLOOR = """
import sys, torch
state = torch.load(sys.argv[1], mmap=True, weights_only=True, map_location="cpu")
total = 0
for tensor in state.values():
    total += int(torch.count_nonzero(tensor))
print(total)
"""


def ANALYZE(path: Path) -> list[str]:  # noqa: N802 - reads as the command it is
    return [sys.executable, "-m", "analyzer", str(path), "--json", os.devnull, "--quiet"]


@dataclass(frozen=True)
class Run:
    cpu_s: float
    wall_s: float
    peak_private_bytes: int


def run_measured(args: list[str], cwd: Path | None = None) -> Run:
    """Run a command to completion; its CPU seconds (kernel accounting), wall seconds and
    peak private resident memory (RssAnon: the mapped file's pages are the page cache's)."""
    # As a user's installation runs: with compiled bytecode (written on the warm-up run).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, env=env)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            # The process and its own children (the analyzer reads the file in one): the
            # largest of them, each counted alone (their shared copy-on-write pages once).
            for pid in (child.pid, *_children(child.pid)):
                peak = max(peak, _private_bytes(pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert child.stderr is not None
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    assert child.returncode in (0, 1), err.decode()[-2000:]
    return Run(usage.ru_utime + usage.ru_stime, time.perf_counter() - start, peak)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _private_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class Paired:
    """Baseline and analyzer runs of one input, in alternation."""

    baseline: list[Run] = field(default_factory=list)
    ours: list[Run] = field(default_factory=list)

    def round(self, baseline: list[str], ours: list[str]) -> None:
        self.baseline.append(run_measured(baseline))
        self.ours.append(run_measured(ours))

    @staticmethod
    def _median(runs: list[Run], attribute: str) -> float:
        return statistics.median(getattr(r, attribute) for r in runs)

    def summary(self) -> dict[str, float]:
        base_cpu, our_cpu = self._median(self.baseline, "cpu_s"), self._median(self.ours, "cpu_s")
        base_wall, our_wall = self._median(self.baseline, "wall_s"), self._median(self.ours, "wall_s")
        return {
            "rounds": len(self.ours),
            "baseline_cpu_s": round(base_cpu, 3),
            "analyze_cpu_s": round(our_cpu, 3),
            "cpu_ratio": round(our_cpu / base_cpu, 3),
            "baseline_wall_s": round(base_wall, 3),
            "analyze_wall_s": round(our_wall, 3),
            "wall_ratio": round(our_wall / base_wall, 3),
            "baseline_peak_private_mb": round(max(r.peak_private_bytes for r in self.baseline) / 2**20, 1),
            "analyze_peak_private_mb": round(max(r.peak_private_bytes for r in self.ours) / 2**20, 1),
        }


def paired(baseline: list[str], ours: list[str], rounds: int, warmup: bool = True) -> Paired:
    """`rounds` alternating runs (after one unmeasured run of each: page cache, .pyc files)."""
    if warmup:
        run_measured(baseline)
        run_measured(ours)
    result = Paired()
    for _ in range(rounds):
        result.round(baseline, ours)
    return result


def rounds_for(benchmark: object, enabled: int) -> tuple[int, bool]:
    """(rounds, warm-up first): several after a warm-up with --benchmark-enable; one cold
    round under the suite's default --benchmark-disable (a smoke run: the code paths work)."""
    return (1, False) if getattr(benchmark, "disabled", False) else (enabled, True)
