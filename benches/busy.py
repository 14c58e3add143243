"""Competing load for benchmarks: processes that spin on a core each, as other work on a
shared machine (CI runner, laptop) does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


@contextmanager
def busy_loops(count: int = 2, seconds: float = 900.0) -> Iterator[None]:
    """`count` busy-loop processes for the duration of the block (each ends by itself after `seconds`)."""
    loops = [subprocess.Popen([sys.executable, "-c", _SPIN.format(seconds=seconds)]) for _ in range(count)]
    try:
        time.sleep(0.5)  # let the scheduler see them
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def load_average() -> float:
    return round(os.getloadavg()[0], 2)
