"""Start-up: `analyze --help` and `--version` against a bare interpreter and `import torch`.

CPU time (user + system, from the children's rusage) of whole processes, interleaved in
the same run so that the ratios hold on a busy machine. Issue 16's target: --help and
--version under 0.5 s of CPU, which needs them not to import torch (tests/test_startup.py
checks that they do not, without timing anything).
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "python": [sys.executable, "-c", "pass"],
    "help": [sys.executable, "-m", "analyzer", "--help"],
    "version": [sys.executable, "-m", "analyzer", "--version"],
    "import-torch": [sys.executable, "-c", "import torch"],
}
ROUNDS = 7


def _cpu_s(argv: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, capture_output=True, timeout=120, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.mark.benchmark(group="startup")
def test_startup_cpu(benchmark) -> None:
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}

    def one_round() -> None:
        for name, argv in COMMANDS.items():  # interleaved: each round sees the same machine
            samples[name].append(_cpu_s(argv))

    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=1)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    benchmark.extra_info.update({f"cpu_s_{name}": round(value, 4) for name, value in medians.items()})
    for name in ("help", "version"):
        benchmark.extra_info[f"{name}_over_python"] = round(medians[name] / medians["python"], 2)
        benchmark.extra_info[f"{name}_over_import_torch"] = round(medians[name] / medians["import-torch"], 3)
    assert medians["help"] < 0.5 and medians["version"] < 0.5, medians
