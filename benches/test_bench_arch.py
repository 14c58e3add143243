"""--arch and --compact against the static analysis of the same file, as whole processes.

A user waits for the whole `analyze` process, so each figure is a process: wall seconds
and the CPU seconds of the child (user + system), the static run and the --arch run
alternated round by round so that both see the same machine. The ratio of the medians is
what the closing notes report; the targets: --arch on a torch-pruned ResNet-50 within 3×
its static analysis, --compact of a soft-pruned ResNet-50 (ln_structured + prune.remove)
within 30 s on this machine's cores — measured as the machine is and with two busy loops
competing (the model runs are single-threaded, so they should barely notice).
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.utils.prune as prune
from busy import busy_loops, load_average

ARCH = "analyzer.zoo:resnet50"
ROUNDS = 3
ARCH_WITHIN = 3.0
COMPACT_WITHIN_S = 30.0


def _process(*args: str) -> tuple[float, float]:
    """Wall and CPU seconds of `python -m analyzer ARGS` (exit 0 or 1: findings are fine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "analyzer", *args], capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.fixture(scope="module")
def pruned_resnet50(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch_pruning as tp

    from analyzer.zoo import resnet50

    torch.manual_seed(0)
    model = resnet50().eval()
    tp.pruner.MetaPruner(
        model, torch.randn(1, 3, 224, 224), importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5, ignored_layers=[model.fc], round_to=8,
    ).step()
    path = tmp_path_factory.mktemp("bench-arch") / "resnet50_tp.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def soft_pruned_resnet50(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Half the filters of every conv zeroed by ln_structured, masks folded with prune.remove."""
    from analyzer.zoo import resnet50

    torch.manual_seed(0)
    model = resnet50().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            prune.ln_structured(module, "weight", amount=0.5, n=2, dim=0)
            prune.remove(module, "weight")
    path = tmp_path_factory.mktemp("bench-arch") / "resnet50_soft.pth"
    torch.save(model.state_dict(), path)
    return path


def _alternated(static: tuple[str, ...], arch: tuple[str, ...]) -> dict[str, list[tuple[float, float]]]:
    runs: dict[str, list[tuple[float, float]]] = {"static": [], "arch": []}
    _process(*static)  # warm the file cache and the imports' .pyc
    for index in range(ROUNDS):
        order = (("static", static), ("arch", arch)) if index % 2 == 0 else (("arch", arch), ("static", static))
        for label, args in order:
            runs[label].append(_process(*args))
    return runs


def _summary(runs: dict[str, list[tuple[float, float]]]) -> dict[str, object]:
    wall = {label: statistics.median(w for w, _ in taken) for label, taken in runs.items()}
    cpu = {label: statistics.median(c for _, c in taken) for label, taken in runs.items()}
    return {
        "static_wall_s": round(wall["static"], 2),
        "arch_wall_s": round(wall["arch"], 2),
        "static_cpu_s": round(cpu["static"], 2),
        "arch_cpu_s": round(cpu["arch"], 2),
        "arch_over_static_wall": round(wall["arch"] / wall["static"], 2),
        "arch_over_static_cpu": round(cpu["arch"] / cpu["static"], 2),
        "rounds": {label: [(round(w, 2), round(c, 2)) for w, c in taken] for label, taken in runs.items()},
    }


@pytest.mark.benchmark(group="arch-resnet50")
@pytest.mark.parametrize("which", ["pruned_resnet50", "soft_pruned_resnet50"])
def test_arch_against_static_analysis(benchmark, which: str, request) -> None:
    path = str(request.getfixturevalue(which))
    quiet = "--json", "/dev/null", "--quiet"
    measured: dict[str, object] = {}

    def measure() -> None:
        measured.update(_summary(_alternated((path, *quiet), (path, "--arch", ARCH, *quiet))))

    load = load_average()
    benchmark.pedantic(measure, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update({**measured, "load_average": [load, load_average()]})
    assert measured["arch_over_static_cpu"] <= ARCH_WITHIN, measured  # type: ignore[operator]


@pytest.mark.benchmark(group="compact-resnet50")
@pytest.mark.parametrize("condition", ["as-is", "two-busy-loops"])
def test_compact_soft_pruned_resnet50(benchmark, condition: str, soft_pruned_resnet50: Path, tmp_path: Path) -> None:
    out = tmp_path / "compact.pth"
    quiet = "--json", "/dev/null", "--quiet"
    taken: dict[str, object] = {}

    def measure() -> None:
        static = _process(str(soft_pruned_resnet50), *quiet)
        if condition == "two-busy-loops":
            with busy_loops(2):
                taken["load_average"] = load_average()
                compacted = _process(str(soft_pruned_resnet50), "--arch", ARCH, "--compact", str(out), *quiet)
        else:
            taken["load_average"] = load_average()
            compacted = _process(str(soft_pruned_resnet50), "--arch", ARCH, "--compact", str(out), *quiet)
        taken.update(
            {
                "static_wall_s": round(static[0], 2),
                "compact_wall_s": round(compacted[0], 2),
                "compact_cpu_s": round(compacted[1], 2),
                "compact_over_static_wall": round(compacted[0] / static[0], 2),
            }
        )

    benchmark.pedantic(measure, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update(taken)
    assert out.exists()
    assert taken["compact_wall_s"] <= COMPACT_WITHIN_S, taken  # type: ignore[operator]
